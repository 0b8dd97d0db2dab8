"""One probe run: check, change, count, and put everything back.

Restoring is not an undo list: it reads the system again and runs
`decide.restore_steps(orig, now)` until nothing differs, so it is right
wherever the run stopped (a step that failed half-way, Ctrl-C, SIGTERM,
SIGHUP).  Before the first change the original state is written to a
journal (/run/guestfail-probe/<pf>.json); a probe killed with SIGKILL leaves
it behind, and `guestfail-probe --restore --pf <pf>` restores from it.  The
test MAC on the PF's filter is a packet socket's membership: the kernel
drops it when the process ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

from guestfail.core.errors import GuestfailError, SystemRefused
from guestfail.probe import decide
from guestfail.probe.control import Control, ControlFactory, snapshot
from guestfail.probe.decide import Count, Options, Step, Verdict
from guestfail.probe.errors import InUse
from guestfail.probe.facts import Sender, Snapshot, VfDevice
from guestfail.probe.netlink import LinkEvents, Links
from guestfail.probe.packet import Listener, SenderSocket, build_frame

log = logging.getLogger("guestfail-probe")

STATE_DIR = Path("/run/guestfail-probe")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RESTORE_PASSES = 4


@dataclass(frozen=True)
class Settings:
    #: seconds between a change and the first test frame (the NIC's filters settle)
    settle: float = 0.3
    #: seconds to wait for the last test frames of a state
    wait: float = 1.0
    #: seconds between two test frames
    interval: float = 0.002
    #: seconds to wait for a carrier, a VF netdev
    link_timeout: float = 15.0
    state_dir: Path = STATE_DIR


class Interrupted(BaseException):
    """A signal stopped the run (raised from the handler, like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stop(Exception):
    """The measurement cannot say anything: stop, restore, report inconclusive."""


@dataclass
class Result:
    options: Options
    settings: Settings
    orig: Snapshot
    sender: Sender
    counts: list[Count] = field(default_factory=list)
    verdict: Verdict = field(default_factory=lambda: Verdict("inconclusive", "not run"))
    steps_done: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)
    restore_notes: list[str] = field(default_factory=list)
    signal: int = 0
    error: Optional[GuestfailError] = None
    c_driver: str = ""
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    changed: bool = False


# ---------------------------------------------------------------- journal


