"""The daemon's switch path, with the kernel's bond as the faked boundary:
events go in as the netlink messages would, the fake bond answers like the
kernel's (a member without link cannot be made active until miimon saw it)."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Callable, Optional

import pytest

from guestfail.config import parse
from guestfail.daemon import Daemon
from guestfail.model import IFF_LOWER_UP, IFF_UP, BondState, Link
from guestfail.netlink import LinkEvent, NetlinkFailure
from guestfail.state import PairRecord

MASTER, SBY, VF = 5, 2, 3


class FakeBond:
    """The kernel side: which member is active, and which members the bond
    considers up (miimon's view, which lags the carrier)."""

    def __init__(self) -> None:
        self.current: Optional[int] = VF
        self.link_up = {SBY, VF}
        self.calls: list[tuple[str, Optional[int]]] = []
        self.cfg = None

    def set_active(self, master: int, master_name: str, slave: int, slave_name: str) -> None:
        self.calls.append(("set_active", slave))
        if slave not in self.link_up:
            raise NetlinkFailure(f"make {slave_name} active", errno.EINVAL)
        self.current = slave

    def set_primary(self, master: int, master_name: str, slave: Optional[int], slave_name: str) -> None:
        self.calls.append(("set_primary", slave))

    def active(self, master: Link) -> Optional[int]:
        return master.bond.active_slave if master.bond else None

    # the netlink side: reading the master back
    def get_link(self, ifindex: int) -> Optional[Link]:
        self.calls.append(("read", ifindex))
        state = BondState(1, self.current, VF, 100, 0, 0)
        return Link(ifindex=MASTER, name="ens11", kind="bond", mac="02:00:00:00:00:11", bond=state)


def link(ifindex: int, name: str, *, carrier: bool = True, master: Optional[int] = MASTER) -> Link:
    flags = IFF_UP | (IFF_LOWER_UP if carrier else 0)
    return Link(ifindex=ifindex, name=name, flags=flags, carrier=carrier, master=master)


def bond_event(active: Optional[int], t: int) -> LinkEvent:
    b = Link(
        ifindex=MASTER,
        name="ens11",
        kind="bond",
        flags=IFF_UP | IFF_LOWER_UP,
        bond=BondState(1, active, VF, 100, 0, 0),
    )
    return LinkEvent(False, b, t)


def meanwhile(fake: FakeBond, fn: Callable[[int], None]) -> asyncio.Event:
    """Run fn(slave) on the event loop while guestfail's set_active request is
    in flight on the fast thread; the returned event is set once it ran."""
    orig = fake.set_active
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def run(slave: int) -> None:
        fn(slave)
        done.set()

    def in_flight(master: int, master_name: str, slave: int, slave_name: str) -> None:
        orig(master, master_name, slave, slave_name)
        loop.call_soon_threadsafe(run, slave)

    fake.set_active = in_flight  # type: ignore[method-assign]
    return done


def make_daemon(tmp_path: Path) -> tuple[Daemon, PairRecord, FakeBond]:
    d = Daemon(parse(f'[agent]\nstate_dir = "{tmp_path}"'), use_udev=False, use_dbus=False)
    fake = FakeBond()
    d._fast_backend = fake  # type: ignore[assignment]  # the kernel boundary: the bond
    d._fast_nl = fake  # type: ignore[assignment]  # and reading it back
    rec = PairRecord(
        "pci-0000:01:00.0", master=MASTER, master_name="ens11", standby=SBY, standby_name="ens11nsby"
    )
    rec.primary, rec.primary_name = VF, "ens11npf"
    rec.primary_enslaved = rec.primary_carrier = rec.standby_carrier = True
    rec.active = VF
    d.pairs[rec.key] = rec
    d.by_member = {MASTER: rec, SBY: rec, VF: rec}
    return d, rec, fake


async def settle(d: Daemon) -> None:
    while d._tasks:
        await asyncio.gather(*list(d._tasks))


def test_carrier_loss_switches_at_once_and_is_recorded(tmp_path: Path) -> None:
    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await settle(d)
        assert fake.calls == [("set_active", SBY), ("read", MASTER)]
        assert rec.active == SBY
        (sw,) = rec.history
        assert (sw.frm, sw.to, sw.by, sw.reason) == (
            "ens11npf",
            "ens11nsby",
            "guestfail",
            "ens11npf lost carrier",
        )
        assert sw.latency_ms is not None and sw.latency_ms >= 0
        # the bond's own event for that switch is not recorded twice
        d._link_event(bond_event(SBY, 2000))
        assert len(rec.history) == 1
        assert rec.decision is not None and rec.decision.health.value == "degraded"
        d._fast.shutdown()

    asyncio.run(go())


def test_carrier_back_before_miimon_saw_it_is_left_to_the_bond(tmp_path: Path) -> None:
    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        fake.current, rec.active, rec.primary_carrier = SBY, SBY, False
        fake.link_up = {SBY}  # miimon has not seen the VF's link yet
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=True), 1000))
        await settle(d)
        assert fake.calls == [("set_active", VF)]  # refused: nothing to read back
        assert rec.history == type(rec.history)()  # nothing happened yet
        assert rec.key in d._retry_timers
        # miimon sees the link, the bond reselects its primary and says so
        fake.current = VF
        d._link_event(bond_event(VF, 51_000_000))
        (sw,) = rec.history
        assert (sw.frm, sw.to, sw.by, sw.reason) == (
            "ens11nsby",
            "ens11npf",
            "kernel",
            "ens11npf got carrier",
        )
        assert sw.latency_ms == pytest.approx(50.999, rel=1e-3)
        assert rec.decision is not None and rec.decision.health.value == "healthy"
        for t in d._retry_timers.values():
            t.cancel()
        d._fast.shutdown()

    asyncio.run(go())


