"""Defects a review of the switch path, the daemon's event intake and the
crash recovery found (issues 16 and 17).  Each test fails on the code it was
written against and is marked xfail(strict) until the fix lands: then it
passes, strict xfail turns that into a failure, and the mark comes off.

Against the in-memory kernel (tests/fakekernel.py), fake sysfs and, for the
team backend, a teamd that answers with a D-Bus error: the boundaries only."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from guestfail.agent.daemon import Daemon
from guestfail.agent.flight import State
from guestfail.agent.release import release
from guestfail.agent.switcher import Switcher
from guestfail.backends.bond import BondBackend
from guestfail.backends.team import TeamBackend, TeamdError
from guestfail.core.config import Config
from guestfail.core.decision import Phase
from guestfail.core.interfaces import Outcome
from guestfail.core.records import PairRecord, Switch
from guestfail.system.linkevents import LinkEvent
from guestfail.system.sysfs import Sysfs
from tests.fakekernel import Crashed, FakeKernel

from .test_daemon import _observed, daemon, event, paired, primary_of, the_pair
from .test_reconcile import World, assert_paired, assert_released
from .test_switcher import M1, Bond, make_bond


@pytest.fixture
def bond() -> Any:
    b = make_bond()
    yield b
    b.sw.close()


def run(coro: Any) -> None:
    asyncio.run(coro)


async def finished(sw: Switcher) -> list[BaseException]:
    """Until no request is out; the exceptions the requests' tasks ended with."""
    errors: list[BaseException] = []
    while sw._tasks:
        for r in await asyncio.gather(*list(sw._tasks), return_exceptions=True):
            if isinstance(r, BaseException):
                errors.append(r)
    return errors


# ---------------------------------------------------------------- switcher


class DeadTeamd:
    """teamd's D-Bus name has no owner (teamd died; supervision restarts it)."""

    def call(self, dev: str, member: str, signature: str = "", body: Optional[list[Any]] = None) -> Any:
        raise TeamdError(
            f"teamd {dev}: {member} failed: org.freedesktop.DBus.Error.ServiceUnknown", "ServiceUnknown"
        )

    def close(self) -> None:
        pass


def test_a_team_switch_teamd_does_not_answer_does_not_wedge_the_pair(tmp_path: Path) -> None:
    """switcher._switch catches NetlinkFailure only: the team backend's
    set_active raises TeamdError (a SystemRefused) when teamd is gone or does
    not answer within 10 s.  The task dies, the state stays SWITCHING, and
    every later event only sets `dirty`: the pair never switches again (and
    prepare-unplug is refused as 'in flight') until the daemon restarts."""
    b = make_bond()
    team = TeamBackend(Config(), b.k, tmp_path, client=DeadTeamd())  # type: ignore[arg-type]
    sw = Switcher(
        b.k,
        team,
        on_switch=lambda _r, s: b.switches.append(s),
        on_undrain=lambda _r, why: None,
        reconcile=b.asked.append,
        announce_enabled=lambda: False,
        retry_delay=lambda: 0.01,
    )

    async def go() -> None:
        b.k.set_carrier(b.vf, False)
        sw.link_event(b.rec, b.event(b.vf, time.monotonic_ns()))
        await finished(sw)
        f = sw.flight(b.rec)
        assert f.state != State.SWITCHING, "wedged: no later event can switch this pair"
        assert any("ServiceUnknown" in why for why in b.asked)  # the reconciliation is asked to repair

    try:
        run(go())
    finally:
        sw.close()


