"""`guestfail run`: the event loop.

Two kinds of work, kept apart so a long rebuild never delays a switch:

* the switch path, on the loop thread: a link event for a member (carrier
  lost, carrier back, gone) or the master (the bond switched by itself) is
  decided on at once (guestfail.agent.switcher, guestfail.core.decision); the
  new active member is set by a dedicated netlink thread and read back from the kernel, and the time from
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
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail import __version__
from guestfail.agent.buttons import AttentionButtons
from guestfail.agent.flight import State
from guestfail.agent.reconciler import Reconciler, Scheduler
from guestfail.agent.switcher import Switcher, now_ns
from guestfail.agent.wiring import make_backend, networkmanager_wanted
from guestfail.core import config as config_mod
from guestfail.core.config import Config
from guestfail.core.decision import decide
from guestfail.core.errors import GuestfailError, NotFound, SystemRefused
from guestfail.core.interfaces import Integration, Outcome
from guestfail.core.records import STATE_FILE, PairRecord, Switch, document, match_sections
from guestfail.integrations.ifupdown import IfupdownIntegration
from guestfail.integrations.networkd import NetworkdIntegration
from guestfail.integrations.networkmanager import NetworkManagerIntegration, dbus_library
from guestfail.system import inotify, metrics
from guestfail.system.files import write_atomic
from guestfail.system.linkevents import LinkEvent, LinkMonitor
from guestfail.system.netlink import Netlink, Rtnl
from guestfail.system.notify import notify
from guestfail.system.processes import PidWatch
from guestfail.system.sysfs import Sysfs
from guestfail.system.udev import Udev, UdevInfo

log = logging.getLogger(__name__)
#: events were lost (a netlink or udev overrun): the state is read again in full
LOST = "events lost (%s): reading the kernel's state again (resync %d)"


def status_line(doc: dict[str, Any]) -> str:
    return f"{len(doc['pairs'])} pairs, {doc['health']}"


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        sysfs: Optional[Sysfs] = None,
        use_udev: bool = True,
        use_dbus: bool = True,
        rtnl: Callable[[], Rtnl] = Netlink,
    ) -> None:
        """`rtnl` makes the netlink connections (one per thread); `sysfs`
        reads and writes sysfs: the kernel boundary, which tests replace."""
        self.cfg = cfg
        self.sysfs = sysfs or Sysfs()
        self.use_udev = use_udev
        self.use_dbus = use_dbus
        self.state_dir = Path(cfg.state_dir)
        self.pairs: dict[str, PairRecord] = {}
        self.by_member: dict[int, PairRecord] = {}
        self.sections: dict[str, Any] = {}
        self.started = time.time()
        self.resyncs = 0
        self._stop = asyncio.Event()
        self._refusals: set[tuple[tuple[str, ...], str]] = set()  # announced on D-Bus already
        self._event_ns: dict[int, int] = {}  # ifindex -> when its last link event was read
        self._added: dict[int, int] = {}  # ifindex -> when udev announced it (monotonic ns)
        self._teamd: Optional[PidWatch] = None  # each team master's teamd
        self._watcher: Any = None  # guestfail.system.dbus's NameWatcher
        self._bus_waiter: Optional[asyncio.Future[None]] = None
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # one thread per kind of work, each with its own netlink socket: a
        # long reconciliation never delays a switch
        self._fast_nl = rtnl()
        self._slow_nl = rtnl()
        self._fast_backend = make_backend(cfg, self._fast_nl, self.sysfs, self.state_dir)
        self._slow_backend = make_backend(cfg, self._slow_nl, self.sysfs, self.state_dir)
        # a pair's plan and steps, and a drain's requests, one at a time
        pair_lock = threading.Lock()
        self.switcher = Switcher(
            self._fast_nl,
            self._fast_backend,
            on_switch=self._on_switch,
            on_undrain=self._undrained,
            reconcile=self.request_reconcile,
            announce_enabled=lambda: self.cfg.announce,
            retry_delay=lambda: max(self.cfg.bond.miimon, 50) / 1000 * 1.5,
            pair_lock=pair_lock,
        )
        # ordered removal: the attention button, seen in the kernel's log
        self.buttons = AttentionButtons(self.switcher, self.pairs.values, self.request_reconcile)
        self._udev: Optional[Udev] = None
        self._monitor: Optional[LinkMonitor] = None
        self.dbus: Any = None
        self.metrics = metrics.Textfile()  # [metrics] textfile, written with the state file
        self.networkmanager: Optional[NetworkManagerIntegration] = None
        integrations: list[Integration] = []
        if networkmanager_wanted(cfg):
            why_not = NetworkManagerIntegration.unavailable()
            if why_not is None:
                self.networkmanager = NetworkManagerIntegration(cfg)
                integrations.append(self.networkmanager)
            else:
                log.warning("%s", why_not)
        # the network configurations that name the standby follow the name
        # its master takes (systemd-networkd's .network files, ifupdown's dhclient)
        integrations += [NetworkdIntegration(), IfupdownIntegration()]
        if cfg.backend == "team":
            from guestfail.backends.team import TeamBackend, TeamdSupervision

            assert isinstance(self._slow_backend, TeamBackend)
            integrations.append(TeamdSupervision(self._slow_backend))

        def udev_info(name: str) -> UdevInfo:
            return self._udev.info(name) if self._udev is not None else UdevInfo(True, ())

        self.reconciler = Reconciler(
            cfg,
            self._slow_nl,
            self.sysfs,
            self._slow_backend,
            self.state_dir,
            udev=udev_info if use_udev else None,
            integrations=tuple(integrations),
            pair_lock=pair_lock,
        )
        self.reconciling = Scheduler(
            self.reconciler,
            apply=self._apply_outcome,
            # asked from the reconciliation's thread: a copy of the items
            # (made under the GIL) while the loop may add pairs
            drained=lambda: frozenset(k for k, r in list(self.pairs.items()) if r.drained),
            retrying=self._write_state,
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        notify(f"READY=1\nSTATUS={status_line(self.status())}")
        log.info("guestfail %s ready: %s", __version__, status_line(self.status()))
        await self._stop.wait()
        notify("STOPPING=1")
        log.info("stopping; masters stay, the kernel keeps failing over without the daemon")
        await self.shutdown()
        return 0

    async def start(self, *, events: bool = True) -> None:
        """Follow the kernel's and udev's events (unless `events` is False:
        the unit tests feed them), offer the D-Bus API, and return once the
        first reconciliation is done."""
        loop = asyncio.get_running_loop()
        if events:
            # subscribe before the first dump, so nothing falls between them
            self._monitor = LinkMonitor()
            loop.add_reader(self._monitor.fileno(), self._on_netlink)
            if self.use_udev:
                self._udev = Udev()
                loop.add_reader(self._udev.start_monitor(), self._on_udev)
            self.buttons.start(loop)
        if self.use_dbus:
            await self._start_dbus()
        await self._watch_networkmanager()
        if events and not inotify.system_bus_up() and dbus_library():
            # at boot the daemon runs before the system bus exists
            self._bus_waiter = asyncio.ensure_future(self._when_bus_appears())
        self.reconciling.start()
        self.request_reconcile("start")
        await self.reconciling.wait(0)  # the first run

    async def shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        if self._bus_waiter is not None:
            self._bus_waiter.cancel()
        # node_exporter: guestfail_up 0 from now on (the pairs stay as they are)
        self.metrics.write(self.cfg.metrics.textfile, self.status(), up=False)
        self.reconciling.close()
        if self._monitor is not None:
            loop.remove_reader(self._monitor.fileno())
            self._monitor.close()
        if self._udev is not None and self._udev.monitor is not None:
            loop.remove_reader(self._udev.monitor.fileno())
        self.buttons.close(loop)
        if self.dbus is not None:
            await self.dbus.stop()
        if self._watcher is not None:
            self._watcher.stop()
        if self._teamd is not None:
            self._teamd.close()
        self.switcher.close()
        self._fast_nl.close()
        self._slow_nl.close()
        for backend in (self._fast_backend, self._slow_backend):
            backend.close()

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
        self.reconciler.cfg = new
        if self.networkmanager is not None:
            self.networkmanager.cfg = new
        log.info("configuration reloaded from %s", new.source)
        self.request_reconcile("configuration reloaded")

    async def _when_bus_appears(self) -> None:
        """Connect what needs the system bus once its socket exists, and
        reconcile (the team backend's teamd and the integrations that ask
        systemd need the bus too)."""
        path = inotify.system_bus_socket()
        if path is not None:
            await inotify.wait_for_path(path)
        log.info("the system bus is up")
        if self.use_dbus and self.dbus is None:
            await self._start_dbus()
        if self._watcher is None:
            await self._watch_networkmanager()
        self.request_reconcile("system bus up")

    async def _start_dbus(self) -> None:
        if not dbus_library():
            log.warning("no D-Bus API: no D-Bus library (python3-dbus-fast) is installed")
            return
        if not inotify.system_bus_up():
            log.info("no system bus yet: the D-Bus API comes up with it")
            return
        try:
            from guestfail.agent.server import DBusService

            self.dbus = DBusService(self)
            await self.dbus.start()
        except Exception as e:  # D-Bus is optional: the daemon still pairs and switches
            log.warning("no D-Bus API: %s", e)
            self.dbus = None

    async def _watch_networkmanager(self) -> None:
        if self.networkmanager is not None:
            self._watcher = await self.networkmanager.watch(
                lambda: self.request_reconcile("NetworkManager started")
            )

    def subscribe(self, fn: Callable[[str, dict[str, Any]], None]) -> None:
        """fn(signal_name, payload) for PairCreated, Paired, PairRemoved, ActiveChanged, Refused."""
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
        batch = self._monitor.read(now_ns)
        # what was read before an overrun is still true: switch on it first
        for ev in batch.events:
            self.on_link_event(ev)
        if batch.lost:
            self.resyncs += 1
            log.warning(LOST, batch.lost, self.resyncs)
            self.request_reconcile(batch.lost)

    def _on_udev(self) -> None:
        assert self._udev is not None
        events, lost = self._udev.read(now_ns)
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
        if lost:
            self.resyncs += 1
            log.warning(LOST, lost, self.resyncs)
            self.request_reconcile(lost)

    def on_link_event(self, ev: LinkEvent) -> None:
        link = ev.link
        if ev.deleted:
            self._event_ns.pop(link.ifindex, None)
        else:
            self._event_ns[link.ifindex] = ev.t_ns
        rec = self.by_member.get(link.ifindex)
        if rec is None:
            if ev.deleted:
                self.request_reconcile(f"{link.name} deleted")
            return
        if not self.switcher.link_event(rec, ev):
            self.request_reconcile(f"{link.name} {'deleted' if ev.deleted else 'left ' + rec.master_name}")

    def _on_switch(self, rec: PairRecord, sw: Switch) -> None:
        if rec.master is not None:  # its active member is known as of now
            self._event_ns[rec.master] = now_ns()
        self._emit("ActiveChanged", {"pair": rec.master_name, **sw.to_json()})
        self._write_state()

    # ------------------------------------------------------------ reconciliation

    def request_reconcile(self, why: str) -> None:
        self.reconciling.request(why)

    def _apply_outcome(self, out: Outcome) -> None:
        snap, result = out.snap, out.result
        # links with an event read after this snapshot was begun: the event
        # is the newer truth (an older snapshot must not undo it)
        fresher = frozenset(i for i, t in self._event_ns.items() if t >= out.observed_ns)
        for i in [i for i, t in self._event_ns.items() if i not in snap.links and t < out.observed_ns]:
            del self._event_ns[i]  # gone before this snapshot (its deletion lost in an overrun)
        old_keys = set(self.pairs)
        seen = set()
        for p in result.pairings:
            seen.add(p.key)
            rec = self.pairs.get(p.key)
            if rec is None:
                rec = self.pairs[p.key] = PairRecord(p.key, kind=self.cfg.backend)
            master = snap.get(out.masters.get(p.key))
            prim = snap.get(p.primary)
            if prim is None and rec.primary is not None and rec.drained:
                self.switcher.drain_over(rec)  # the drained primary is gone: drain complete
            joined = (rec.primary, rec.primary_enslaved)
            new_primary = rec.observe(p, snap, master, fresher)
            if rec.primary_enslaved and joined != (rec.primary, True):
                self._emit("Paired", rec.paired_json())  # a primary joined: by which rule, why
            rec.error = out.errors.get(p.key, "")
            if self.switcher.flight(rec).state == State.STEADY and rec.master not in fresher:
                rec.active = out.active.get(p.key)
            if new_primary and prim is not None:
                self.switcher.primary_appeared(
                    rec, prim.ifindex, prim.name, self._added.pop(prim.ifindex, None)
                )
        for key in old_keys - seen:
            rec = self.pairs.pop(key)
            self.switcher.forget(key)
            self._emit("PairRemoved", {"pair": rec.master_name, "key": key})
        for key in seen - old_keys:
            rec = self.pairs[key]
            if rec.master is not None:
                self._emit(
                    "PairCreated",
                    {"pair": rec.master_name, "key": key, "rule": rec.rule, "reason": rec.reason},
                )
        refusals = {
            (tuple(snap.links[i].name for i in r.links if i in snap.links), r.reason) for r in result.refusals
        }
        for links, reason in sorted(refusals - self._refusals):
            self._emit("Refused", {"links": list(links), "reason": reason})
        self._refusals = refusals
        self.by_member = {}
        for rec in self.pairs.values():
            for idx in (rec.master, rec.standby, rec.primary):
                if idx is not None:
                    self.by_member[idx] = rec
        for dev, pid in out.pids.items():
            if self._teamd is None:
                self._teamd = PidWatch(asyncio.get_running_loop(), self._teamd_exited)
            if not self._teamd.watch(dev, pid):
                self.request_reconcile(f"teamd for {dev} is gone")
        self.sections = match_sections(result, snap)
        self.buttons.retry()  # a press that came before its pair was known
        for rec in self.pairs.values():
            self.switcher.evaluate(rec, now_ns(), "reconciled")
        self._write_state()

    def _teamd_exited(self, dev: str) -> None:
        for rec in self.pairs.values():
            if rec.master_name == dev:
                rec.error = f"teamd for {dev} exited"
                log.error("%s: teamd exited; starting it again", dev)
                rec.decision = decide(rec.facts())
        self._write_state()
        self.request_reconcile(f"teamd for {dev} exited")

    # ------------------------------------------------------------ commands (D-Bus, CLI)

    def find_pair(self, name: str) -> PairRecord:
        if name:
            for rec in self.pairs.values():
                if name in (rec.master_name, rec.label, rec.key, rec.standby_name, rec.primary_name):
                    return rec
        raise NotFound(f"no pair {name!r}")

    async def rescan(self) -> None:
        n = self.reconciling.runs
        self.request_reconcile("rescan requested")
        await self.reconciling.wait(n)

    async def set_member(self, pair: str, member: str) -> dict[str, Any]:
        """Pin the standby (drain the primary) or un-pin (back to the primary)."""
        rec = self.find_pair(pair)
        if member in ("standby", rec.standby_name):
            return await self.prepare_unplug(rec.master_name)
        if member in ("primary", rec.primary_name) and rec.primary is not None:
            self.switcher.undrain(rec, "asked to switch to the primary", quiet=True)
            await self.rescan()  # puts the bond's primary back
            return rec.to_json()
        raise NotFound(f"{pair} has no member {member!r}")

    async def prepare_unplug(self, primary: str, timeout: float = 5.0) -> dict[str, Any]:
        """Move the datapath to the standby and answer once the kernel confirms
        that the primary carries nothing: then the VF can go.  A drain that
        fails or times out is undone (the pair goes back to its primary); one
        whose VF is not removed within agent.drain_timeout is undone too."""
        rec = self.find_pair(primary)
        if rec.master is None:
            raise NotFound(f"{primary}: the pair has no master")
        if rec.standby is None or not rec.standby_carrier:
            raise SystemRefused(
                f"{rec.master_name}: the standby has no carrier; unplugging would cut the link"
            )
        await self.switcher.drain(rec, timeout, self.cfg.drain_timeout)
        self._write_state()
        return rec.to_json()

    def _undrained(self, rec: PairRecord, why: str) -> None:
        """The pair goes back to its primary: the reconciliation makes it the
        bond's preferred member again, and the kernel reselects it."""
        self._write_state()
        self.request_reconcile(f"{rec.master_name}: drain undone")

    # ------------------------------------------------------------ status

    def daemon_info(self) -> dict[str, Any]:
        return {
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "backend": self.cfg.backend,
            "config": self.cfg.source,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "reconciles": self.reconciling.runs,
            "resyncs": self.resyncs,
            "retry_in_s": self.reconciling.retry_in,
            "attention_button": self.buttons.state,
        }

    def status(self) -> dict[str, Any]:
        return document(list(self.pairs.values()), self.sections, self.daemon_info(), "daemon")

    def _write_state(self) -> None:
        try:
            write_atomic(self.state_dir / STATE_FILE, self.status())
        except OSError as e:
            log.warning("cannot write %s: %s", self.state_dir / STATE_FILE, e)
        self.metrics.write(self.cfg.metrics.textfile, self.status())
        notify(f"STATUS={status_line(self.status())}")


def run(cfg: Config, **kw: Any) -> int:
    return asyncio.run(_main(cfg, **kw))


async def _main(cfg: Config, **kw: Any) -> int:
    # The daemon is made inside the running loop: on Python 3.9 an
    # asyncio.Event binds to the loop current when it is made, and one made
    # before asyncio.run() belongs to another loop ("attached to a different
    # loop" at the first wait).
    daemon = Daemon(cfg, **kw)
    return await daemon.run()
