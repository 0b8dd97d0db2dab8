"""The management layer's live migration of a guest with a VF, in the lab.

What libvirt or OpenStack Nova do around a migration of a VM whose VF
cannot migrate, by the means they have: QMP on each host's QEMU, and
qemu-guest-agent in the guest.  A `Plan` says which steps run; `migrate()`
runs them on an `ImageLab` and returns a `Record` of every step's times and
every QMP event of both QEMU processes:

  a. prepare   `guest-exec` of `guestfail prepare-unplug <vf>` through
               qemu-guest-agent: guestfail moves the pair to its standby and
               answers once the VF carries nothing (its D-Bus PrepareUnplug);
  b. unplug    `device_del` of the VF on the source, then DEVICE_DELETED
               (the guest let go of it);
  c. migrate   a destination QEMU started with `-incoming` (the NICs still
               plugged, each on a loopback socket of its own), `migrate` over
               a unix socket, until the source says completed and the
               destination resumed the guest (RESUME); the lab then talks to
               the destination and the source quits;
  d. plug      `device_add` of a VF at the destination: the same MAC, in
               another slot;
  e. carries   until traffic runs over the new VF: the lab's peer (the
               switch) received a frame the guest itself sent over the VF's
               path (QEMU's own RARPs, which its announce timer sends for
               every NIC, the new VF too, right after device_add, do not
               count: they say nothing about the guest); then, if the plan
               says how, the guest confirms its pair through the agent
               (`guestfail status`, exit 0 once every pair is healthy).

With QEMU's own failover (`failover=on` on the standby) steps a and b are
QEMU's: `migrate` makes it unplug the primary itself (UNPLUG_PRIMARY, the
migration in state `wait-unplug` until the guest let go of it; QEMU keeps
the device, to plug it back if the migration fails, so no DEVICE_DELETED:
the unplug's moment is the end of `wait-unplug`); the orchestrator
then only adds the destination's VF, with `failover_pair_id` (the
topology's device properties say so).

Every time is `time.monotonic_ns()` on this machine, the clock of the peer's
packet records too, so a record's moments cut a stream into phases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from lab import frames
from lab.imagelab import Host, ImageLab
from lab.vm import LabError, QmpEvent

log = logging.getLogger("lab.orchestrator")


@dataclass(frozen=True)
class Plan:
    """One migration's steps.  `prepare`: the argv guest-exec runs in the
    guest before the unplug (None: no step a); an argument "{name}" becomes
    the guest's name for an interface with the VF's MAC, which the
    orchestrator asks the agent for (`guest-network-get-interfaces`: a
    management layer knows the VF's MAC, not what the guest calls it);
    `qemu_unplugs`: QEMU's own
    failover unplugs the VF when the migration starts (no step b);
    `confirm`: the argv whose exit status 0 says the guest is done with the
    new VF (polled through the agent; None: not asked)."""

    vf: str = "vf0"
    dest_port: str = "p3"
    prepare: Optional[tuple[str, ...]] = None
    qemu_unplugs: bool = False
    confirm: Optional[tuple[str, ...]] = None
    unplug_timeout: float = 60.0
    migrate_timeout: float = 300.0
    carry_timeout: float = 60.0
    confirm_timeout: float = 60.0


@dataclass
class Step:
    name: str  # prepare, unplug, migrate, plug, carries, confirm
    host: str  # where it ran: h0, h1, ... (the guest for prepare and confirm)
    t0_ns: int
    t1_ns: int = 0
    ok: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ms(self) -> float:
        return (self.t1_ns - self.t0_ns) / 1e6 if self.t1_ns else 0.0


@dataclass(frozen=True)
class Event:
    """A QMP event of one of the QEMU processes, as the orchestrator saw it."""

    t_ns: int
    host: str
    name: str
    data: dict[str, Any]


@dataclass
class Record:
    """What one orchestrated migration did, when, and what QEMU said."""

    plan: Plan
    source: str
    destination: str
    t_start_ns: int
    steps: list[Step] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    migration: dict[str, Any] = field(default_factory=dict)  # the source's query-migrate
    error: str = ""
    # the moments the phases are cut at (0: not reached)
    t_unplugged_ns: int = 0  # DEVICE_DELETED of the VF on the source
    t_resumed_ns: int = 0  # RESUME on the destination: the guest runs there
    t_plugged_ns: int = 0  # device_add at the destination returned
    t_carries_ns: int = 0  # the first frame the guest sent over the new VF

    @property
    def ok(self) -> bool:
        return not self.error

    def step(self, name: str) -> Optional[Step]:
        return next((s for s in self.steps if s.name == name), None)

    def timeline(self) -> list[str]:
        """Steps and events in order, ms from the start: for a log or a report."""
        rows: list[tuple[int, str]] = []
        for s in self.steps:
            rows.append((s.t0_ns, f"{s.name} ({s.host}) begins"))
            if s.t1_ns:
                rows.append((s.t1_ns, f"{s.name} ({s.host}) {'done' if s.ok else 'FAILED'} in {s.ms:.0f} ms"))
        for e in self.events:
            data = f" {e.data}" if e.data else ""
            rows.append((e.t_ns, f"{e.host} QMP {e.name}{data}"))
        rows.sort(key=lambda r: r[0])
        return [f"{(t - self.t_start_ns) / 1e6:9.1f} ms  {what}" for t, what in rows]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = asdict(self.plan)
        rel = self.t_start_ns
        for key in ("t_unplugged_ns", "t_resumed_ns", "t_plugged_ns", "t_carries_ns"):
            d[key.replace("_ns", "_ms")] = (getattr(self, key) - rel) / 1e6 if getattr(self, key) else None
        for s in d["steps"]:
            s["start_ms"] = (s["t0_ns"] - rel) / 1e6
            s["ms"] = (s["t1_ns"] - s["t0_ns"]) / 1e6 if s["t1_ns"] else None
        d["timeline"] = self.timeline()
        return d


class _Run:
    def __init__(self, lab: ImageLab, plan: Plan) -> None:
        self.lab = lab
        self.plan = plan
        self.src = lab.current
        self.rec = Record(plan, self.src.name, "", time.monotonic_ns())

    def begin(self, name: str, host: str) -> Step:
        s = Step(name, host, time.monotonic_ns())
        self.rec.steps.append(s)
        log.info("migration step %s on %s", name, host)
        return s

    @staticmethod
    def end(s: Step, **detail: Any) -> None:
        s.t1_ns = time.monotonic_ns()
        s.ok = True
        s.detail.update(detail)

    # ---------------------------------------------------------------- the steps

    def prepare(self, template: Sequence[str]) -> None:
        s = self.begin("prepare", "guest")
        argv = list(template)
        if "{name}" in argv:
            name = self.guest_name(self.lab.topo.nic(self.plan.vf).mac)
            argv = [name if a == "{name}" else a for a in argv]
            s.detail["name"] = name
        rc, out, err = self.lab.guest_exec(list(argv), timeout=60)
        s.detail.update({"argv": list(argv), "rc": rc, "out": out.strip()[-2000:]})
        s.detail["err"] = err.strip()[-2000:]
        if rc != 0:
            s.t1_ns = time.monotonic_ns()
            raise LabError(f"{' '.join(argv)} exited {rc}: {err.strip() or out.strip()}")
        self.end(s)

    def unplug(self) -> None:
        s = self.begin("unplug", self.src.name)
        self.lab.unplug(self.plan.vf, timeout=self.plan.unplug_timeout)
        deleted = self._event(self.src, "DEVICE_DELETED", s.t0_ns, device=self.plan.vf)
        self.rec.t_unplugged_ns = deleted.t_ns if deleted is not None else time.monotonic_ns()
        self.end(s)

    def migrate(self) -> Host:
        lab, plan = self.lab, self.plan
        s = self.begin("migrate", self.src.name)
        # the destination has what the guest has once the VF is gone (QEMU's
        # own failover unplugs it only after `migrate`)
        devices = {n: p for n, p in lab.plugged.items() if n != plan.vf}
        dest = lab.start_destination(devices)
        self.rec.destination = dest.name
        s.detail["destination_started_ms"] = (time.monotonic_ns() - s.t0_ns) / 1e6
        info = lab.migrate(dest, timeout=plan.migrate_timeout)
        self.rec.migration = info
        resumed = self._event(dest, "RESUME", s.t0_ns)
        self.rec.t_resumed_ns = resumed.t_ns if resumed is not None else time.monotonic_ns()
        if plan.qemu_unplugs:
            self.rec.t_unplugged_ns = self._wait_unplug_end(s.t0_ns)
        lab.hand_over(dest)
        self.end(
            s,
            total_time_ms=info.get("total-time"),
            downtime_ms=info.get("downtime"),
            setup_time_ms=info.get("setup-time"),
            ram=info.get("ram", {}),
        )
        return dest

    def plug(self, dest: Host) -> _GuestFrames:
        s = self.begin("plug", dest.name)
        # watched from before the device exists: no frame over it is missed
        seen = _GuestFrames(self.lab, self.lab.topo.nic(self.plan.vf).mac, dest.paths[self.plan.vf])
        self.lab.plug(self.plan.vf, port=self.plan.dest_port, wait=False)
        self.rec.t_plugged_ns = time.monotonic_ns()
        self.end(s, port=self.plan.dest_port)
        return seen

    def carries(self, dest: Host, seen: _GuestFrames) -> None:
        lab = self.lab
        s = self.begin("carries", dest.name)
        try:
            lab.on_loop(
                lab.peer.wait_for(
                    lambda _p: seen.first_ns != 0,
                    self.plan.carry_timeout,
                    f"a frame from the guest over {seen.path}",
                ),
                self.plan.carry_timeout + 10,
            )
        finally:
            seen.close()
        self.rec.t_carries_ns = seen.first_ns
        self.end(s, path=seen.path, first_kind=seen.first_kind, qemu_rarps_before=seen.rarps)

    def confirm(self, argv: Sequence[str]) -> None:
        s = self.begin("confirm", "guest")
        deadline = time.monotonic() + self.plan.confirm_timeout
        tries = 0
        while True:
            tries += 1
            rc, out, err = self.lab.guest_exec(list(argv), timeout=60)
            if rc == 0:
                break
            if time.monotonic() > deadline:
                s.detail.update({"rc": rc, "out": out.strip()[-2000:], "err": err.strip()[-2000:]})
                s.t1_ns = time.monotonic_ns()
                raise LabError(f"{' '.join(argv)} still exits {rc} after {tries} tries: {out.strip()[-500:]}")
            time.sleep(0.5)  # a poll, as a management layer polls an agent
        self.end(s, argv=list(argv), tries=tries, out=out.strip()[-4000:])

    # ---------------------------------------------------------------- helpers

    def guest_name(self, mac: str) -> str:
        """A guest interface with this MAC, as the guest agent lists them (a
        bond's master and members share it: any of them names the pair)."""
        ifaces = self.lab.qga("guest-network-get-interfaces") or []
        names = [i["name"] for i in ifaces if str(i.get("hardware-address", "")).lower() == mac.lower()]
        if not names:
            raise LabError(f"the guest agent lists no interface with MAC {mac}")
        return str(names[0])

    def _wait_unplug_end(self, after_ns: int) -> int:
        """When the source's migration left `wait-unplug` (QEMU's failover
        waited there for the guest to let go of the primary)."""
        waiting = self._event(self.src, "MIGRATION", after_ns, status="wait-unplug")
        if waiting is None:
            raise LabError(f"QEMU's failover migrated without unplugging {self.plan.vf} (no wait-unplug)")
        for ev in self.src.events:
            if ev.t_ns > waiting.t_ns and ev.name == "MIGRATION" and ev.data.get("status") != "wait-unplug":
                return ev.t_ns
        raise LabError("the source's migration never left wait-unplug")

    def _event(self, host: Host, name: str, after_ns: int, **match: Any) -> Optional[QmpEvent]:
        for ev in host.events:
            if ev.t_ns >= after_ns and ev.name == name and all(ev.data.get(k) == v for k, v in match.items()):
                return ev
        return None


class _GuestFrames:
    """The first frame from the guest's MAC on one of the peer's paths that the
    guest sent (not one of QEMU's RARPs), and how many RARPs came before it."""

    def __init__(self, lab: ImageLab, mac: str, path: str) -> None:
        self.mac = frames.normalize_mac(mac)
        self.path = path
        self.first_ns = 0
        self.first_kind = ""
        self.rarps = 0
        self._remove = lab.peer.on_frame(self._on_frame)

    def _on_frame(self, path: str, p: frames.Parsed, _raw: bytes) -> None:
        if self.first_ns or path != self.path or not p.src_mac or frames.normalize_mac(p.src_mac) != self.mac:
            return
        if p.kind == "rarp":
            self.rarps += 1
            return
        self.first_ns, self.first_kind = time.monotonic_ns(), p.kind

    def close(self) -> None:
        self._remove()


def _events(host: Host, after_ns: int) -> list[Event]:
    return [Event(e.t_ns, host.name, e.name, dict(e.data)) for e in host.events if e.t_ns >= after_ns]


def migrate(lab: ImageLab, plan: Plan) -> Record:
    """Run the plan's steps on the guest of `lab` (which runs on its
    destination afterwards).  A failing step ends the run: the record says
    which (`error`, the step not `ok`), and keeps what came before."""
    run = _Run(lab, plan)
    rec = run.rec
    first_new = len(lab.hosts)
    try:
        if plan.vf not in lab.plugged:
            raise LabError(f"{plan.vf} is not plugged: nothing to migrate around")
        if plan.prepare is not None:
            run.prepare(plan.prepare)
        if not plan.qemu_unplugs:
            run.unplug()
        dest = run.migrate()
        seen = run.plug(dest)
        run.carries(dest, seen)
        if plan.confirm is not None:
            run.confirm(plan.confirm)
    except Exception as e:
        rec.error = f"{type(e).__name__}: {e}"
        log.warning("migration failed: %s", rec.error)
    finally:
        for host in [run.src, *lab.hosts[first_new:]]:
            rec.events += _events(host, rec.t_start_ns)
        rec.events.sort(key=lambda e: e.t_ns)
    return rec
