"""The daemon's switch path, with the kernel's bond as the faked boundary:
events go in as the netlink messages would, the fake bond answers like the
kernel's (a member without link cannot be made active until miimon saw it)."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from pathlib import Path
from typing import Callable, Optional

import pytest

from guestfail.config import parse
from guestfail.daemon import Daemon
from guestfail.errors import NotFound, SystemRefused
from guestfail.model import IFF_LOWER_UP, IFF_UP, Address, BondState, Link
from guestfail.netlink import Batch, LinkEvent, NetlinkFailure
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
    addrs: list[Address] = []

    def addresses(self, ifindex: int) -> list[Address]:
        return list(self.addrs)

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


def make_daemon(tmp_path: Path, agent: str = "") -> tuple[Daemon, PairRecord, FakeBond]:
    d = Daemon(parse(f'[agent]\nstate_dir = "{tmp_path}"\n{agent}'), use_udev=False, use_dbus=False)
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


def test_a_setup_error_does_not_stop_switching_a_bond_that_is_there(tmp_path: Path) -> None:
    """Issue 16 #11: any error of the last reconciliation turned fast
    switching off for the pair, though its bond and members were intact."""

    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        rec.error = "add 192.0.2.9/24 to ens11: Permission denied (EPERM)"
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await settle(d)
        assert fake.calls[0] == ("set_active", SBY) and rec.active == SBY
        d._fast.shutdown()

    asyncio.run(go())


def test_a_switch_announces_the_addresses_the_master_has_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address that came after the last reconciliation (a DHCP lease) is
    announced after the switch: the master's addresses are read then."""
    sent: list[tuple[int, str, list[str]]] = []

    def send(idx: int, mac: str, addrs: list[Address]) -> int:
        sent.append((idx, mac, [a.address for a in addrs]))
        return len(addrs)

    monkeypatch.setattr("guestfail.announce.send", send)

    async def go() -> None:
        d, _rec, fake = make_daemon(tmp_path)
        fake.addrs = [Address(socket.AF_INET, "192.0.2.77", 24, valid_lft=30)]
        d._link_event(LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000))
        await settle(d)
        assert sent == [(MASTER, "02:00:00:00:00:11", ["192.0.2.77"])]
        d._fast.shutdown()

    asyncio.run(go())


def test_events_read_before_an_overrun_are_switched_on_then_a_resync_follows(tmp_path: Path) -> None:
    """Issue 16 #12."""

    class Monitor:
        def read(self, _now: Callable[[], int]) -> Batch:
            return Batch(
                [LinkEvent(False, link(VF, "ens11npf", carrier=False), 1000)], "netlink socket overrun"
            )

    async def go() -> None:
        d, rec, _fake = make_daemon(tmp_path)
        asked: list[str] = []
        d.request_reconcile = asked.append  # type: ignore[method-assign,assignment]
        d._monitor = Monitor()  # type: ignore[assignment]
        d._on_netlink()
        await settle(d)
        assert rec.active == SBY and asked == ["netlink socket overrun"] and d.resyncs == 1
        d._fast.shutdown()

    asyncio.run(go())


def test_an_empty_name_finds_no_pair(tmp_path: Path) -> None:
    """Issue 16 #13: find_pair("") matched any pair without a label."""
    d, rec, _ = make_daemon(tmp_path)
    assert rec.label == ""
    with pytest.raises(NotFound):
        d.find_pair("")
    assert d.find_pair("ens11") is rec
    d._fast.shutdown()


def test_a_prepare_unplug_the_kernel_refuses_is_undone(tmp_path: Path) -> None:
    """Issue 16 #6: a failed drain left the pair pinned to its standby."""

    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        asked: list[str] = []
        d.request_reconcile = asked.append  # type: ignore[method-assign,assignment]
        fake.link_up = {VF}  # the standby cannot be made active
        with pytest.raises(NetlinkFailure):
            await d.prepare_unplug("ens11npf")
        assert not rec.drained and not rec.in_call
        assert asked == ["ens11: drain undone"]  # the reconciliation puts the primary back
        d._fast.shutdown()

    asyncio.run(go())


def test_a_prepare_unplug_that_times_out_is_undone_when_the_kernel_answers(tmp_path: Path) -> None:
    """Issue 16 #6: after a timeout the pair stays 'in call' while the
    request is still with the kernel, and the drain is undone when it returns."""

    async def go() -> None:
        d, rec, fake = make_daemon(tmp_path)
        asked: list[str] = []
        d.request_reconcile = asked.append  # type: ignore[method-assign,assignment]
        release = threading.Event()
        orig = fake.set_active

        def slow(master: int, master_name: str, slave: int, slave_name: str) -> None:
            release.wait(30)
            orig(master, master_name, slave, slave_name)

        fake.set_active = slow  # type: ignore[method-assign]
        with pytest.raises(SystemRefused, match="did not confirm"):
            await d.prepare_unplug("ens11npf", timeout=0.01)
        assert rec.in_call and rec.drained  # the request is still out
        undone = asyncio.Event()

        def reconcile(why: str) -> None:
            asked.append(why)
            undone.set()

        d.request_reconcile = reconcile  # type: ignore[method-assign]
        release.set()
        await undone.wait()
        assert not rec.in_call and not rec.drained and asked == ["ens11: drain undone"]
        d._fast.shutdown()

    asyncio.run(go())


def test_a_drain_whose_vf_is_not_removed_is_undone(tmp_path: Path) -> None:
    """A removal that never came (a cancelled migration) must not pin the
    pair to its standby for good: agent.drain_timeout undoes it."""

    async def go() -> None:
        d, rec, _fake = make_daemon(tmp_path, "drain_timeout = 1\n")
        undone = asyncio.Event()
        d.request_reconcile = lambda why: undone.set()  # type: ignore[method-assign]
        await d.prepare_unplug("ens11npf")
        assert rec.drained and rec.active == SBY
        await asyncio.wait_for(undone.wait(), 10)
        assert not rec.drained
        (last,) = list(rec.history)[-1:]
        assert last.reason == "prepare-unplug"
        d._fast.shutdown()

    asyncio.run(go())
