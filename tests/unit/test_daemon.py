"""The daemon on the in-memory kernel: the reconciler builds the pair, events
go in as the kernel reports them, and the kernel's state is what is checked
(prepare-unplug and its undoing, retries, overruns, the state file)."""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from guestfail.agent.daemon import Daemon
from guestfail.core.errors import NotFound, SystemRefused
from guestfail.core.interfaces import Outcome
from guestfail.core.records import PairRecord
from guestfail.system.linkevents import Batch, LinkEvent
from guestfail.system.netlink import NetlinkFailure
from guestfail.system.sysfs import Sysfs

from .test_reconcile import World, assert_paired


@asynccontextmanager
async def daemon(w: World, agent: str = "") -> AsyncIterator[Daemon]:
    """guestfail run, with the in-memory kernel as its netlink."""
    if agent:
        from guestfail.core.config import parse

        w.cfg = parse(f'[agent]\nstate_dir = "{w.state}"\n{agent}')
    d = Daemon(w.cfg, sysfs=Sysfs(w.tmp / "sys"), use_udev=False, use_dbus=False, rtnl=lambda: w.k)
    await d.start(events=False)
    try:
        yield d
    finally:
        await d.switcher.settle()
        await d.shutdown()


def paired(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    return w


def the_pair(d: Daemon) -> PairRecord:
    (rec,) = d.pairs.values()
    return rec


def event(w: World, name: str) -> LinkEvent:
    link = w.k.get_link(w.link(name).ifindex)
    assert link is not None
    return LinkEvent(False, link, time.monotonic_ns())  # when the daemon read it


def primary_of(w: World) -> int | None:
    bond = w.link("ens11").bond
    assert bond is not None
    return bond["primary"]  # type: ignore[no-any-return]


async def reconciled(d: Daemon, after: int) -> None:
    """Until a reconciliation beyond the `after`-th has finished."""
    await asyncio.wait_for(d.reconciling.wait(after), 10)


def test_the_state_file_follows_every_switch(tmp_path: Path) -> None:
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            w.k.set_carrier(w.link("ens11npf").ifindex, False)
            d.on_link_event(event(w, "ens11npf"))
            await d.switcher.settle()
            assert '"ens11npf lost carrier"' in (w.state / "state.json").read_text()

    asyncio.run(go())


def test_a_prepare_unplug_the_kernel_refuses_is_undone(tmp_path: Path) -> None:
    """Issue 16 #6: a failed drain left the pair pinned to its standby."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            n = d.reconciling.runs
            orig = w.k.set_bond

            def refuse(ifindex: int, what: str, **attrs: object) -> None:
                raise NetlinkFailure(what, errno.EPERM)

            w.k.set_bond = refuse  # type: ignore[method-assign]
            with pytest.raises(NetlinkFailure):
                await d.prepare_unplug("ens11npf")
            w.k.set_bond = orig  # type: ignore[method-assign]
            assert not the_pair(d).drained
            await reconciled(d, n)
            assert primary_of(w) == w.link("ens11npf").ifindex
            assert_paired(w)

    asyncio.run(go())


def test_a_prepare_unplug_that_times_out_is_undone_when_the_kernel_answers(tmp_path: Path) -> None:
    """Issue 16 #6: after a timeout the request is still with the kernel; the
    drain is undone once it returns, and the pair goes back to its VF."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            n = d.reconciling.runs
            release = threading.Event()

            def held() -> None:
                release.wait(30)

            w.k.before["set_bond"] = held
            with pytest.raises(SystemRefused, match="did not confirm"):
                await d.prepare_unplug("ens11npf", timeout=0.01)
            rec = the_pair(d)
            assert rec.drained and d.switcher.flight(rec).state.value == "draining"
            w.k.before.clear()
            release.set()
            await reconciled(d, n)  # the undoing asks for a reconciliation
            assert not rec.drained and d.switcher.flight(rec).state.value == "steady"
            assert primary_of(w) == w.link("ens11npf").ifindex
            # the late switch to the standby is on record, before the way back
            moves = [(s.frm, s.to, s.reason) for s in rec.history]
            assert ("ens11npf", "ens11nsby", "prepare-unplug") in moves, moves

    asyncio.run(go())


def test_a_drain_whose_vf_is_not_removed_is_undone(tmp_path: Path) -> None:
    """A removal that never came (a cancelled migration) must not pin the
    pair to its standby for good: agent.drain_timeout undoes it."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w, "drain_timeout = 1\n") as d:
            n = d.reconciling.runs
            doc = await d.prepare_unplug("ens11npf")
            assert doc["drained"] and doc["active"] == "ens11nsby"
            assert primary_of(w) is None
            await reconciled(d, n)  # one second later
            assert not the_pair(d).drained
            assert primary_of(w) == w.link("ens11npf").ifindex
            assert w.link("ens11").bond["active_slave"] == w.link("ens11npf").ifindex

    asyncio.run(go())


def test_a_reconciliation_that_fails_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    """Issue 16 #8: a failed reconciliation waited for some other event; now
    it is tried again with backoff, and status shows the cause meanwhile."""
    w = paired(tmp_path)
    w.k.fail["enslave"] = errno.EPERM  # once: the kernel refuses the first enslave

    async def go() -> None:
        async with daemon(w) as d:
            n = d.reconciling.runs
            rec = the_pair(d)
            assert "Operation not permitted" in rec.error and d.reconciling.retry_in == 0.5
            doc = d.status()
            assert doc["daemon"]["retry_in_s"] == 0.5 and doc["pairs"][0]["error"] == rec.error
            await reconciled(d, n)  # the retry, by itself
            assert rec.error == "" and d.reconciling.retry_in is None

    asyncio.run(go())
    assert_paired(w)


def test_events_read_before_an_overrun_are_switched_on_then_a_resync_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16 #12; the overrun is said at warning level (the soak found it
    only in the state file)."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            n = d.reconciling.runs
            w.k.set_carrier(w.link("ens11npf").ifindex, False)
            lost = event(w, "ens11npf")

            class Monitor:
                def read(self, _now: Callable[[], int]) -> Batch:
                    return Batch([lost], "netlink socket overrun")

                def fileno(self) -> int:  # pragma: no cover - not watched here
                    return -1

            d._monitor = Monitor()  # type: ignore[assignment]
            d._on_netlink()
            d._monitor = None
            assert d.switcher.flight(the_pair(d)).state.value == "switching"  # before the resync
            await d.switcher.settle()
            assert the_pair(d).active == w.link("ens11nsby").ifindex and d.resyncs == 1
            await reconciled(d, n)

    with caplog.at_level(logging.WARNING, logger="guestfail.agent.daemon"):
        asyncio.run(go())
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == ["events lost (netlink socket overrun): reading the kernel's state again (resync 1)"], said


def test_an_empty_name_finds_no_pair(tmp_path: Path) -> None:
    """Issue 16 #13: find_pair("") matched any pair without a label."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            assert the_pair(d).label == ""
            with pytest.raises(NotFound):
                d.find_pair("")
            assert d.find_pair("ens11") is the_pair(d)

    asyncio.run(go())


def test_an_older_snapshot_does_not_undo_a_newer_event(tmp_path: Path) -> None:
    """A reconciliation's snapshot applied after a link event that came later
    must not bring the event's news back to the snapshot's (it made the
    daemon switch away from a VF that had just come up, measured in the
    lab with the vmxnet3 stand-in)."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            old = Outcome(*_observed(d))  # the snapshot: the VF with carrier
            old.observed_ns = time.monotonic_ns()
            d.reconciler._masters(old)
            w.k.set_carrier(w.link("ens11npf").ifindex, False)
            d.on_link_event(event(w, "ens11npf"))  # read after the snapshot was begun
            await d.switcher.settle()
            rec = the_pair(d)
            assert rec.active == w.link("ens11nsby").ifindex and not rec.primary_carrier
            d._apply_outcome(old)
            await d.switcher.settle()
            assert not rec.primary_carrier  # still what the event said
            assert rec.active == w.link("ens11nsby").ifindex
            assert [s.to for s in rec.history] == ["ens11nsby"], rec.history

    asyncio.run(go())


def _observed(d: Daemon) -> tuple[Any, Any]:
    from guestfail.core.match import match

    snap = d.reconciler.observe()
    return snap, match(d.cfg, snap)


def test_the_metrics_say_the_daemon_is_up_and_then_stopped(tmp_path: Path) -> None:
    """The node_exporter textfile follows the daemon: up while it runs, 0
    once it stopped (the pairs stay, nothing switches)."""
    pytest.importorskip("prometheus_client")
    w = paired(tmp_path)
    prom = tmp_path / "guestfail.prom"

    async def go() -> None:
        async with daemon(w, f'\n[metrics]\ntextfile = "{prom}"\n'):
            assert "guestfail_up 1.0" in prom.read_text()
        assert "guestfail_up 0.0" in prom.read_text()

    asyncio.run(go())
