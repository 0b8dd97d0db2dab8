"""Reconciliation: make the kernel hold the pairs the configuration asks for.

One pass reads top to bottom, as nmstate's `netapplier.apply()` does:

    observe  -> one snapshot of links, addresses, routes, sysfs, udev
    match    -> pairings, refusals, kernel-managed pairs (guestfail.core.match)
    plan     -> per pair, the steps from the snapshot to the spec
                (guestfail.core.plan), masters that serve no pair undone
    journal  -> before a pair's first step, what it must give back
                (guestfail.core.journal, kept by guestfail.system.files)
    apply    -> the executor runs the steps (guestfail.agent.executor)
    verify   -> the next pass observes again; a pass that plans nothing is
                the verification, and clears the journal of the pairs it saw
                complete

Passes repeat until one plans nothing (verified) or MAX_PASSES ran.  Every
observation is handed to the daemon at once (`observed`), so a pair is
switched the moment it exists, not once the integrations are done.

Integrations (NetworkManager, teamd supervision) sit behind one small
interface with hooks at the points where they must act; the reconciler never
names one.  Runs on one worker thread with its own netlink socket.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from guestfail.agent.executor import Executor
from guestfail.core import naming
from guestfail.core.config import Config
from guestfail.core.errors import GuestfailError
from guestfail.core.interfaces import Backend, Integration, Outcome
from guestfail.core.journal import Entry, movable, now
from guestfail.core.match import MatchResult, Pairing, claims, match, standby_key
from guestfail.core.model import Snapshot
from guestfail.core.plan import PairSpec, Plan, PlanRefused, master_of, plan_pair, spec_for
from guestfail.core.steps import Enslave, Rename
from guestfail.core.undo import plan_finish_release, plan_leaked, release_entry
from guestfail.system.files import Journal
from guestfail.system.netlink import Rtnl
from guestfail.system.observe import UdevReader, assemble
from guestfail.system.sysfs import Sysfs
from guestfail.system.udev import write_claims

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PASSES = 4


def _pair_complete(spec: PairSpec, snap: Snapshot) -> bool:
    master = master_of(spec.key, spec.standby, snap)
    return master is not None and snap.links[spec.standby].master == master.ifindex


class Reconciler:
    def __init__(
        self,
        cfg: Config,
        nl: Rtnl,
        sysfs: Sysfs,
        backend: Backend,
        state_dir: Path,
        *,
        udev: Optional[UdevReader] = None,
        integrations: tuple[Integration, ...] = (),
        pair_lock: Optional[threading.Lock] = None,
    ) -> None:
        self.cfg = cfg
        self.nl = nl
        self.sysfs = sysfs
        self.backend = backend
        self.state_dir = state_dir
        self.udev = udev
        self.integrations = integrations
        self.journal = Journal(state_dir / "journal")
        self.executor = Executor(nl, backend, ingress=cfg.ingress == "unicast")
        # held while a pair is planned and changed; a drain takes it too
        self.pair_lock = pair_lock or threading.Lock()

    # ------------------------------------------------------------ one run

    def run(
        self,
        drained: Callable[[], AbstractSet[str]] = frozenset,
        observed: Optional[Callable[[Outcome], None]] = None,
    ) -> Outcome:
        """Observe, plan and apply until nothing is left to do.  `drained`
        is asked for each pair as it is planned (a prepare-unplug may come
        while the run goes on); a drain's requests wait for the pair's
        plan and steps to be done (`pair_lock`), so the run cannot undo it."""
        self.executor.ingress = self.cfg.ingress == "unicast"
        for i in self.integrations:
            self._guarded(i, "begin", i.begin)
        out = Outcome(Snapshot(), MatchResult())
        for n in range(1, MAX_PASSES + 1):
            t_observed = time.monotonic_ns()
            snap = self.observe()
            result = match(self.cfg, snap)
            out = Outcome(
                snap,
                result,
                errors=dict(out.errors),
                steps=out.steps,
                passes=n,
                renamed=out.renamed,
                observed_ns=t_observed,
            )
            self._masters(out)
            if observed is not None:
                # a copy: this run goes on changing its own
                observed(replace(out, errors=dict(out.errors)))
            done = self._pass(out, drained)
            out.steps += done
            if snap.unstable:
                log.debug("links renamed while observed: %s; observing again", snap.unstable)
                continue  # not verified: a rename was in flight
            if done == 0:
                out.verified = True
                break
        self._write_claims(out.snap, out.result)
        kept = {k: e.kept for k, e in self.journal.all().items()}
        for i in self.integrations:
            self._guarded(i, "after_run", partial(i.after_run, out, kept))
        out.final = True
        return out

    def observe(self) -> Snapshot:
        return assemble(self.nl.dump(), self.sysfs, self.udev)

    def _masters(self, out: Outcome) -> None:
        for p in out.result.pairings:
            master = master_of(p.key, p.standby, out.snap)
            out.masters[p.key] = master.ifindex if master else None
            out.active[p.key] = self.backend.active(master) if master else None

    def _pass(self, out: Outcome, drained: Callable[[], AbstractSet[str]]) -> int:
        """Plan and apply every pair and every leaked master once; returns
        how many steps ran (0: nothing to do, the state is verified)."""
        snap, result = out.snap, out.result
        entries = self.journal.all()
        for gone in set(self.executor.mac_refused) - set(snap.links):
            del self.executor.mac_refused[gone]
        done = 0
        live: set[str] = set()
        reserved: set[str] = set()  # master names this pass gives out
        for pairing in result.pairings:
            live.add(pairing.key)
            entry = entries.get(pairing.key)
            known = {pairing.key: entry.standby_name} if entry is not None else None
            with self.pair_lock:
                done += self._plan_and_apply(out, pairing, entry, known, reserved, drained)
        done += self._undo_leaked(snap, live, entries, out.renamed)
        return done

    def _plan_and_apply(
        self,
        out: Outcome,
        pairing: Pairing,
        entry: Optional[Entry],
        known: Optional[dict[str, str]],
        reserved: set[str],
        drained: Callable[[], AbstractSet[str]],
    ) -> int:
        """One pair's plan, applied; how many steps ran."""
        snap = out.snap
        try:
            spec = spec_for(self.cfg, pairing, snap, known, reserved)
            reserved.add(spec.master_name)
            plan = plan_pair(
                self.cfg,
                spec,
                snap,
                drained=pairing.key in drained(),
                entry=entry,
                mac_refused=frozenset(self.executor.mac_refused),
            )
        except PlanRefused as e:
            out.errors[pairing.key] = str(e)
            return 0
        if not plan.steps:
            if entry is not None and _pair_complete(spec, snap):
                log.info("%s: verified; its journal entry is done", spec.master_name)
                self.journal.clear(pairing.key)
            out.errors.pop(pairing.key, None)
            return 0
        if not self._apply(pairing, spec, plan, snap, entry):
            out.errors[pairing.key] = self._last_error
            return 0  # do not loop on a hard failure
        out.errors.pop(pairing.key, None)
        if any(isinstance(st, Rename) and st.link == spec.standby for st in plan.steps):
            out.renamed.add(spec.orig_name)
        return len(plan.steps)

    _last_error = ""

    def _apply(
        self, pairing: Pairing, spec: PairSpec, plan: Plan, snap: Snapshot, entry: Optional[Entry]
    ) -> bool:
        touches_standby = any(
            isinstance(st, (Rename, Enslave)) and st.link == spec.standby for st in plan.steps
        )
        kept = dict(entry.kept) if entry is not None else {}
        if touches_standby:
            for i in self.integrations:
                data = self._guarded(i, "capture", partial(i.capture, spec, snap))
                if data is not None:
                    kept[i.name] = data
        # the journal first: nothing is changed before it is on disk
        try:
            self.journal.write(self._entry(spec, snap, entry, kept))
        except OSError as e:
            self._last_error = f"journal not written, nothing done: {e}"
            log.error("%s: %s", spec.master_name, self._last_error)
            return False
        if touches_standby:
            for i in self.integrations:
                self._guarded(i, "before_touch", partial(i.before_touch, spec, snap))

        def before_enslave(master: int, name: str) -> None:
            for i in self.integrations:
                data = kept.get(i.name) or {}
                self._guarded(i, "before_enslave", partial(i.before_enslave, spec, master, name, data))

        try:
            self.executor.run(plan, snap.links, before_enslave if self.integrations else None)
        except GuestfailError as e:
            log.error("%s: %s", spec.master_name, e)
            self._last_error = str(e)
            return False
        finally:
            self._mark_members(plan)
        return True

    def _entry(self, spec: PairSpec, snap: Snapshot, entry: Optional[Entry], kept: dict[str, Any]) -> Entry:
        sby = snap.links[spec.standby]
        master = master_of(spec.key, spec.standby, snap)
        if master is not None:
            creating = entry.creating if entry is not None else ""
        else:
            creating = spec.master_name if self.cfg.backend == "team" else naming.temp_name(sby.ifindex)
        t = now()
        base = entry or Entry(
            key=spec.key, op="pair", standby_name=spec.orig_name, mtu=spec.mtu, kind=self.cfg.backend, since=t
        )
        addresses = tuple(a for a in sby.addresses if movable(a))
        merged = base.merged(addresses, tuple(snap.routes_via(sby.ifindex)), t)
        primary_renamed: tuple[tuple[str, str], ...] = ()
        if spec.primary_name and spec.primary_altname:
            primary_renamed = ((spec.primary_name, spec.primary_altname),)
        return Entry(
            key=spec.key,
            op="pair",
            standby_name=base.standby_name or spec.orig_name,
            mtu=base.mtu or spec.mtu,
            addresses=merged.addresses,
            routes=merged.routes,
            master=spec.master_name,
            creating=creating,
            kind=self.cfg.backend,
            since=merged.since,
            kept=kept,
            renamed=tuple(dict.fromkeys((*base.renamed, *primary_renamed))),
        )

    def _undo_leaked(
        self, snap: Snapshot, live: set[str], entries: dict[str, Entry], renamed: set[str]
    ) -> int:
        """Masters that serve no pair are released like `guestfail release`
        does; a release that died after deleting its master is finished."""
        done = 0
        leaked = plan_leaked(snap, live)
        for master, steps in leaked:
            key = (master.marker or {}).get("key", "")
            log.warning("releasing %s: a master guestfail made that serves no pair", master.name)
            entry = release_entry(master, snap, now())
            if entry is not None:
                old = entries.get(key)
                if old is not None:
                    entry = entry.merged(old.addresses_now(), old.routes)
                self.journal.write(entry)
            done += len(steps)
            try:
                self.executor.run_steps(master.name, steps, snap.links)
                if entry is not None:
                    renamed.add(entry.standby_name)
            except GuestfailError as e:
                log.error("could not release %s: %s", master.name, e)
                done -= len(steps)
        gone_masters = {(m.marker or {}).get("key", "") for m, _ in leaked}
        present = {standby_key(x) for x in snap.links.values() if not x.kind}
        for key, entry in entries.items():
            if key in live or key in gone_masters:
                continue
            if key not in present:
                log.info("journal entry %s: its standby is gone; dropped", key)
                self.journal.clear(key)
                continue
            steps = plan_finish_release(entry, snap)
            if not steps:
                self.journal.clear(key)
                continue
            done += len(steps)
            try:
                self.executor.run_steps(entry.standby_name, steps, snap.links)
            except GuestfailError as e:
                log.error("could not give %s back: %s", entry.standby_name, e)
                done -= len(steps)
        return done

    # ------------------------------------------------------------ udev

    def _mark_members(self, plan: Plan) -> None:
        """udev re-reads a member after guestfail enslaved it, so the rules
        mark it (they look at its master's marker)."""
        for idx in (plan.spec.standby, plan.spec.primary):
            if idx is None:
                continue
            try:  # runs in a finally: must not hide the error that got there
                link = self.nl.get_link(idx)
                if link is not None:
                    self.sysfs.trigger_change(link.name)
            except (GuestfailError, OSError) as e:
                log.warning("udev not asked to mark member %d again: %s", idx, e)

    def _write_claims(self, snap: Snapshot, result: MatchResult) -> None:
        """Tell the udev rule which devices guestfail will take, so they are
        marked unmanaged in the very event that announces them."""
        try:
            slots = self.sysfs.pci_slots()
            below = self.sysfs.slot_bridges() if result.bridges else {}
            write_claims(self.state_dir / "claims", claims(self.cfg, snap, result, slots, below))
        except OSError as e:
            log.warning("cannot write udev claims: %s", e)

    # ------------------------------------------------------------ hooks

    @staticmethod
    def _guarded(integration: Integration, hook: str, call: Callable[[], T]) -> Optional[T]:
        """An integration's failure is logged; the pass goes on."""
        try:
            return call()
        except GuestfailError as e:
            log.warning("%s (%s): %s", integration.name, hook, e)
            return None