class Journal:
    """The lock (one probe per PF) and the original state of a run in progress."""

    def __init__(self, state_dir: Path, pf: str) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / f"{pf}.json"
        self._lock_path = self.dir / f"{pf}.lock"
        self._lock: Optional[Any] = None
        self.pf = pf

    def lock(self) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        f = open(self._lock_path, "w", encoding="ascii")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise InUse(f"another guestfail-probe runs on {self.pf} (it holds {self._lock_path})") from None
        self._lock = f

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def write(self, orig: Snapshot, vf: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "vf": vf, "orig": orig.to_json()}, indent=1) + "\n")
        os.replace(tmp, self.path)

    def read(self) -> Optional[tuple[Snapshot, int]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise SystemRefused(f"cannot read the journal {self.path}: {e}") from e
        return Snapshot.from_json(doc["orig"]), int(doc["vf"])

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# ---------------------------------------------------------------- signals


@contextlib.contextmanager
def _handlers(handler: Callable[[int, Optional[FrameType]], None]) -> Iterator[None]:
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, factory: ControlFactory, links: Links, options: Options, settings: Settings) -> None:
        self.factory = factory
        self.control = factory(links)
        self.links = links
        self.o = options
        self.settings = settings
        self.run_id = os.urandom(8)
        self.sender_sock: Optional[SenderSocket] = None
        self.pf_listener: Optional[Listener] = None
        self.vf_listener: Optional[Listener] = None
        self.skip_cd = ""
        self.c_driver = ""
        self.counts: list[Count] = []
        self._signal = 0

    # ------------------------------------------------------------ reading

    def snapshot(self, links: Optional[Links] = None) -> Snapshot:
        return snapshot(self.control, links or self.links, self.o.pf)

    def vf_now(self) -> VfDevice:
        for v in self.control.vfs(self.o.pf):
            if v.index == self.o.vf:
                return v
        raise SystemRefused(f"VF {self.o.vf} of {self.o.pf} is gone (sriov_numvfs changed?)")

    def open_sender(self) -> Sender:
        name = self.o.sender
        self.sender_sock = SenderSocket(name, self.o.sender_netns)
        s = self.sender_sock
        return Sender(name=name, netns=self.o.sender_netns, mac=s.mac, up=s.up, running=s.running)

    def prepare(self) -> tuple[Snapshot, Sender, list[str]]:
        orig = self.snapshot()
        sender = self.open_sender()
        reasons = decide.check(orig, self.o, sender)
        return orig, sender, reasons

    # ------------------------------------------------------------ running

    def execute(self, orig: Snapshot, sender: Sender, reasons: list[str], journal: Journal) -> Result:
        """Run the steps (unless `reasons` make it pointless) and restore.
        The caller holds the journal's lock."""
        res = Result(self.o, self.settings, orig, sender)
        t0 = time.monotonic()
        stop_reasons = list(reasons)
        if not reasons:
            # a signal while restoring is noted, not obeyed; while probing it stops the probe
            with _handlers(self._defer):
                with _handlers(self._raise):
                    try:
                        res.changed = True  # from here on, restore (even if only the journal was written)
                        journal.write(orig, self.o.vf)
                        for step in decide.probe_steps(orig, self.o):
                            self._do(step, res)
                            res.steps_done.append(step.text)
                    except Stop as e:
                        stop_reasons.append(str(e))
                        log.warning("%s", e)
                    except Interrupted as e:
                        res.signal = e.signum
                        log.warning("stopped by %s: restoring", e)
                    except GuestfailError as e:
                        res.error = e
                        log.error("%s: restoring", e)
                    except Exception as e:
                        log.exception("unexpected error: restoring")
                        res.error = GuestfailError(f"internal error: {e!r}")
                self.close_sockets()
                if res.changed:
                    back = restore(self.factory, orig, self.o.vf, self.settings)
                    res.restored, res.not_restored, res.restore_notes = back.done, back.left, back.notes
                res.signal = res.signal or self._signal
            if not res.not_restored:
                journal.remove()
        self.close_sockets()
        res.c_driver = self.c_driver
        res.counts = list(self.counts)
        res.verdict = decide.verdict(res.counts, tuple(stop_reasons))
        measured = {c.state for c in res.counts}
        if (res.error is not None or res.signal) and not {"A", "B"} <= measured:
            why = str(res.error) if res.error is not None else f"stopped by {signal.Signals(res.signal).name}"
            res.verdict = Verdict("inconclusive", f"{why} before states A and B were measured")
        res.seconds = round(time.monotonic() - t0, 2)
        return res

    def _raise(self, signum: int, frame: Optional[FrameType]) -> None:
        raise Interrupted(signum)

    def _defer(self, signum: int, frame: Optional[FrameType]) -> None:
        self._signal = self._signal or signum
        log.warning("%s: restoring first", signal.Signals(signum).name)

    def close_sockets(self) -> None:
        for attr in ("pf_listener", "vf_listener", "sender_sock"):
            sock = getattr(self, attr)
            if sock is not None:
                sock.close()
                setattr(self, attr, None)

    def _do(self, step: Step, res: Result) -> None:
        o, pf = self.o, self.o.pf
        a = step.action
        log.info("%s", step.text)
        if a == "vlan_add":
            assert step.vlan is not None
            pfi = res.orig.pf.ifindex
            idx = self.links.add_vlan(pfi, pf, step.name, step.vlan)
            self.links.set_up(idx, step.name, True)
        elif a == "pf_up":
            self.links.set_up(res.orig.pf.ifindex, pf, True)
            with LinkEvents() as ev:
                if not ev.wait(lambda: self.links.pf_link(pf).carrier, self.settings.link_timeout):
                    raise Stop(
                        f"{pf} has no carrier {self.settings.link_timeout:g} s after it was set up: "
                        "no link on the wire"
                    )
        elif a == "listen":
            self.pf_listener = Listener(step.name, self.run_id, o.mac, membership=True)
            promisc = self.links.pf_link(pf).promiscuity
            if promisc > res.orig.pf.promiscuity:
                raise Stop(
                    f"{pf} went promiscuous when the test MAC was added to its unicast filter: its "
                    "driver has no unicast filter (or it is full), so the PF takes frames for any MAC"
                )
        elif a == "unbind":
            self.control.unbind(self.vf_now())
        elif a == "measure":
            if step.state in ("C", "D") and self.skip_cd:
                self.counts.append(Count(step.state, 0, 0, None, note=self.skip_cd))
                return
            self.counts.append(self._measure(step.state))
        elif a == "set_vf":
            self.control.set_vf(pf, res.orig.pf.ifindex, o.vf, step.mac, step.vlan, step.qos)
        elif a == "bind":
            self._bind(step.driver)
        elif a == "vf_up":
            if self.skip_cd:
                return
            nd = self.vf_now().netdev
            assert nd is not None
            self.links.set_up(nd.ifindex, nd.name, True)
            with LinkEvents() as ev:
                if not ev.wait(lambda: self._carrier(nd.name), self.settings.link_timeout):
                    log.warning("%s has no carrier: counting anyway", nd.name)
            self.vf_listener = Listener(nd.name, self.run_id, o.mac)
        else:  # pragma: no cover - decide.probe_steps makes no others
            raise AssertionError(f"unknown step {a}")

    def _carrier(self, name: str) -> bool:
        nd = self.control.netdev(name)
        return nd is not None and nd.carrier

    def _bind(self, driver: str) -> None:
        with LinkEvents() as ev:
            self.control.bind(self.vf_now(), driver)
            vf = self.vf_now()
            self.c_driver = vf.driver
            if not decide.is_host_driver(vf.driver):
                self.skip_cd = (
                    f"no host driver took VF {self.o.vf} (bound: {vf.driver or 'none'}); "
                    "name one with --vf-driver"
                )
                log.warning("%s", self.skip_cd)
                return
            if not ev.wait(lambda: self.vf_now().netdev is not None, self.settings.link_timeout):
                self.skip_cd = f"{vf.driver} made no netdev for VF {self.o.vf}"
                log.warning("%s", self.skip_cd)
                return
        self.control.settle()

    def _measure(self, state: str) -> Count:
        o, st = self.o, self.settings
        assert self.sender_sock is not None and self.pf_listener is not None
        time.sleep(st.settle)
        listeners = [x for x in (self.pf_listener, self.vf_listener) if x is not None]
        src = self.sender_sock.mac
        next_t = time.monotonic()
        for seq in range(o.frames):
            self.sender_sock.send(build_frame(o.mac, src, self.run_id, state, seq, o.vlan, o.qos))
            next_t += st.interval
            while time.monotonic() < next_t:
                _pump(listeners, next_t)
        deadline = time.monotonic() + st.wait
        while time.monotonic() < deadline and not all(x.count(state) >= o.frames for x in listeners):
            _pump(listeners, deadline)
        pf_n = self.pf_listener.count(state)
        vf_n = self.vf_listener.count(state) if self.vf_listener is not None else None
        log.info(
            "%s: sent %d, on the PF %d%s",
            state,
            o.frames,
            pf_n,
            "" if vf_n is None else f", on the VF {vf_n}",
        )
        return Count(state, o.frames, pf_n, vf_n)


