"""The switch path against the in-memory kernel (tests/fakekernel.py): a bond
that refuses to make a member active until its miimon saw the link, and that
reselects by itself; events go in as the kernel reports them."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench.common import parse_switches
from guestfail.agent.flight import TRANSITIONS, BadTransition, Flight, State
from guestfail.agent.switcher import Switcher
from guestfail.backends.bond import BondBackend
from guestfail.core.config import Config
from guestfail.core.model import Address
from guestfail.core.records import PairRecord, Switch
from guestfail.system.linkevents import LinkEvent
from guestfail.system.sysfs import Sysfs
from tests.fakekernel import FakeKernel

M1 = "02:00:00:00:00:11"


@dataclass
class Bond:
    k: FakeKernel
    sw: Switcher
    rec: PairRecord
    master: int
    sby: int
    vf: int
    switches: list[Switch]
    asked: list[str]

    def event(self, idx: int, t: int, deleted: bool = False) -> LinkEvent:
        link = self.k.get_link(idx)
        assert link is not None
        return LinkEvent(deleted, link, t)

    def carrier(self, idx: int, on: bool, t: int) -> None:
        """The cable: the kernel changes the carrier, then the member's event
        reaches guestfail (the bond's own report may come before or after)."""
        self.k.set_carrier(idx, on)
        self.sw.link_event(self.rec, self.event(idx, t))

    def bond_reports(self, t: int) -> None:
        self.sw.link_event(self.rec, self.event(self.master, t))

    def flight(self) -> Flight:
        return self.sw.flight(self.rec)


def make_bond(announce: bool = False) -> Bond:
    k = FakeKernel(rename_up_ok=True)
    sby = k.add("ens11nsby", mac=M1, up=False)
    vf = k.add("ens11npf", mac=M1, up=False)
    master = k.create_bond(
        "ens11", M1, 1500, miimon=100, fail_over_mac=0, num_peer_notif=1, all_slaves_active=0
    )
    k.set_state(master, "ens11", up=True)
    k.set_master(sby, "ens11nsby", master, "ens11")
    k.set_master(vf, "ens11npf", master, "ens11")
    k.set_bond(master, "primary", bond_primary=vf)
    state = k.links[master].bond
    assert state is not None and state["active_slave"] == vf
    rec = PairRecord(
        "pci-0000:01:00.0", master=master, master_name="ens11", standby=sby, standby_name="ens11nsby"
    )
    rec.primary, rec.primary_name = vf, "ens11npf"
    rec.primary_master = rec.master
    rec.primary_carrier = rec.standby_carrier = True
    rec.active = vf
    switches: list[Switch] = []
    asked: list[str] = []
    sw = Switcher(
        k,
        BondBackend(Config(), k, Sysfs()),
        on_switch=lambda _rec, s: switches.append(s),
        on_undrain=lambda _rec, why: asked.append(f"undrain: {why}"),
        reconcile=asked.append,
        announce_enabled=lambda: announce,
        retry_delay=lambda: 0.01,
    )
    return Bond(k, sw, rec, master, sby, vf, switches, asked)


@pytest.fixture
def bond() -> Iterator[Bond]:
    b = make_bond()
    yield b
    b.sw.close()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_carrier_loss_switches_at_once_and_is_recorded(bond: Bond) -> None:
    async def go() -> None:
        bond.carrier(bond.vf, False, 1000)
        assert bond.flight().state == State.SWITCHING
        await bond.sw.settle()
        assert bond.k.links[bond.master].bond["active_slave"] == bond.sby  # type: ignore[index]
        assert bond.rec.active == bond.sby and bond.flight().state == State.STEADY
        (sw,) = bond.switches
        assert (sw.frm, sw.to, sw.by, sw.reason) == (
            "ens11npf",
            "ens11nsby",
            "guestfail",
            "ens11npf lost carrier",
        )
        assert sw.latency_ms is not None and sw.latency_ms >= 0
        # guestfail's own share: the event to its request, within the whole
        assert sw.request_ms is not None and 0 <= sw.request_ms <= sw.latency_ms
        # the bond's own report of that switch is not recorded twice
        bond.bond_reports(2000)
        assert len(bond.switches) == 1
        assert bond.rec.decision is not None and bond.rec.decision.health.value == "degraded"

    run(go())


def test_the_benchmarks_read_the_switch_log_line_the_switcher_writes(
    bond: Bond, caplog: pytest.LogCaptureFixture
) -> None:
    """bench reaction parses the daemon's log: the line's format and its
    parser move together."""
    caplog.set_level(logging.INFO, logger="guestfail.agent.switcher")

    async def go() -> None:
        bond.carrier(bond.vf, False, time.monotonic_ns())
        await bond.sw.settle()

    run(go())
    (sw,) = bond.switches
    (line,) = parse_switches(caplog.text)
    assert (line.master, line.frm, line.to, line.by) == (bond.rec.master_name, sw.frm, sw.to, "guestfail")
    assert line.reason == sw.reason
    assert line.ms == pytest.approx(sw.latency_ms, abs=0.01)
    assert line.sent_ms == pytest.approx(sw.request_ms, abs=0.01)


def test_a_switch_called_for_while_a_request_is_out_is_timed_from_its_own_event(bond: Bond) -> None:
    """The VF's carrier comes back while guestfail's request for the standby
    is out: the switch back that follows is that event's, with its reason and
    its time, not a nameless 'switch' of 0 ms."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        t_back: list[int] = []

        def carrier_back() -> None:  # the switch thread, the request about to go out
            bond.k.before.pop("set_bond")
            seen = threading.Event()

            def event() -> None:
                t_back.append(time.monotonic_ns())
                bond.carrier(bond.vf, True, t_back[0])
                seen.set()

            loop.call_soon_threadsafe(event)
            seen.wait(5)

        bond.k.before["set_bond"] = carrier_back
        t_down = time.monotonic_ns() - 10_000_000_000  # read 10 s ago, say: tells the two apart
        bond.carrier(bond.vf, False, t_down)
        await bond.sw.settle()
        first, second = bond.switches
        assert (first.to, first.reason) == ("ens11nsby", "ens11npf lost carrier")
        assert (second.to, second.reason) == ("ens11npf", "ens11npf got carrier")
        assert first.latency_ms is not None and second.latency_ms is not None
        assert 0 < second.latency_ms < 10_000 <= first.latency_ms  # each from its own event
        assert bond.k.links[bond.master].bond["active_slave"] == bond.vf  # type: ignore[index]

    run(go())


def test_carrier_back_before_miimon_saw_it_waits_for_the_bond(bond: Bond) -> None:
    """The kernel refuses to make the VF active until its miimon saw the
    link: guestfail waits (RETRY, with a timer), and when the bond reselects
    by itself first, that switch is the kernel's, timed from the event."""

    async def go() -> None:
        bond.carrier(bond.vf, False, 1000)
        await bond.sw.settle()
        bond.switches.clear()
        bond.k.mii_lag.add(bond.vf)
        bond.carrier(bond.vf, True, 2_000_000)
        await bond.sw.settle()
        assert bond.flight().state == State.RETRY and bond.flight().timer is not None
        assert bond.switches == []
        bond.k.mii_sees(bond.vf)  # miimon notices: the bond makes its primary active
        bond.bond_reports(52_000_000)
        (sw,) = bond.switches
        assert (sw.frm, sw.to, sw.by, sw.reason) == (
            "ens11nsby",
            "ens11npf",
            "kernel",
            "ens11npf got carrier",
        )
        assert sw.latency_ms == pytest.approx(50.0)
        assert sw.request_ms is None  # the switch was not guestfail's request's
        assert bond.flight().state == State.STEADY and bond.flight().timer is None
        assert bond.rec.decision is not None and bond.rec.decision.health.value == "healthy"

    run(go())


def test_a_retry_switches_once_the_bond_saw_the_link(bond: Bond) -> None:
    async def go() -> None:
        bond.carrier(bond.vf, False, 1000)
        await bond.sw.settle()
        bond.k.mii_lag.add(bond.vf)
        bond.k.links[bond.master].bond["primary"] = None  # type: ignore[index]  # no reselection of its own
        bond.carrier(bond.vf, True, 2000)
        await bond.sw.settle()
        assert bond.flight().state == State.RETRY
        bond.k.mii_lag.discard(bond.vf)  # miimon saw it; the bond does nothing by itself
        changed = bond.flight().changed
        await asyncio.wait_for(changed.wait(), 5)  # the retry timer
        await bond.sw.settle()
        assert bond.rec.active == bond.vf and bond.switches[-1].by == "guestfail"
        assert bond.flight().state == State.STEADY

    run(go())


def test_a_kernel_switch_during_our_request_is_recorded_once(bond: Bond) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        delivered = asyncio.Event()

        def meanwhile() -> None:  # on the switch thread, before the request
            bond.k.before.pop("set_bond")
            bond.k.set_bond(bond.master, "miimon", bond_active_slave=bond.sby)

            def report() -> None:
                bond.bond_reports(1500)
                delivered.set()

            loop.call_soon_threadsafe(report)

        bond.k.before["set_bond"] = meanwhile
        bond.carrier(bond.vf, False, 1000)
        await delivered.wait()
        await bond.sw.settle()
        assert [(s.frm, s.to) for s in bond.switches] == [("ens11npf", "ens11nsby")]

    run(go())


def test_a_removed_primary_is_switched_away_from_by_the_kernel(bond: Bond) -> None:
    async def go() -> None:
        gone = bond.event(bond.vf, 1100, deleted=True)
        bond.k.remove(bond.vf)  # unregistering the VF: the bond releases it
        bond.bond_reports(1000)
        assert bond.sw.link_event(bond.rec, gone) is False  # the structure changed: reconcile
        await bond.sw.settle()
        (sw,) = bond.switches
        assert (sw.to, sw.by) == ("ens11nsby", "kernel")

    run(go())


def test_an_event_during_the_request_keeps_the_first_event_time(bond: Bond) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        seen = asyncio.Event()

        def meanwhile() -> None:
            bond.k.before.pop("set_bond")

            def reconciled() -> None:
                bond.sw.evaluate(bond.rec, 10**12, "reconciled")
                seen.set()

            loop.call_soon_threadsafe(reconciled)

        bond.k.before["set_bond"] = meanwhile
        bond.carrier(bond.vf, False, 1000)
        await seen.wait()
        await bond.sw.settle()
        (sw,) = bond.switches
        assert sw.reason == "ens11npf lost carrier"
        assert sw.latency_ms is not None and sw.latency_ms > 0  # measured from the event, not from 0

    run(go())


def test_a_setup_error_does_not_stop_switching_a_bond_that_is_there(bond: Bond) -> None:
    """Issue 16 #11."""

    async def go() -> None:
        bond.rec.error = "add 192.0.2.9/24 to ens11: Permission denied (EPERM)"
        bond.carrier(bond.vf, False, 1000)
        await bond.sw.settle()
        assert bond.rec.active == bond.sby

    run(go())


def test_the_announcement_carries_the_addresses_the_master_has_after_the_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A DHCP lease that came after the pairing is announced; the
    announcement is queued behind the switch, not before it."""
    b = make_bond(announce=True)
    sent: list[tuple[int, str, list[str]]] = []

    def send(idx: int, mac: str, addrs: list[Address]) -> int:
        sent.append((idx, mac, [a.address for a in addrs]))
        return len(addrs)

    monkeypatch.setattr("guestfail.system.packets.send", send)

    async def go() -> None:
        b.k.add_address(b.master, "ens11", Address(socket.AF_INET, "192.0.2.77", 24, valid_lft=30))
        b.carrier(b.vf, False, 1000)
        await b.sw.settle()
        await asyncio.get_running_loop().run_in_executor(b.sw.thread, lambda: None)  # the queue after it
        assert sent == [(b.master, M1, ["192.0.2.77"])]

    run(go())
    b.sw.close()


def test_every_state_change_follows_the_table() -> None:
    async def go() -> None:
        for old, allowed in TRANSITIONS.items():
            for new in State:
                f = Flight("k", state=old)
                if new == old:
                    f.go(new, "no change")
                    assert f.state == old
                elif new in allowed:
                    woken = f.changed
                    f.go(new, "test")
                    assert f.state == new and woken.is_set()
                else:
                    with pytest.raises(BadTransition, match=f"{old.value} -> {new.value}"):
                        f.go(new, "test")

    run(go())


def test_leaving_a_state_cancels_its_timer() -> None:
    async def go() -> None:
        f = Flight("k", state=State.SWITCHING)
        f.go(State.RETRY, "refused")
        fired: list[bool] = []
        f.arm(0.001, lambda: fired.append(True))
        f.go(State.STEADY, "the kernel switched")
        await asyncio.sleep(0.02)  # longer than the timer: it must not fire
        assert fired == [] and f.timer is None

    run(go())


def test_prepare_unplug_while_a_switch_is_out_is_refused(bond: Bond) -> None:
    from guestfail.core.errors import SystemRefused

    async def go() -> None:
        bond.carrier(bond.vf, False, 1000)
        with pytest.raises(SystemRefused, match="in flight"):
            await bond.sw.drain(bond.rec, 1.0)
        await bond.sw.settle()

    run(go())


def test_the_bonds_report_before_the_request_goes_out_is_recorded_as_the_kernels(bond: Bond) -> None:
    """The bond's own report of the switch is read in the same loop turn as
    the carrier event, before guestfail's request went out: the switch is
    recorded once, as the kernel's, timed to the bond's report (it was lost:
    the request's task took the member it switched from when it ran)."""

    async def go() -> None:
        bond.carrier(bond.vf, False, 1000)
        await bond.sw.settle()
        bond.switches.clear()
        bond.k.set_carrier(bond.vf, True)  # the bond reselects its primary at once
        bond.sw.link_event(bond.rec, bond.event(bond.vf, 2_000_000))
        bond.bond_reports(5_000_000)
        await bond.sw.settle()
        (sw,) = bond.switches
        assert (sw.frm, sw.to, sw.by, sw.reason) == (
            "ens11nsby",
            "ens11npf",
            "kernel",
            "ens11npf got carrier",
        )
        assert sw.latency_ms == pytest.approx(3.0)

    run(go())