def test_a_switch_guestfails_request_made_is_recorded_as_guestfails(bond: Bond) -> None:
    """The kernel announces every change of the active slave (NETDEV_BONDING_FAILOVER
    and the changelink's NETDEV_CHANGE -> RTM_NEWLINK of the master) while it
    handles the request, before the ack.  The loop thread reads that message
    while the switch thread still reads the master back (and asyncio runs the
    reader callback before the task's next step in any case): kernel_active()
    sees active == f.target during SWITCHING and sets f.kernel_ns, and
    _switch() then records by="kernel" (with a request_ms, which says a
    request was sent).  Nearly every switch guestfail makes is attributed to
    the kernel; bench reaction's 'made by' column is meaningless."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        orig = bond.k.set_bond

        def set_bond(ifindex: int, what: str, **attrs: Any) -> None:  # the switch thread
            orig(ifindex, what, **attrs)
            read = threading.Event()

            def report() -> None:  # the master's RTM_NEWLINK for this very request
                bond.bond_reports(time.monotonic_ns())
                read.set()

            loop.call_soon_threadsafe(report)
            read.wait(5)

        bond.k.set_bond = set_bond  # type: ignore[method-assign]
        bond.carrier(bond.vf, False, time.monotonic_ns())
        await bond.sw.settle()
        (sw,) = bond.switches
        assert (sw.to, sw.request_ms is not None) == ("ens11nsby", True)
        assert sw.by == "guestfail"

    run(go())


def test_a_pair_forgotten_while_its_request_is_out_leaves_no_timer(bond: Bond) -> None:
    """Switcher.forget() pops the flight and cancels its timers, but the
    request's task goes on with the orphan: the master is gone (ENODEV, in
    WAIT_FOR_LINK), so it goes RETRY and arms a timer; _retry() decides on
    the orphan's frozen facts (no event reaches it any more), switches again,
    gets ENODEV again: a request every 1.5 miimon for the daemon's life."""

    async def go() -> None:
        loop = asyncio.get_running_loop()
        orphan = bond.flight()

        def meanwhile() -> None:  # the switch thread, before the request
            bond.k.before.pop("set_bond")
            bond.k.remove(bond.master)  # the master went (ip link del, a release)
            forgotten = threading.Event()

            def forget() -> None:  # the reconciliation that saw it: the pair is gone
                bond.sw.forget(bond.rec.key)
                forgotten.set()

            loop.call_soon_threadsafe(forget)
            forgotten.wait(5)

        bond.k.before["set_bond"] = meanwhile
        bond.carrier(bond.vf, False, time.monotonic_ns())
        await finished(bond.sw)
        assert bond.rec.key not in bond.sw.flights
        assert orphan.timer is None, f"a timer is armed on a forgotten pair ({orphan.state.value})"

    run(go())


def test_a_second_drain_cancels_the_first_drains_timer(bond: Bond) -> None:
    """Switcher.drain() overwrites f.drain_timer without cancelling it: the
    first timer undoes the second drain (agent.drain_timeout after the first
    call, not the second), and forget() cannot cancel it."""

    async def go() -> None:
        await bond.sw.drain(bond.rec, 5.0, expires=120)
        first = bond.flight().drain_timer
        assert first is not None
        await bond.sw.drain(bond.rec, 5.0, expires=120)
        assert bond.flight().drain_timer is not first
        assert first.cancelled()

    run(go())