def _pump(listeners: list[Listener], until: float) -> None:
    left = max(0.0, until - time.monotonic())
    ready, _, _ = select.select(listeners, [], [], left)
    for x in ready:
        x.drain()


# ---------------------------------------------------------------- restoring


@dataclass
class Restored:
    #: the restore steps run
    done: list[str] = field(default_factory=list)
    #: what still differs (empty: restored)
    left: list[str] = field(default_factory=list)
    #: differences that are not changes (decide.restore_notes)
    notes: list[str] = field(default_factory=list)


def restore(factory: ControlFactory, orig: Snapshot, vf_index: int, settings: Settings) -> Restored:
    """Make the PF and the VF as they were in `orig`.  A netlink socket and
    control of its own: the run's may have been interrupted mid-request."""
    done: list[str] = []
    failures: list[str] = []
    last: list[str] = []
    pf = orig.pf.name
    with Links() as links:
        control = factory(links)
        for n in range(RESTORE_PASSES):
            try:
                now = snapshot(control, links, pf)
            except GuestfailError as e:
                failures.append(f"cannot read {pf} back: {e}")
                break
            steps = decide.restore_steps(orig, now, vf_index, first_pass=n == 0)
            if not steps:
                break
            texts = [s.text for s in steps]
            if texts == last:
                log.warning("restore: the same steps again change nothing; giving up")
                break
            last = texts
            for step in steps:
                log.info("restore: %s", step.text)
                try:
                    _restore_step(control, links, orig, now, vf_index, step, settings)
                    done.append(step.text)
                except GuestfailError as e:
                    log.error("restore: %s", e)
                    failures.append(str(e))
        notes: list[str] = []
        try:
            final = snapshot(control, links, pf)
            left = [s.text for s in decide.restore_steps(orig, final, vf_index, first_pass=False)]
            notes = decide.restore_notes(orig, final, vf_index)
        except GuestfailError as e:
            left = [f"cannot read {pf} back: {e}"]
    if left:
        for f in failures:
            if f not in left:
                left.append(f)
    for note in notes:
        log.info("restore: %s", note)
    return Restored(done, left, notes)


