"""The switch path: link event -> one decision -> set active -> confirm ->
record, with each pair's switch in flight as an explicit state machine.

    STEADY     the kernel's active member is the one the facts call for, or
               nothing can be done about it now
    SWITCHING  guestfail's "set active" request is with the kernel
    RETRY      the kernel refused (its miimon has not seen the member's link
               yet): a timer asks again one and a half miimon later, unless
               the bond reselects by itself first
    DRAINING   prepare-unplug's (or the attention button's) request is with
               the kernel

Every change of state goes through `Flight.go()` (guestfail.agent.flight), which checks it against
TRANSITIONS, logs `old -> new`, wakes whoever waits, and cancels the pair's
timer when the state that armed it is left (pyroute2's DHCP client keeps its
states the same way: dhcp/fsm.py and the `state` setter in dhcp/client.py).

`decide()` (guestfail.core.decision) runs once per event; after a request
returns it runs again only if another event came while it was in flight.
Announcements (gratuitous ARP, unsolicited NA) go out after the switch is
confirmed and recorded, never before the request.  All of it runs on the
event loop's thread; the requests themselves run on one dedicated thread with
its own netlink socket.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from guestfail.agent.executor import retrying
from guestfail.agent.flight import Flight, State
from guestfail.core.decision import Decision, decide
from guestfail.core.errors import GuestfailError, SystemRefused
from guestfail.core.interfaces import Backend
from guestfail.core.model import Link
from guestfail.core.records import MAC_FOLLOWS, PairRecord, Switch
from guestfail.system import packets as announce
from guestfail.system.linkevents import LinkEvent
from guestfail.system.netlink import NetlinkFailure, Rtnl

log = logging.getLogger(__name__)


def now_ns() -> int:
    return time.monotonic_ns()


#: the kernel refuses to make a member active until its miimon saw the link
WAIT_FOR_LINK = frozenset({errno.EINVAL, errno.ENODEV, errno.ENOENT})


class Switcher:
    def __init__(
        self,
        nl: Rtnl,
        backend: Backend,
        *,
        on_switch: Callable[[PairRecord, Switch], None],
        on_undrain: Callable[[PairRecord, str], None],
        reconcile: Callable[[str], None],
        announce_enabled: Callable[[], bool],
        retry_delay: Callable[[], float],
        pair_lock: Optional[threading.Lock] = None,
    ) -> None:
        self.nl = nl
        # the reconciliation's, held while it plans and changes a pair: a
        # drain waits for it, so a run that began before cannot undo it
        self.pair_lock = pair_lock or threading.Lock()
        self.backend = backend
        self.on_switch = on_switch
        self.on_undrain = on_undrain
        self.reconcile = reconcile
        self.announce_enabled = announce_enabled
        self.retry_delay = retry_delay
        self.flights: dict[str, Flight] = {}
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="gf-switch")
        self._tasks: set[asyncio.Future[None]] = set()

    def flight(self, rec: PairRecord) -> Flight:
        f = self.flights.get(rec.key)
        if f is None:
            f = self.flights[rec.key] = Flight(rec.key)
        return f

    def forget(self, key: str) -> None:
        f = self.flights.pop(key, None)
        if f is not None:
            for t in (f.timer, f.drain_timer):
                if t is not None:
                    t.cancel()

    def close(self) -> None:
        for key in list(self.flights):
            self.forget(key)
        self.thread.shutdown(wait=True)

    async def settle(self) -> None:
        """Until no request is out (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    # ------------------------------------------------------------ events

    def link_event(self, rec: PairRecord, ev: LinkEvent) -> bool:
        """A member's or the master's netlink event.  False if the pair's
        structure changed (a member left or went): reconcile."""
        link = ev.link
        if ev.deleted:
            if link.ifindex == rec.primary:
                rec.primary_carrier = False
                rec.primary_master = None
                self.evaluate(rec, ev.t_ns, f"{link.name} removed")
            return False
        if link.ifindex == rec.master:
            rec.master_name = link.name
            active = self.backend.active(link) if link.bond is not None else rec.active
            if active != rec.active:
                self.kernel_active(rec, active, ev.t_ns)
            return True
        carrier = link.lower_up and link.up
        if link.ifindex == rec.primary:
            joined = rec.master is not None and link.master == rec.master and not rec.primary_enslaved
            changed = carrier != rec.primary_carrier
            rec.primary_carrier = carrier
            rec.primary_master = link.master
            rec.primary_name = link.name
        else:
            joined = False
            changed = carrier != rec.standby_carrier
            rec.standby_carrier = carrier
            rec.standby_name = link.name
        if joined:
            why = f"{link.name} joined"
        elif changed:
            why = f"{link.name} {'got' if carrier else 'lost'} carrier"
        else:
            why = f"{link.name} changed"
        self.evaluate(rec, ev.t_ns, why)
        # someone took the member out of the master: put it back
        return rec.master is None or link.master == rec.master

    def evaluate(self, rec: PairRecord, t_ns: int, why: str) -> Decision:
        """Decide once; start a switch if the facts call for one."""
        d = decide(rec.facts())
        rec.decision = d
        f = self.flight(rec)
        if f.state in (State.SWITCHING, State.DRAINING):
            # decided again when the request returns (against what it did):
            # a switch then is this event's
            f.dirty = True
            f.pending_later(t_ns, why)
            return d
        if not d.switch or rec.master is None:
            # a setup error alone does not stop switching a bond that is there
            if f.state == State.RETRY and not d.switch:
                f.go(State.STEADY, "nothing to switch any more")
            if f.state == State.STEADY:
                f.clear()
            return d
        f.pending(t_ns, why)
        if f.state == State.RETRY:
            return d  # its timer asks again; the kernel may get there first
        self._start(rec, f, d.want_active)
        return d

    def kernel_active(self, rec: PairRecord, active: Optional[int], t_ns: int) -> None:
        """The bond reported its active member.  While guestfail's own
        request is out, that request's task records the outcome."""
        f = self.flight(rec)
        old = rec.active
        rec.active = active
        if active is not None and active not in rec.names():
            # a primary the reconciliation is enslaving right now: recorded
            # once it is known, as "joined"
            f.joining = (old, t_ns)
            return
        if f.state in (State.SWITCHING, State.DRAINING):
            if active is not None and active == f.target and f.kernel_ns is None:
                f.kernel_ns = t_ns  # the request's task records it, as the kernel's
            return
        if old == active:
            return
        latency = (t_ns - f.since_ns) / 1e6 if f.since_ns is not None else None
        self._record(rec, old, active, f.why or "the bond reselected", latency, "kernel")
        if f.state == State.RETRY:
            f.go(State.STEADY, "the kernel switched")
        f.clear()
        self._announce_later(rec)
        self.evaluate(rec, t_ns, "kernel switched")

    def primary_appeared(self, rec: PairRecord, primary: int, name: str, added_ns: Optional[int]) -> None:
        """A reconciliation enslaved a new primary: if the bond made it active
        meanwhile, that switch is recorded as the kernel's."""
        f = self.flight(rec)
        if f.joining is not None and rec.active == primary:
            old, _t = f.joining
            latency = (_t - added_ns) / 1e6 if added_ns is not None else None
            self._record(rec, old, primary, f"{name} joined", latency, "kernel")
        elif added_ns is not None and f.state == State.STEADY:
            f.since_ns, f.why = added_ns, f"{name} joined"
        f.joining = None

    # ------------------------------------------------------------ switching

    def _start(self, rec: PairRecord, f: Flight, target: int) -> None:
        f.go(State.SWITCHING, f.why)
        # now: the task may run after the kernel's next report
        f.frm, f.target, f.kernel_ns = rec.active, target, None
        self._spawn(rec, f, target)

    def _spawn(self, rec: PairRecord, f: Flight, target: int) -> None:
        task = asyncio.ensure_future(self._switch(rec, f, target))
        self._tasks.add(task)

        def done(t: asyncio.Future[None]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or t.exception() is None:
                return
            # a bug, not the kernel's answer (those are handled in _switch):
            # the pair must not stay SWITCHING, where no event can move it
            log.error("%s: the switch failed: %r", rec.master_name, t.exception())
            if self.flights.get(f.key) is f and f.state == State.SWITCHING:
                f.go(State.STEADY, "the switch failed")
                f.clear()
                self.reconcile(f"switch failed: {t.exception()}")

        task.add_done_callback(done)

    def _current(self, f: Flight) -> bool:
        """Is `f` still its pair's flight (not forgotten meanwhile)?"""
        return self.flights.get(f.key) is f

    async def _switch(self, rec: PairRecord, f: Flight, target: int) -> None:
        """Set `target` active, read the master back, record who made the
        switch: guestfail when its request did it, the kernel when the bond
        got there first (its miimon, or releasing a removed slave)."""
        loop = asyncio.get_running_loop()
        while True:
            frm, master = f.frm, rec.master
            assert master is not None
            names = rec.names()
            f.dirty = False
            if f.target != target:
                f.target, f.kernel_ns = target, None
            failure: Optional[GuestfailError] = None
            sent_ns: Optional[int] = None
            try:
                rec.active, sent_ns = await loop.run_in_executor(
                    self.thread,
                    self._set_active,
                    master,
                    names.get(master, ""),
                    target,
                    names.get(target, ""),
                )
            except (GuestfailError, OSError) as e:
                # the kernel's answer (NetlinkFailure), or teamd's (a D-Bus
                # error, no answer): the events kept rec.active current
                failure = e if isinstance(e, GuestfailError) else SystemRefused(f"{rec.master_name}: {e}")
            if not self._current(f):
                return  # the pair was forgotten meanwhile (its master went)
            t1 = now_ns()
            kernel_ns = f.kernel_ns
            f.target = None
            if rec.active == target:
                if frm != target:
                    # the kernel was first only if it reported the switch
                    # before the request went out: it reports the request's
                    # own switch too, often before the request's answer
                    kernel_first = kernel_ns is not None and (sent_ns is None or kernel_ns < sent_ns)
                    by = "kernel" if failure is not None or kernel_first else "guestfail"
                    t_done = kernel_ns if kernel_ns is not None else t1
                    t0 = f.since_ns or t_done
                    sent = (sent_ns - t0) / 1e6 if sent_ns is not None else None
                    self._record(rec, frm, target, f.why or "switch", (t_done - t0) / 1e6, by, sent)
                    self._announce_later(rec)
                f.next_switch()
            elif failure is not None:
                if isinstance(failure, NetlinkFailure) and failure.code in WAIT_FOR_LINK:
                    log.debug("%s", failure)
                    f.go(State.RETRY, str(failure))
                    f.arm(self.retry_delay(), lambda: self._retry(rec, f))
                else:
                    log.error("%s", failure)
                    f.go(State.STEADY, str(failure))
                    self.reconcile(f"switch failed: {failure}")
                return
            if not f.dirty:
                # done; if the kernel kept another member without refusing,
                # its own report is the next event (no request loop)
                f.go(State.STEADY, "switched" if rec.active == target else "the kernel kept another member")
                return
            # another event came while the request was out: decide again
            d = decide(rec.facts())
            rec.decision = d
            if not d.switch or rec.master is None:
                f.go(State.STEADY, "nothing more to switch")
                f.clear()
                return
            target = d.want_active
            f.frm = rec.active

    def _retry(self, rec: PairRecord, f: Flight) -> None:
        f.timer = None
        if f.state != State.RETRY or not self._current(f):
            return
        d = decide(rec.facts())
        rec.decision = d
        if not d.switch or rec.master is None:
            f.go(State.STEADY, "nothing to switch any more")
            f.clear()
            return
        f.go(State.SWITCHING, f"retry: {f.why}")
        f.frm, f.target, f.kernel_ns = rec.active, d.want_active, None
        self._spawn(rec, f, d.want_active)

    def _set_active(
        self, master: int, master_name: str, slave: int, slave_name: str
    ) -> tuple[Optional[int], int]:
        """(switch thread) The request, then one read of the master to
        confirm.  Returns the active member and when the request went out
        (the time from the event to it is guestfail's own share)."""
        sent_ns = now_ns()
        retrying(lambda: self.backend.set_active(master, master_name, slave, slave_name), attempts=3)
        link = self.nl.get_link(master)
        return (self.backend.active(link) if link is not None else None), sent_ns

    def _record(
        self,
        rec: PairRecord,
        frm: Optional[int],
        to: Optional[int],
        why: str,
        latency: Optional[float],
        by: str,
        sent: Optional[float] = None,
    ) -> None:
        sw = Switch(time.time(), rec.name_of(frm), rec.name_of(to), why, latency, by, sent)
        rec.history.append(sw)
        rec.switches += 1
        rec.decision = decide(rec.facts())
        lat = f" in {latency:.2f} ms" if latency is not None else ""
        if sent is not None:
            lat += f", request sent at {sent:.2f} ms"
        log.info(
            "%s: active %s -> %s (%s, by %s%s)", rec.master_name, sw.frm or "-", sw.to or "-", why, by, lat
        )
        self.on_switch(rec, sw)

    # ------------------------------------------------------------ announcements

    def _announce_later(self, rec: PairRecord) -> None:
        """Gratuitous ARP and unsolicited NA for the master's addresses out of
        its new active member: queued behind the switch, not before it."""
        # a master whose MAC follows its active member must announce the new
        # MAC, whatever agent.announce says
        if rec.master is None or not (self.announce_enabled() or rec.mac == MAC_FOLLOWS):
            return
        asyncio.get_running_loop().run_in_executor(self.thread, self._announce, rec.master)

    def _announce(self, master: int) -> None:
        try:
            # read now, after the switch: an address that came after pairing
            # (a DHCP lease) is announced too; the MAC may just have changed
            # (fail_over_mac=active)
            addresses = self.nl.addresses(master)
            link: Optional[Link] = self.nl.get_link(master) if addresses else None
            if link is not None:
                announce.send(master, link.mac, addresses)
        except (OSError, GuestfailError) as e:
            log.warning("announcement on %d not sent: %s", master, e)

    # ------------------------------------------------------------ drain

    async def drain(
        self, rec: PairRecord, timeout: float, expires: float = 0, why: str = "prepare-unplug"
    ) -> None:
        """prepare-unplug, or an ordered removal (`why` says which: the
        attention button): the standby carries the traffic and the primary
        is no longer the bond's preferred member; returns once the kernel
        confirms it.  A failure or a timeout is undone (after a timeout,
        once the request is back from the kernel); a drain whose VF is still
        there `expires` seconds later is undone too (0: never)."""
        f = self.flight(rec)
        if f.state in (State.SWITCHING, State.DRAINING):
            raise SystemRefused(f"{rec.master_name}: a switch is in flight; try again")
        master, sby = rec.master, rec.standby
        assert master is not None and sby is not None
        names = rec.names()
        frm = rec.active
        t0 = now_ns()
        f.since_ns, f.why = t0, why
        f.go(State.DRAINING, why)
        rec.drained = True
        loop = asyncio.get_running_loop()

        def run() -> tuple[Optional[int], int]:
            with self.pair_lock:
                self.backend.set_primary(master, names.get(master, ""), None, "")
                return self._set_active(master, names.get(master, ""), sby, names.get(sby, ""))

        fut = loop.run_in_executor(self.thread, run)
        done, _ = await asyncio.wait({fut}, timeout=timeout)
        if not done:

            def late(answer: asyncio.Future[tuple[Optional[int], int]]) -> None:
                f.go(State.STEADY, f"late answer to {why}")
                if not answer.cancelled() and answer.exception() is None:
                    confirmed, sent_ns = answer.result()
                    rec.active = confirmed
                    if confirmed == sby and frm != sby:  # it did switch, late: on record before the way back
                        lat = (now_ns() - t0) / 1e6
                        self._record(rec, frm, sby, why, lat, "guestfail", (sent_ns - t0) / 1e6)
                self.undrain(rec, f"{why} timed out after {timeout:g} s")

            fut.add_done_callback(late)
            raise SystemRefused(
                f"{rec.master_name}: the kernel did not confirm the switch to "
                f"{rec.name_of(sby)} within {timeout:g} s; the drain is undone"
            )
        f.go(State.STEADY, f"{why} answered")
        try:
            confirmed, sent_ns = fut.result()
        except GuestfailError as e:
            self.undrain(rec, f"{why} failed: {e}")
            raise
        except OSError as e:
            self.undrain(rec, f"{why} failed: {e}")
            raise SystemRefused(f"{rec.master_name}: {why} failed: {e}") from e
        rec.active = confirmed
        if confirmed != sby:
            self.undrain(rec, f"the kernel kept {rec.name_of(confirmed)} active")
            raise SystemRefused(f"{rec.master_name}: the kernel kept {rec.name_of(confirmed)} active")
        if frm != sby:
            self._record(rec, frm, sby, why, (now_ns() - t0) / 1e6, "guestfail", (sent_ns - t0) / 1e6)
            self._announce_later(rec)
        f.clear()
        rec.decision = decide(rec.facts())
        if f.dirty:  # something happened while the drain was out
            f.dirty = False
            self.evaluate(rec, now_ns(), f"after {why}")
        if f.drain_timer is not None:  # a drain again: its deadline counts from now
            f.drain_timer.cancel()
            f.drain_timer = None
        if expires > 0:
            not_removed = f"{rec.primary_name or 'the VF'} was not removed within {expires:g} s"
            f.drain_timer = asyncio.get_running_loop().call_later(expires, self.undrain, rec, not_removed)

    def undrain(self, rec: PairRecord, why: str, quiet: bool = False) -> None:
        """The pair goes back to its primary (the daemon hears of it, unless
        `quiet`: then the caller takes care)."""
        f = self.flight(rec)
        if f.drain_timer is not None:
            f.drain_timer.cancel()
            f.drain_timer = None
        if not rec.drained:
            return
        if not quiet:
            log.warning("%s: %s; the drain is undone", rec.master_name, why)
        rec.drained = False
        rec.decision = decide(rec.facts())
        if not quiet:
            self.on_undrain(rec, why)

    def drain_over(self, rec: PairRecord) -> None:
        """The drained primary is gone: the drain did its job."""
        self.undrain(rec, "the VF was removed", quiet=True)