def test_a_vf_event_read_before_the_pair_had_a_master_does_not_pin_it_to_the_standby(
    tmp_path: Path,
) -> None:
    """Pass 1 observes the new pair (no master yet): by_member maps the VF to
    a record with master None.  Pass 1 builds the pair; the VF's RTM_NEWLINK
    (enslaved to the new bond) is read after pass 2's snapshot was begun but
    before that observation is applied, so link_event() computes
    primary_enslaved = (link.master == rec.master) = (M == None) = False.
    PairRecord.observe() keeps it (the VF is in `fresher`), decide() says
    'joining, want the standby', and the switcher moves the traffic off the
    VF.  Nothing puts it back: the VF's next event may be hours away, and
    the udev 'change' after enslaving is skipped for members."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()

    async def go() -> None:
        d = Daemon(w.cfg, sysfs=Sysfs(w.tmp / "sys"), use_udev=False, use_dbus=False, rtnl=lambda: w.k)
        try:
            first = Outcome(*_observed(d))  # pass 1's observation: no master yet
            first.observed_ns = time.monotonic_ns()
            d.reconciler._masters(first)
            d._apply_outcome(first)
            rec = the_pair(d)
            assert rec.master is None and rec.primary is not None
            w.run()  # pass 1's steps (the same kernel): the pair is built
            second = Outcome(*_observed(d))
            second.observed_ns = time.monotonic_ns()
            d.reconciler._masters(second)
            d.on_link_event(event(w, "ens11npf"))  # read late, before `second` is applied
            d._apply_outcome(second)
            await d.switcher.settle()
            assert rec.primary_enslaved
            assert rec.decision is not None and rec.decision.phase == Phase.ON_PRIMARY
            assert w.link("ens11").bond["active_slave"] == w.link("ens11npf").ifindex
            assert list(rec.history) == []
        finally:
            await d.switcher.settle()
            await d.shutdown()

    run(go())


def test_a_primary_without_a_master_is_not_enslaved() -> None:
    """link_event(): primary_enslaved = link.master == rec.master is True when
    both are None; status then says 'on-primary, healthy' for a pair whose
    master does not exist."""
    k = FakeKernel()
    sby = k.add("ens11", mac=M1)
    vf = k.add("ens5001", mac=M1)
    rec = PairRecord("pci-0000:01:00.0", standby=sby, standby_name="ens11", standby_carrier=True)
    rec.primary, rec.primary_name = vf, "ens5001"
    switches: list[Switch] = []

    async def go() -> None:
        sw = Switcher(
            k,
            BondBackend(Config(), k, Sysfs()),
            on_switch=lambda _r, s: switches.append(s),
            on_undrain=lambda _r, why: None,
            reconcile=lambda why: None,
            announce_enabled=lambda: False,
            retry_delay=lambda: 0.01,
        )
        link = k.get_link(vf)
        assert link is not None and link.master is None
        sw.link_event(rec, LinkEvent(False, link, time.monotonic_ns()))
        sw.close()
        assert not rec.primary_enslaved
        assert rec.decision is not None and rec.decision.phase == Phase.JOINING

    run(go())


# ---------------------------------------------------------------- crash safety


def test_a_crash_before_the_master_was_marked_and_a_vf_gone_meanwhile(tmp_path: Path) -> None:
    """The journal's `creating` lets the next run adopt an unmarked gftmpN,
    but only while the pairing is live.  If the VF went while guestfail was
    down (a migration started), the standby is no pairing (not enslaved, no
    marker names it), _undo_leaked() runs plan_finish_release(), which has
    nothing to do, and clears the entry: the gftmpN is now nobody's.  When
    the VF comes back, CreateMaster finds gftmpN 'taken by a device guestfail
    did not make' and the pair is refused at every retry (issue 16 #5 by
    another path)."""
    w = World(tmp_path)
    w.configured_standby()
    vf = w.vf()
    w.k.crash_after(1)  # the bond exists, unmarked, as gftmp1
    with pytest.raises(Crashed):
        w.run()
    w.k.remove(vf)  # hot-unplugged while guestfail was down (its sysfs entry goes too)
    w.run()
    assert not [x.name for x in w.k.links.values() if x.kind == "bond"], "a gftmpN left behind"
    w.vf("ens5002", pci="0000:06:00.0")  # the VF is back (another slot)
    out = w.run()
    assert not out.errors, out.errors
    assert_paired(w)


def test_a_drain_during_a_reconciliation_is_not_undone_by_it(tmp_path: Path) -> None:
    """Scheduler._loop() passes self.drained() to the whole run.  A drain that
    lands after the run began (a run lasts: several passes, NetworkManager's
    hand-over) is not in it, so plan_pair(drained=False) sees the bond without
    its primary and sets the VF as primary again: with primary_reselect=always
    the kernel moves the traffic back to the VF that is about to be unplugged.
    The bond keeps that primary while the daemon says 'drained'."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            loop = asyncio.get_running_loop()
            observe = d.reconciler.observe
            drained_meanwhile: list[bool] = []

            def observe_after_a_drain() -> Any:  # the reconciler's thread
                if not drained_meanwhile:
                    doc = asyncio.run_coroutine_threadsafe(d.prepare_unplug("ens11npf"), loop).result(10)
                    drained_meanwhile.append(doc["drained"])
                return observe()

            d.reconciler.observe = observe_after_a_drain  # type: ignore[method-assign]
            n = d.reconciling.runs
            d.request_reconcile("udev change ens11")  # a run that begins before the drain
            await asyncio.wait_for(d.reconciling.wait(n), 10)
            await d.switcher.settle()
            assert drained_meanwhile == [True] and the_pair(d).drained
            assert primary_of(w) is None, "the run made the drained VF the bond's primary again"

    run(go())


def test_a_named_release_killed_after_deleting_its_master_is_finished_by_the_same_command(
    tmp_path: Path,
) -> None:
    """release() checks the names against the masters present before it
    looks at the journal.  Killed right after the master was deleted, the
    standby is left named ens11nsby, down (the bond closed it), without
    its IPv6 address and routes; `guestfail release ens11` again says "no
    master guestfail built is called 'ens11'" and changes nothing, although
    the journal's release entry names that master (`entry.master`) and the
    loop that finishes it is written for named releases.  Only --all
    finishes it, which the message does not say."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.run()
    assert_paired(w)
    sysfs = Sysfs(tmp_path / "sys")
    before = len(w.k.requests)
    w.k.crash_after(3)  # tc filters off both members, the master deleted: nothing else done
    with pytest.raises(Crashed):
        release(w.cfg, w.k, sysfs, ["ens11"], lambda _: None)
    assert w.k.requests[before:][-1] == "delete ens11" and "ens11nsby" in w.names()
    release(w.cfg, w.k, sysfs, ["ens11"], lambda _: None)
    assert_released(w)