#: a reconciliation that left work undone is tried again after these delays (s)
RETRY_FIRST = 0.5
RETRY_MAX = 60.0


class Scheduler:
    """When the reconciler runs: at start, on every request (coalesced: a
    burst of requests gives one run), and, after a run that left work undone,
    again by itself with backoff (0.5 s doubling to 60 s) until one succeeds;
    `retry_in` says when, for `status`.  Runs happen on one thread of their
    own; each pass's observation and the final outcome go to `apply` on the
    event loop's thread."""

    def __init__(
        self,
        reconciler: Reconciler,
        apply: Callable[[Outcome], None],
        drained: Callable[[], AbstractSet[str]],
        retrying: Callable[[], None],
    ) -> None:
        self.reconciler = reconciler
        self.apply = apply
        self.drained = drained
        self.retrying = retrying
        self.runs = 0
        self.failures = 0  # runs in a row that left work undone
        self.retry_in: Optional[float] = None
        self._wanted = asyncio.Event()
        self._whys: list[str] = []
        self._done = asyncio.Event()
        self._retry: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Future[None]] = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="gf-reconcile")

    def request(self, why: str) -> None:
        self._whys.append(why)
        self._wanted.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def wait(self, after: int) -> None:
        """Until a run beyond the `after`-th has finished (checked and cleared
        without yielding: no finish falls between them)."""
        while self.runs <= after:
            self._done.clear()
            await self._done.wait()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._retry is not None:
            self._retry.cancel()
        self._thread.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()

        def observed(out: Outcome) -> None:
            # each pass's observation reaches the switch path at once: a pair
            # is switched as soon as it exists
            loop.call_soon_threadsafe(self.apply, out)

        while True:
            await self._wanted.wait()
            self._wanted.clear()
            whys, self._whys = self._whys, []
            log.debug("reconcile: %s", "; ".join(whys[:5]))
            try:
                out = await loop.run_in_executor(self._thread, self.reconciler.run, self.drained, observed)
            except Exception:
                log.exception("reconciliation failed")
                self._again("reconciliation failed")
            else:
                try:
                    self.apply(out)
                except Exception:  # a bug; the scheduler must outlive it
                    log.exception("taking the reconciliation's outcome failed")
                    self._again("taking the outcome failed")
                else:
                    if out.errors or not out.verified:
                        what = "; ".join(f"{k}: {e}" for k, e in sorted(out.errors.items())) or "not verified"
                        self._again(what)
                    else:
                        self.failures = 0
                        self.retry_in = None
                        if self._retry is not None:  # a run that was due is not needed any more
                            self._retry.cancel()
                            self._retry = None
            self.runs += 1
            self._done.set()

    def _again(self, why: str) -> None:
        self.failures += 1
        delay = min(RETRY_FIRST * 2 ** (self.failures - 1), RETRY_MAX)
        self.retry_in = delay
        if self._retry is not None:
            self._retry.cancel()
        log.warning("reconciliation left work undone (%s): retrying in %.1f s", why, delay)
        self._retry = asyncio.get_running_loop().call_later(
            delay, self.request, f"retry {self.failures} after: {why}"
        )
        self.retrying()