def test_kernel_switch_during_our_request_is_recorded_once(tmp_path: Path) -> None:
    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        # the bond's event arrives while guestfail's request is in flight
        delivered = meanwhile(fake, lambda _slave: d._link_event(bond_event(SBY, 1500)))
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await settle(d)
        await delivered.wait()
        assert [(s.frm, s.to) for s in rec.history] == [("ens11npf", "ens11nsby")]
        d._fast.shutdown()

    asyncio.run(go())


def test_removed_primary_switch_by_the_kernel(tmp_path: Path) -> None:
    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        d.request_reconcile = lambda why: None  # type: ignore[method-assign]
        # unregistering the VF: the bond releases it and picks the standby
        fake.current = SBY
        d._link_event(bond_event(SBY, 1000))
        d._link_event(LinkEvent(True, link(VF, "ens11npf"), 1100))
        await settle(d)
        (sw,) = rec.history
        assert (sw.to, sw.by) == ("ens11nsby", "kernel")
        assert fake.calls == []  # nothing left to do
        d._fast.shutdown()

    asyncio.run(go())


def test_state_file_follows_every_switch(tmp_path: Path) -> None:
    async def go() -> None:
        d, _, _ = make_daemon(tmp_path)
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await settle(d)
        doc = (tmp_path / "state.json").read_text()
        assert '"ens11npf lost carrier"' in doc
        d._fast.shutdown()

    asyncio.run(go())


def test_a_reconciliation_during_the_switch_keeps_the_event_time(tmp_path: Path) -> None:
    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)

        def reconcile(slave: int) -> None:
            rec.active = slave  # the kernel's report already arrived
            d._evaluate(rec, 10**12, "reconciled")  # what _apply_outcome does

        evaluated = meanwhile(fake, reconcile)
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await evaluated.wait()
        await settle(d)
        (sw,) = rec.history
        assert sw.reason == "ens11npf lost carrier"
        assert sw.latency_ms is not None and sw.latency_ms > 0  # measured from the event, not from 0
        d._fast.shutdown()

    asyncio.run(go())
