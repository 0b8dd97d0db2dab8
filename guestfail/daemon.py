"""`guestfail run`: the event loop.

Two kinds of work, kept apart so a long rebuild never delays a switch:

* the switch path, on the loop thread: a link event for a member (carrier
  lost, carrier back, gone) or the master (the bond switched by itself) is
  decided on at once by `pairstate.decide`; the new active member is set by a
  dedicated netlink thread and read back from the kernel, and the time from
  the event's arrival to that confirmation is recorded;
* reconciliation, on its own thread: observe -> match -> plan -> apply ->
  observe again, until the plans are empty (verified) or the attempts run out.
  It runs at start, on udev events (a device was added, renamed, removed), on
  link deletions, and after any lost event (netlink or udev overrun), and is
  coalesced: a burst of events gives one run.

No polling: the loop sleeps until netlink, udev, D-Bus or a signal wakes it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail import __version__, announce, ifupdown, inotify, networkd, processes
from guestfail import config as config_mod
from guestfail import nm as nm_mod
from guestfail import state as state_mod
from guestfail.apply import BondBackend, Executor, retrying
from guestfail.config import Config
from guestfail.dbus_api import BusClient, BusError, NameWatcher
from guestfail.discover import observe
from guestfail.errors import GuestfailError, NotFound, SystemRefused
from guestfail.match import MatchResult, claims, is_ours, match
from guestfail.model import Address, Link, Snapshot
from guestfail.netlink import EventsLost, LinkEvent, LinkMonitor, Netlink, NetlinkFailure
from guestfail.nm import NetworkManager
from guestfail.notify import notify
from guestfail.pairstate import Facts, decide
from guestfail.plan import (
    DeleteMaster,
    Enslave,
    Plan,
    PlanRefused,
    Release,
    Rename,
    Step,
    leaked_masters,
    master_of,
    plan_pair,
    spec_for,
)
from guestfail.state import NAMES_FILE, STATE_FILE, PairRecord, Switch, document, match_sections, write_atomic
from guestfail.sysfs import Sysfs
from guestfail.udev import Udev, UdevLost, write_claims

log = logging.getLogger(__name__)

MAX_PASSES = 4


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass
class Outcome:
    """What one reconciliation found and did (built on the worker thread,
    applied to the records on the loop thread)."""

    snap: Snapshot
    result: MatchResult
    masters: dict[str, Optional[int]] = field(default_factory=dict)  # key -> master ifindex
    active: dict[str, Optional[int]] = field(default_factory=dict)  # key -> kernel's active member
    pids: dict[str, int] = field(default_factory=dict)  # team master -> its teamd
    errors: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    passes: int = 0
    verified: bool = False


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        sysfs: Optional[Sysfs] = None,
        use_udev: bool = True,
        use_dbus: bool = True,
    ) -> None:
        self.cfg = cfg
        self.sysfs = sysfs or Sysfs()
        self.use_udev = use_udev
        self.use_dbus = use_dbus
        self.state_dir = Path(cfg.state_dir)
        self.pairs: dict[str, PairRecord] = {}
        self.by_member: dict[int, PairRecord] = {}
        self.sections: dict[str, Any] = {}
        self.started = time.time()
        self.reconciles = 0
        self.resyncs = 0
        self.last_outcome: Optional[Outcome] = None
        self._dirty = asyncio.Event()
        self._dirty_why: list[str] = []
        self._stop = asyncio.Event()
        self._switching: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._retry_timers: dict[str, asyncio.TimerHandle] = {}
        self._added: dict[int, int] = {}  # ifindex -> when udev announced it (monotonic ns)
        self._addresses: dict[int, tuple[Address, ...]] = {}  # master -> its addresses (last reconciliation)
        self._watched: dict[str, tuple[int, int]] = {}  # team master -> (teamd pid, pidfd)
        # NetworkManager (slow thread only): masters whose profile is in
        # place, and the standbys' profiles captured before pairing
        # the standbys' names before guestfail renamed them, by pair key
        names = state_mod.read(self.state_dir / NAMES_FILE) or {}
        self._names: dict[str, str] = {str(k): str(v) for k, v in dict(names.get("names", {})).items()}
        self._nm: Optional[NetworkManager] = None
        self._nm_done: set[str] = set()
        self._nm_handback: set[str] = set()  # pair keys whose standby NetworkManager let go
        self._nm_ports_checked = False  # every paired standby's port, once per NetworkManager start
        self._nm_captured: dict[str, dict[str, Any]] = {}
        self._names_pending: set[str] = set()  # names moved before the system bus was up
        self._nm_restarted = False
        self._watcher: Optional[NameWatcher] = None
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._reconciled = asyncio.Event()
        # one thread per kind of work, each with its own netlink socket
        self._fast = ThreadPoolExecutor(1, thread_name_prefix="gf-switch")
        self._slow = ThreadPoolExecutor(1, thread_name_prefix="gf-reconcile")
        self._fast_nl = Netlink()
        self._slow_nl = Netlink()
        self._fast_backend = self._make_backend(self._fast_nl)
        self._slow_backend = self._make_backend(self._slow_nl)
        self._executor = Executor(self._slow_nl, self._slow_backend, ingress=cfg.ingress == "unicast")
        self._udev: Optional[Udev] = None
        self._monitor: Optional[LinkMonitor] = None
        self.dbus: Any = None

    def _make_backend(self, nl: Netlink) -> Any:
        if self.cfg.backend == "team":
            from guestfail.team import TeamBackend

            return TeamBackend(self.cfg, nl, self.state_dir)
        return BondBackend(self.cfg, nl, self.sysfs)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        # Subscribe before the first dump, so nothing falls between them.
        self._monitor = LinkMonitor()
        loop.add_reader(self._monitor.fileno(), self._on_netlink)
        if self.use_udev:
            self._udev = Udev()
            loop.add_reader(self._udev.start_monitor(), self._on_udev)
        if self.use_dbus:
            await self._start_dbus()
        if self._nm_wanted():
            await self._watch_networkmanager()
        if (self.use_dbus and self.dbus is None) or (self._nm_wanted() and self._watcher is None):
            # hook: at boot the daemon runs before the system bus exists
            self._tasks.add(asyncio.ensure_future(self._when_bus_appears()))
        worker = asyncio.ensure_future(self._reconcile_loop())
        self.request_reconcile("start")
        await self._wait_reconciled()
        notify(f"READY=1\nSTATUS={self._status_line()}")
        log.info("guestfail %s ready: %s", __version__, self._status_line())
        await self._stop.wait()
        notify("STOPPING=1")
        log.info("stopping; masters stay, the kernel keeps failing over without the daemon")
        worker.cancel()
        for t in self._retry_timers.values():
            t.cancel()
        loop.remove_reader(self._monitor.fileno())
        self._monitor.close()
        if self._udev is not None and self._udev.monitor is not None:
            loop.remove_reader(self._udev.monitor.fileno())
        if self.dbus is not None:
            await self.dbus.stop()
        if self._watcher is not None:
            self._watcher.stop()
        self._fast.shutdown(wait=True)
        self._slow.shutdown(wait=True)
        self._fast_nl.close()
        self._slow_nl.close()
        for backend in (self._fast_backend, self._slow_backend):
            close = getattr(backend, "close", None)
            if close is not None:
                close()
        return 0

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP (systemctl reload): read the configuration again.  A bad
        file is reported and the running configuration kept."""
        path = None if self.cfg.source in ("", "(defaults)") else Path(self.cfg.source)
        try:
            new = config_mod.load(path)
        except GuestfailError as e:
            log.error("%s; keeping the running configuration", e)
            return
        if (new.backend, new.state_dir) != (self.cfg.backend, self.cfg.state_dir):
            log.error("agent.backend and agent.state_dir change only with a restart; configuration kept")
            return
        self.cfg = new
        for backend in (self._fast_backend, self._slow_backend):
            backend.cfg = new
        log.info("configuration reloaded from %s", new.source)
        self.request_reconcile("configuration reloaded")

    async def _wait_reconciled(self) -> None:
        await self._reconciled.wait()

    async def _when_bus_appears(self) -> None:
        """Connect what needs the system bus once its socket exists, and
        reconcile (the team backend's teamd needs the bus too)."""
        path = inotify.system_bus_socket()
        if path is not None:
            await inotify.wait_for_path(path)
        log.info("the system bus is up")
        if self.use_dbus and self.dbus is None:
            await self._start_dbus()
        if self._nm_wanted() and self._watcher is None:
            await self._watch_networkmanager()
        self.request_reconcile("system bus up")

    async def _start_dbus(self) -> None:
        if not inotify.system_bus_up():
            log.info("no system bus yet: the D-Bus API comes up with it")
            return
        try:
            from guestfail.dbus_api import DBusService

            self.dbus = DBusService(self)
            await self.dbus.start()
        except Exception as e:  # D-Bus is optional: the daemon still pairs and switches
            log.warning("no D-Bus API: %s", e)
            self.dbus = None

    def _nm_wanted(self) -> bool:
        # a team profile in NetworkManager would start a teamd of its own
        return self.cfg.networkmanager == "auto" and self.cfg.backend == "bond"

    async def _watch_networkmanager(self) -> None:
        def changed(name: str, owned: bool) -> None:
            self._nm_restarted = True
            if owned:
                self.request_reconcile("NetworkManager started")

        try:
            self._watcher = NameWatcher([nm_mod.NM], changed)
            await self._watcher.start()
        except Exception as e:  # no system bus: NetworkManager cannot run either
            log.debug("not watching for NetworkManager: %s", e)
            self._watcher = None

    def _networkmanager(self) -> Optional[NetworkManager]:
        """The NetworkManager client, if NetworkManager runs (slow thread)."""
        if not self._nm_wanted():
            return None
        if self._nm is None:
            self._nm = NetworkManager(BusClient())
        if not self._nm.running():
            return None
        if self._nm_restarted:
            self._nm_restarted = False
            self._nm_done.clear()
            self._nm_ports_checked = False
        return self._nm

    def _nm_take_over(self, nm: NetworkManager, key: str, master: str, spec: Any) -> None:
        """NetworkManager takes the master over while it is still empty: it
        detaches the members of a bond it takes over later."""
        if master in self._nm_done:
            return
        options = {
            "miimon": str(self.cfg.bond.miimon),
            "fail_over_mac": spec.fail_over_mac,
            "primary_reselect": "always",
            "num_grat_arp": str(self.cfg.bond.num_peer_notif),
        }
        if spec.primary_name:
            options["primary"] = spec.primary_name
        try:
            nm.ensure_master_profile(master, self._nm_captured.get(key), spec.orig_name, spec.mac, options)
            self._nm_done.add(master)
        except BusError as e:
            log.warning("NetworkManager: no profile for %s: %s", master, e)

    def _nm_ports(self, nm: NetworkManager, out: Outcome) -> None:
        """Hand back the standbys guestfail took from NetworkManager, as bond
        ports under guestfail's port profile; when NetworkManager (re)starts,
        every paired standby (it reads the member's udev mark then)."""
        everyone = not self._nm_ports_checked
        self._nm_ports_checked = True
        for p in out.result.pairings:
            taken = p.key in self._nm_handback
            if not (taken or everyone):
                continue
            self._nm_handback.discard(p.key)
            sby = out.snap.get(p.standby)
            master = out.snap.get(out.masters.get(p.key))
            if sby is None:
                continue
            try:
                if master is None or sby.master != master.ifindex:
                    if taken and nm.set_managed(sby.name, True):
                        log.info("NetworkManager: %s handed back, not paired", sby.name)
                    continue
                if nm.set_managed(sby.name, True):
                    log.info("NetworkManager: %s handed back as a port of %s", sby.name, master.name)
                nm.ensure_port(master.name, sby.name)
            except BusError as e:
                log.warning("NetworkManager: %s not handed back: %s", sby.name, e)

    def _nm_sync(self, nm: NetworkManager, out: Outcome) -> None:
        """Every master gets its NetworkManager profile, then every standby
        its port profile (see guestfail.nm)."""
        for p in out.result.pairings:
            master = out.snap.get(out.masters.get(p.key))
            if master is None or master.name in self._nm_done or master.bond is None:
                continue
            sby = out.snap.links[p.standby]
            orig = (master.marker or {}).get("name", sby.name)
            b = master.bond
            options = {
                "miimon": str(b.miimon),
                "fail_over_mac": ("none", "active", "follow")[b.fail_over_mac]
                if b.fail_over_mac < 3
                else "none",
                "primary_reselect": "always",
                "num_grat_arp": str(b.num_peer_notif),
            }
            prim = out.snap.get(b.primary)
            if prim is not None:
                options["primary"] = prim.name
            try:
                nm.ensure_master_profile(master.name, self._nm_captured.get(p.key), orig, sby.hw_mac, options)
                self._nm_done.add(master.name)
            except BusError as e:
                log.warning("NetworkManager: no profile for %s: %s", master.name, e)
        self._nm_ports(nm, out)

    def subscribe(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """fn(signal_name, payload) for PairCreated, PairRemoved, ActiveChanged, Refused."""
        self._listeners.append(fn)

    def _emit(self, name: str, payload: dict[str, Any]) -> None:
        for fn in self._listeners:
            try:
                fn(name, payload)
            except Exception:  # a listener must never break the switch path
                log.exception("listener failed on %s", name)

    # ------------------------------------------------------------ events

    def _on_netlink(self) -> None:
        assert self._monitor is not None
        try:
            events = self._monitor.read(now_ns)
        except EventsLost as e:
            self.resyncs += 1
            self.request_reconcile(str(e))
            return
        for ev in events:
            self._link_event(ev)

    def _on_udev(self) -> None:
        assert self._udev is not None
        try:
            events = self._udev.read(now_ns)
        except UdevLost as e:
            self.resyncs += 1
            self.request_reconcile(str(e))
            return
        for ev in events:
            if ev.action == "add" and ev.ifindex:
                self._added[ev.ifindex] = ev.t_ns
                if len(self._added) > 256:  # bounded: entries are taken when a primary joins
                    self._added.pop(next(iter(self._added)))
            if ev.action in ("add", "move", "remove", "change", "bind"):
                rec = self.by_member.get(ev.ifindex)
                if ev.action == "change" and rec is not None:
                    continue  # our own trigger after enslaving: nothing new
                self.request_reconcile(f"udev {ev.action} {ev.name}")

    def _link_event(self, ev: LinkEvent) -> None:
        link = ev.link
        rec = self.by_member.get(link.ifindex)
        if rec is None:
            if ev.deleted:
                self.request_reconcile(f"{link.name} deleted")
            return
        if ev.deleted:
            if link.ifindex == rec.primary:
                rec.primary_carrier = False
                rec.primary_enslaved = False
                self._evaluate(rec, ev.t_ns, f"{link.name} removed")
            self.request_reconcile(f"{link.name} deleted")
            return
        if link.ifindex == rec.master:
            rec.master_name = link.name
            if link.bond is not None and link.bond.active_slave != rec.active:
                self._kernel_active(rec, link.bond.active_slave, ev.t_ns)
            return
        if rec.master is not None and link.master != rec.master:
            # someone took the member out of the master (a network manager
            # taking the master over): put it back
            self.request_reconcile(f"{link.name} left {rec.master_name}")
        carrier = link.lower_up and link.up
        if link.ifindex == rec.primary:
            joined = link.master == rec.master and not rec.primary_enslaved
            changed = carrier != rec.primary_carrier
            rec.primary_carrier = carrier
            rec.primary_enslaved = link.master == rec.master
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
        self._evaluate(rec, ev.t_ns, why)

    # ------------------------------------------------------------ switching

    def _facts(self, rec: PairRecord) -> Facts:
        return Facts(
            standby=rec.standby or 0,
            standby_carrier=rec.standby_carrier,
            primary=rec.primary,
            primary_enslaved=rec.primary_enslaved,
            primary_carrier=rec.primary_carrier,
            drained=rec.drained,
            active=rec.active,
            error=rec.error,
        )

    def _evaluate(self, rec: PairRecord, t_ns: int, why: str) -> None:
        d = decide(self._facts(rec))
        rec.decision = d
        if not d.switch:
            if rec.key not in self._switching:  # a switch in flight keeps its event time
                rec.pending_since_ns = None
                rec.pending_why = ""
            return
        if rec.master is None or rec.error:
            return
        if rec.pending_since_ns is None:
            rec.pending_since_ns = t_ns
            rec.pending_why = why
        if rec.key not in self._switching:
            self._switching.add(rec.key)
            task = asyncio.ensure_future(self._switch(rec))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _kernel_active(self, rec: PairRecord, active: Optional[int], t_ns: int) -> None:
        """The bond reported its active member (netlink).  While guestfail's
        own request is in flight the switch task records the outcome."""
        old = rec.active
        rec.active = active
        if active is not None and active not in rec.names():
            # a primary the reconciliation is enslaving right now: recorded
            # once it is known, as "joined"
            rec.joining = (old, t_ns)
            return
        if rec.in_call or old == active:
            return
        latency = (t_ns - rec.pending_since_ns) / 1e6 if rec.pending_since_ns is not None else None
        why = rec.pending_why or "the bond reselected"
        if rec.master is not None:
            asyncio.get_running_loop().run_in_executor(self._fast, self._announce_sync, rec.master)
        self._record(rec, old, active, why, latency, "kernel")
        rec.pending_since_ns = None
        rec.pending_why = ""
        self._evaluate(rec, t_ns, "kernel switched")

    def _record(
        self,
        rec: PairRecord,
        frm: Optional[int],
        to: Optional[int],
        why: str,
        latency: Optional[float],
        by: str,
    ) -> None:
        sw = Switch(time.time(), rec.name_of(frm), rec.name_of(to), why, latency, by)
        rec.history.append(sw)
        rec.switches += 1
        rec.decision = decide(self._facts(rec))
        lat = f" in {latency:.2f} ms" if latency is not None else ""
        log.info(
            "%s: active %s -> %s (%s, by %s%s)",
            rec.master_name,
            sw.frm or "-",
            sw.to or "-",
            why,
            by,
            lat,
        )
        self._emit("ActiveChanged", {"pair": rec.master_name, **sw.to_json()})
        self._write_state()

    async def _switch(self, rec: PairRecord) -> None:
        """Set the member the facts call for, and record who made the switch:
        guestfail when its request did it, the kernel when the bond got there
        first (its miimon, or releasing a removed slave)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                d = decide(self._facts(rec))
                rec.decision = d
                if not d.switch or rec.master is None or rec.error:
                    return
                target, master, frm = d.want_active, rec.master, rec.active
                names = rec.names()
                failure: Optional[NetlinkFailure] = None
                rec.in_call = True
                try:
                    rec.active = await loop.run_in_executor(
                        self._fast,
                        self._set_active_sync,
                        master,
                        names.get(master, ""),
                        target,
                        names.get(target, ""),
                    )
                except NetlinkFailure as e:
                    failure = e  # the kernel's events kept rec.active current meanwhile
                finally:
                    rec.in_call = False
                t1 = now_ns()
                if rec.active == target:
                    if frm != target:
                        t0 = rec.pending_since_ns or t1
                        by = "guestfail" if failure is None else "kernel"
                        self._record(rec, frm, target, rec.pending_why or d.why, (t1 - t0) / 1e6, by)
                    rec.pending_since_ns = None
                    rec.pending_why = ""
                elif failure is not None:
                    if failure.code in (errno.EINVAL, errno.ENODEV, errno.ENOENT):
                        # e.g. the bond has not seen the primary's link yet
                        # (miimon): its own reselection follows, else a retry
                        # one miimon later.
                        log.debug("%s", failure)
                        self._retry_later(rec)
                    else:
                        log.error("%s", failure)
                        self.request_reconcile(f"switch failed: {failure}")
                    return
        finally:
            self._switching.discard(rec.key)

    def _set_active_sync(self, master: int, master_name: str, slave: int, slave_name: str) -> Optional[int]:
        retrying(
            lambda: self._fast_backend.set_active(master, master_name, slave, slave_name),
            attempts=3,
        )
        # one read of the master confirms the switch and gives the MAC the
        # announcements carry (with fail_over_mac=active it just changed)
        link = self._fast_nl.get_link(master)
        active: Optional[int] = self._fast_backend.active(link) if link is not None else None
        if link is not None and active == slave:
            self._announce_sync(master, link)
        return active

    def _announce_sync(self, master: int, link: Optional[Link] = None) -> None:
        """Right after a switch: gratuitous ARP and unsolicited NA for the
        master's addresses, out of its new active member."""
        if not self.cfg.announce:
            return
        addresses = self._addresses.get(master, ())
        if not addresses:
            return
        try:
            if link is None:
                link = self._fast_nl.get_link(master)
            if link is not None:
                announce.send(master, link.mac, addresses)
        except (OSError, GuestfailError) as e:
            log.warning("announcement on %d not sent: %s", master, e)

    def _retry_later(self, rec: PairRecord) -> None:
        if rec.key in self._retry_timers:
            return
        delay = max(self.cfg.bond.miimon, 50) / 1000 * 1.5

        def fire() -> None:
            self._retry_timers.pop(rec.key, None)
            if rec.pending_since_ns is not None:
                self._evaluate(rec, rec.pending_since_ns, rec.pending_why)

        self._retry_timers[rec.key] = asyncio.get_running_loop().call_later(delay, fire)

    # ------------------------------------------------------------ reconciliation

    def request_reconcile(self, why: str) -> None:
        self._dirty_why.append(why)
        self._dirty.set()

    async def _reconcile_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            whys, self._dirty_why = self._dirty_why, []
            log.debug("reconcile: %s", "; ".join(whys[:5]))
            drained = {k for k, r in self.pairs.items() if r.drained}
            try:
                out = await loop.run_in_executor(self._slow, self._reconcile_sync, drained)
            except Exception:
                log.exception("reconciliation failed; retrying on the next event")
                self._reconciled.set()
                continue
            self.reconciles += 1
            self._apply_outcome(out)
            self._reconciled.set()

    def _reconcile_sync(self, drained: set[str]) -> Outcome:
        """observe -> match -> plan -> apply, until a pass changes nothing."""
        udev = self._udev if self.use_udev else None
        nm = self._networkmanager()
        out = Outcome(Snapshot(), MatchResult())
        renamed: set[str] = set()  # standbys' names a master took in this run
        for n in range(1, MAX_PASSES + 1):
            snap = observe(self._slow_nl, self.sysfs, udev)
            result = match(self.cfg, snap)
            out.snap, out.result, out.passes = snap, result, n
            done = 0
            live = set()
            for pairing in result.pairings:
                live.add(pairing.key)
                try:
                    spec = spec_for(self.cfg, pairing, snap, self._names)
                    plan = plan_pair(self.cfg, spec, snap, drained=pairing.key in drained)
                except PlanRefused as e:
                    out.errors[pairing.key] = str(e)
                    continue
                if not plan.steps:
                    continue
                if self._names.get(pairing.key) != spec.orig_name:
                    # before anything is renamed: the standby's own name must
                    # survive a crash at any step
                    self._names[pairing.key] = spec.orig_name
                    self._save_names()
                if nm is not None and any(
                    isinstance(st, (Rename, Enslave)) and st.link == spec.standby for st in plan.steps
                ):
                    # what NetworkManager applied to the standby, before it goes
                    sby_name = snap.links[spec.standby].name
                    captured = nm.applied(sby_name)
                    if captured is not None:
                        self._nm_captured[pairing.key] = captured
                    # NetworkManager lets go of the standby before guestfail
                    # touches it, and finds it again as a port (see guestfail.nm)
                    try:
                        if nm.set_managed(sby_name, False):
                            self._nm_handback.add(pairing.key)
                    except BusError as e:
                        log.warning("NetworkManager: %s not handed over: %s", sby_name, e)
                done += len(plan.steps)
                hook = None
                if nm is not None:

                    def hook(master: int, name: str, p: Any = pairing, sp: Any = spec) -> None:
                        self._nm_take_over(nm, p.key, name, sp)

                try:
                    self._executor.run(plan, snap.links, hook)
                    out.errors.pop(pairing.key, None)
                    if any(isinstance(st, Rename) and st.link == spec.standby for st in plan.steps):
                        renamed.add(spec.orig_name)
                except GuestfailError as e:
                    log.error("%s: %s", spec.master_name, e)
                    out.errors[pairing.key] = str(e)
                    done -= len(plan.steps)  # do not loop on a hard failure
                self._mark_members(plan)
            for m in leaked_masters(snap, live):
                done += 1
                self._delete_leaked(m, snap)
            out.steps += done
            if done == 0:
                out.verified = True
                break
        self._write_claims(out.snap, out.result)
        if renamed or self._names_pending:
            self._names_moved(renamed | self._names_pending, out.snap)
        masters = []
        for p in out.result.pairings:
            master = master_of(p.key, p.standby, out.snap)
            out.masters[p.key] = master.ifindex if master else None
            if master is not None and self.cfg.backend == "team":
                masters.append(master)
                try:
                    note = self._slow_backend.check(master, out.snap.slaves_of(master.ifindex), p.primary)
                except GuestfailError as e:
                    out.errors[p.key] = str(e)
                    note = None
                if note:
                    log.warning("%s", note)
            out.active[p.key] = self._slow_backend.active(master) if master else None
        if masters:
            out.pids = self._slow_backend.pids(masters)
        if nm is not None:
            self._nm_sync(nm, out)
        return out

    def _names_moved(self, names: set[str], snap: Snapshot) -> None:
        """Hook (slow thread), after a pass gave standbys' names to masters:
        the network configuration that named the standby applies to the
        master (systemd-networkd's .network files, see guestfail.networkd),
        and the clients bound to a link by its name follow it (ifupdown's
        dhclient, see guestfail.ifupdown)."""
        now = {link.name: link for link in snap.links.values() if link.name in names}
        if networkd.ensure_dropins({n: link.mac for n, link in now.items()}):
            networkd.reload(BusClient)
        if not inotify.system_bus_up():
            # systemd is asked over D-Bus, which is not up yet at boot (the
            # daemon runs before network-pre.target): again once it is
            self._names_pending = set(now)
            return
        self._names_pending = set()
        for line in ifupdown.follow({n: link.ifindex for n, link in now.items()}, BusClient):
            log.info("%s", line)

    def _save_names(self) -> None:
        try:
            write_atomic(self.state_dir / NAMES_FILE, {"schema": 1, "names": self._names})
        except OSError as e:
            log.warning("cannot write %s: %s", self.state_dir / NAMES_FILE, e)

    def _mark_members(self, plan: Plan) -> None:
        """udev re-reads a member after guestfail enslaved it, so the rules
        mark it (they look at its master's marker)."""
        names = []
        for idx in (plan.spec.standby, plan.spec.primary):
            if idx is not None:
                link = self._slow_nl.get_link(idx)
                if link is not None:
                    names.append(link.name)
        for name in names:
            self.sysfs.trigger_change(name)

    def _delete_leaked(self, m: Link, snap: Snapshot) -> None:
        log.warning("deleting %s: a master guestfail made that serves no pair", m.name)
        steps: list[Step] = [Release(s.ifindex) for s in snap.slaves_of(m.ifindex)]
        steps.append(DeleteMaster(m.ifindex))
        try:
            self._executor.run_steps(m.name, steps, snap.links)
        except GuestfailError as e:
            log.error("could not delete %s: %s", m.name, e)

    def _write_claims(self, snap: Snapshot, result: MatchResult) -> None:
        """Tell the udev rule which devices guestfail will take, so they are
        marked unmanaged in the very event that announces them."""
        try:
            write_claims(self.state_dir / "claims", claims(self.cfg, snap, result, self.sysfs.pci_slots()))
        except OSError as e:
            log.warning("cannot write udev claims: %s", e)

    def _apply_outcome(self, out: Outcome) -> None:
        snap, result = out.snap, out.result
        self.last_outcome = out
        old_keys = set(self.pairs)
        seen = set()
        for p in result.pairings:
            seen.add(p.key)
            rec = self.pairs.get(p.key)
            if rec is None:
                rec = self.pairs[p.key] = PairRecord(p.key, kind=self.cfg.backend)
            master = snap.get(out.masters.get(p.key))
            sby = snap.links[p.standby]
            prim = snap.get(p.primary)
            rec.label = p.label
            rec.rule, rec.reason = p.rule, p.reason
            rec.error = out.errors.get(p.key, "")
            rec.master = master.ifindex if master else None
            rec.master_name = master.name if master else ""
            rec.standby, rec.standby_name = sby.ifindex, sby.name
            rec.standby_carrier = sby.lower_up and sby.up
            if prim is None and rec.primary is not None and rec.drained:
                rec.drained = False  # the drained primary is gone: drain complete
            new_primary = prim is not None and prim.ifindex != rec.primary
            rec.primary = prim.ifindex if prim else None
            rec.primary_name = prim.name if prim else ""
            rec.primary_carrier = bool(prim and prim.lower_up and prim.up)
            rec.primary_enslaved = bool(prim and master and prim.master == master.ifindex)
            if not rec.in_call:
                rec.active = out.active.get(p.key)
            if new_primary and prim is not None:
                added = self._added.pop(prim.ifindex, None)
                if rec.joining is not None and rec.active == prim.ifindex:
                    # the bond made the new primary active while it was enslaved
                    old, t = rec.joining
                    latency = (t - added) / 1e6 if added is not None else None
                    self._record(rec, old, prim.ifindex, f"{prim.name} joined", latency, "kernel")
                elif added is not None:
                    rec.pending_since_ns, rec.pending_why = added, f"{prim.name} joined"
            rec.joining = None
        for key in old_keys - seen:
            rec = self.pairs.pop(key)
            self._emit("PairRemoved", {"pair": rec.master_name, "key": key})
        for key in seen - old_keys:
            rec = self.pairs[key]
            if rec.master is not None:
                self._emit("PairCreated", {"pair": rec.master_name, "key": key, "rule": rec.rule})
        for r in result.refusals:
            self._emit(
                "Refused",
                {
                    "links": [snap.links[i].name for i in r.links if i in snap.links],
                    "reason": r.reason,
                },
            )
        self.by_member = {}
        for rec in self.pairs.values():
            for idx in (rec.master, rec.standby, rec.primary):
                if idx is not None:
                    self.by_member[idx] = rec
        self._addresses = {i: link.addresses for i, link in snap.links.items() if is_ours(link)}
        self._watch_teamd(out.pids)
        self.sections = match_sections(result, snap)
        for rec in self.pairs.values():
            self._evaluate(rec, now_ns(), "reconciled")
        self._write_state()

    def _watch_teamd(self, pids: dict[str, int]) -> None:
        """teamd exiting is an event (its pidfd becomes readable)."""
        loop = asyncio.get_running_loop()
        for dev, pid in pids.items():
            if self._watched.get(dev, (None, None))[0] == pid:
                continue
            fd = processes.pidfd(pid)
            if fd is None:
                self.request_reconcile(f"teamd for {dev} is gone")
                continue
            self._watched[dev] = (pid, fd)
            loop.add_reader(fd, self._teamd_exited, dev, fd)

    def _teamd_exited(self, dev: str, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self._watched.pop(dev, None)
        for rec in self.pairs.values():
            if rec.master_name == dev:
                rec.error = f"teamd for {dev} exited"
                log.error("%s: teamd exited; starting it again", dev)
                rec.decision = decide(self._facts(rec))
        self._write_state()
        self.request_reconcile(f"teamd for {dev} exited")

    # ------------------------------------------------------------ commands (D-Bus, CLI)

    def find_pair(self, name: str) -> PairRecord:
        for rec in self.pairs.values():
            if name in (rec.master_name, rec.label, rec.key, rec.standby_name, rec.primary_name):
                return rec
        raise NotFound(f"no pair {name!r}")

    async def rescan(self) -> None:
        self._reconciled.clear()
        self.request_reconcile("rescan requested")
        await self._reconciled.wait()

    async def set_member(self, pair: str, member: str) -> dict[str, Any]:
        """Pin the standby (drain the primary) or un-pin (back to the primary)."""
        rec = self.find_pair(pair)
        if member in ("standby", rec.standby_name):
            return await self.prepare_unplug(rec.master_name)
        if member in ("primary", rec.primary_name) and rec.primary is not None:
            rec.drained = False
            await self.rescan()  # puts the bond's primary back
            return self.pair_json(rec)
        raise NotFound(f"{pair} has no member {member!r}")

    async def prepare_unplug(self, primary: str, timeout: float = 5.0) -> dict[str, Any]:
        """Move the datapath to the standby and answer once the kernel confirms
        that the primary carries nothing: then the VF can go."""
        rec = self.find_pair(primary)
        if rec.master is None:
            raise NotFound(f"{primary}: the pair has no master")
        if rec.standby is None or not rec.standby_carrier:
            raise SystemRefused(
                f"{rec.master_name}: the standby has no carrier; unplugging would cut the link"
            )
        rec.drained = True
        t0 = now_ns()
        loop = asyncio.get_running_loop()
        names = rec.names()
        master, sby = rec.master, rec.standby
        rec.pending_since_ns, rec.pending_why = t0, "prepare-unplug"
        frm = rec.active

        def drain() -> Optional[int]:
            self._fast_backend.set_primary(master, names.get(master, ""), None, "")
            return self._set_active_sync(master, names.get(master, ""), sby, names.get(sby, ""))

        rec.in_call = True
        try:
            confirmed = await asyncio.wait_for(loop.run_in_executor(self._fast, drain), timeout)
        finally:
            rec.in_call = False
        rec.active = confirmed
        if confirmed != sby:
            raise SystemRefused(f"{rec.master_name}: the kernel kept {rec.name_of(confirmed)} active")
        if frm != sby:
            self._record(rec, frm, sby, "prepare-unplug", (now_ns() - t0) / 1e6, "guestfail")
        rec.pending_since_ns = None
        rec.pending_why = ""
        rec.decision = decide(self._facts(rec))
        self._write_state()
        return self.pair_json(rec)

    def pair_json(self, rec: PairRecord) -> dict[str, Any]:
        return rec.to_json()

    # ------------------------------------------------------------ status

    def daemon_info(self) -> dict[str, Any]:
        return {
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "backend": self.cfg.backend,
            "config": self.cfg.source,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "reconciles": self.reconciles,
            "resyncs": self.resyncs,
        }

    def status(self) -> dict[str, Any]:
        return document(list(self.pairs.values()), self.sections, self.daemon_info(), "daemon")

    def _status_line(self) -> str:
        doc = self.status()
        return f"{len(doc['pairs'])} pairs, {doc['health']}"

    def _write_state(self) -> None:
        try:
            write_atomic(self.state_dir / STATE_FILE, self.status())
        except OSError as e:
            log.warning("cannot write %s: %s", self.state_dir / STATE_FILE, e)
        notify(f"STATUS={self._status_line()}")


def run(cfg: Config, **kw: Any) -> int:
    daemon = Daemon(cfg, **kw)
    return asyncio.run(_main(daemon))


async def _main(daemon: Daemon) -> int:
    return await daemon.run()