def _vf(control: Control, pf: str, index: int) -> Optional[VfDevice]:
    for v in control.vfs(pf):
        if v.index == index:
            return v
    return None


def _has_netdev(control: Control, pf: str, index: int) -> bool:
    v = _vf(control, pf, index)
    return v is not None and v.netdev is not None


def _restore_step(
    control: Control, links: Links, orig: Snapshot, now: Snapshot, vf_index: int, step: Step, st: Settings
) -> None:
    pf = orig.pf.name
    a = step.action
    if a == "vlan_del":
        idx = links.ifindex(step.name)
        if idx is not None:
            links.delete(idx, step.name)
        return
    if a == "pf":
        assert step.up is not None
        links.set_up(now.pf.ifindex, pf, step.up)
        return
    if a == "set_vf":
        control.set_vf(pf, now.pf.ifindex, vf_index, step.mac, step.vlan, step.qos)
        return
    vf = _vf(control, pf, vf_index)
    if vf is None:
        raise SystemRefused(f"VF {vf_index} of {pf} is gone")
    if a == "unbind":
        control.unbind(vf)
    elif a == "bind":
        o_vf = orig.vf(vf_index)
        with LinkEvents() as ev:
            control.bind(vf, step.driver)
            if o_vf is not None and o_vf.netdev is not None:
                ev.wait(lambda: _has_netdev(control, pf, vf_index), st.link_timeout)
        control.settle()
    elif a == "netdev":
        nd = vf.netdev
        if nd is None:
            raise SystemRefused(f"VF {vf_index} has no netdev to restore")
        if step.up is False:
            links.set_up(nd.ifindex, nd.name, False)
        elif step.name:
            links.rename(nd.ifindex, nd.name, step.name)
        elif step.mac:
            links.set_address(nd.ifindex, nd.name, step.mac)
        elif step.mtu:
            links.set_mtu(nd.ifindex, nd.name, step.mtu)
        elif step.up:
            links.set_up(nd.ifindex, nd.name, True)
    else:  # pragma: no cover - decide.restore_steps makes no others
        raise AssertionError(f"unknown restore step {a}")


def restore_from_journal(factory: ControlFactory, pf: str, settings: Settings) -> Restored:
    """`--restore`: put back what a killed probe of `pf` changed."""
    journal = Journal(settings.state_dir, pf)
    journal.lock()
    try:
        found = journal.read()
        if found is None:
            return Restored()
        orig, vf = found
        with _handlers(lambda s, f: log.warning("%s: restoring first", signal.Signals(s).name)):
            back = restore(factory, orig, vf, settings)
        if not back.left:
            journal.remove()
        return back
    finally:
        journal.unlock()
