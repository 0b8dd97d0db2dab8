"""When reconciliations run (guestfail.agent.reconciler.Scheduler), with the
real reconciler on the in-memory kernel."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from guestfail.agent.reconciler import Scheduler
from guestfail.core.interfaces import Outcome

from .test_reconcile import World, assert_paired


def test_a_failure_taking_the_outcome_does_not_stop_the_runs(tmp_path: Path) -> None:
    """The outcome goes to the daemon on the loop; if that raises (a bug),
    later requests must still get runs, or the daemon never pairs again."""
    w = World(tmp_path)
    w.configured_standby()
    taken: list[Outcome] = []

    def apply(out: Outcome) -> None:
        if out.final and not taken:
            taken.append(out)
            raise RuntimeError("a bug in the daemon")
        if out.final:
            taken.append(out)

    async def go() -> None:
        s = Scheduler(w.reconciler(), apply=apply, drained=frozenset, retrying=lambda: None)
        s.start()
        try:
            s.request("start")
            await asyncio.wait_for(s.wait(0), 10)
            w.vf()
            s.request("udev add ens5001")
            await asyncio.wait_for(s.wait(1), 10)
        finally:
            s.close()

    asyncio.run(go())
    assert len(taken) == 2
    assert_paired(w)


def test_a_retry_that_is_due_is_dropped_once_a_run_succeeds(tmp_path: Path) -> None:
    """After a run that left work undone a retry is armed; a run that then
    succeeds (another request came first) cancels it."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.k.fail["create"] = errno.EPERM  # the first attempt at the bond fails

    async def go() -> None:
        s = Scheduler(w.reconciler(), apply=lambda _o: None, drained=frozenset, retrying=lambda: None)
        s.start()
        try:
            s.request("start")
            await asyncio.wait_for(s.wait(0), 10)
            assert s.retry_in is not None and s._retry is not None
            s.request("udev change")
            await asyncio.wait_for(s.wait(1), 10)
            assert s.retry_in is None and s._retry is None
        finally:
            s.close()

    asyncio.run(go())
    assert_paired(w)
