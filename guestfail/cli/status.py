"""`guestfail status`: what the daemon knows, next to what the kernel shows.

Three parts kept apart (as cloud-init's `status` does): gathering the
document (the daemon's over D-Bus, else the state file it wrote, else the
live view; the links are always observed too, read-only, and every
difference is listed as a disagreement), reading it into typed data
(`Status`, with enums for the values users see), and printing it or turning
it into the exit code.  `--json` prints the document itself, whose schema is
stable (fields are only added; guestfail(8), STATUS JSON).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail.core.config import Config
from guestfail.core.decision import Health, decide
from guestfail.core.errors import Exit, NotFound
from guestfail.core.match import MatchResult, match
from guestfail.core.model import Snapshot
from guestfail.core.plan import master_of
from guestfail.core.records import MAC_FOLLOWS, MAC_MODES, STATE_FILE, PairRecord, document, match_sections
from guestfail.system import files

# ------------------------------------------------------------------ gather


def live_records(snap: Snapshot, result: MatchResult) -> list[PairRecord]:
    """The pairs as the kernel shows them now (no history: only the daemon
    keeps that)."""
    out = []
    for p in result.pairings:
        master = master_of(p.key, p.standby, snap)
        if master is None:
            continue
        rec = PairRecord(p.key, kind=master.kind)
        rec.observe(p, snap, master)
        rec.active = master.bond.active_slave if master.bond else None
        rec.drained = master.bond is not None and rec.primary_enslaved and master.bond.primary is None
        rec.decision = decide(rec.facts())
        out.append(rec)
    return out


def live_document(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    result = match(cfg, snap)
    return document(live_records(snap, result), match_sections(result, snap), {"running": False}, "live")


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"guestfail" in f.read()
    except OSError:
        return False


def disagreements(doc: dict[str, Any], live: dict[str, Any]) -> list[str]:
    out = []
    live_pairs = {p["key"]: p for p in live["pairs"]}
    doc_pairs = {p["key"]: p for p in doc["pairs"]}
    for key, p in doc_pairs.items():
        lp = live_pairs.get(key)
        if lp is None:
            if p.get("master"):
                out.append(f"{p['master']}: in the {doc['source']} but the kernel has no such master")
            continue
        for field in ("master", "active", "standby", "primary"):
            if field == "active" and lp.get("kind") == "team" and lp.get("active") is None:
                continue  # only teamd knows a team's active port (and answers root only)
            if p.get(field) != lp.get(field):
                out.append(
                    f"{lp['master']}: {field} is {p.get(field)} in the {doc['source']}, "
                    f"{lp.get(field)} in the kernel"
                )
    for key, lp in live_pairs.items():
        if key not in doc_pairs:
            out.append(f"{lp['master']}: in the kernel but not in the {doc['source']}")
    return out


def gather(
    cfg: Config,
    snap: Snapshot,
    daemon_status: Optional[Callable[[], Optional[dict[str, Any]]]] = None,
) -> dict[str, Any]:
    """The status document: the daemon's (D-Bus), else the state file's,
    else the live one; with disagreements against the live view."""
    live = live_document(cfg, snap)
    doc = daemon_status() if daemon_status is not None else None
    if doc is None:
        path = Path(cfg.state_dir) / STATE_FILE
        doc = files.read(path)
        if doc is not None:
            doc["source"] = "state-file"
            doc.setdefault("daemon", {})["running"] = pid_alive(doc.get("daemon", {}).get("pid"))
            doc["state_file"] = str(path)
            with contextlib.suppress(OSError):
                doc["state_file_age_s"] = round(time.time() - os.stat(path).st_mtime, 1)
    if doc is None:
        return live
    # the kernel's view of structure is the truth for the sections
    for section in ("refusals", "unpaired", "kernel_managed", "ignored"):
        doc.setdefault(section, live.get(section, []))
    doc["disagreements"] = disagreements(doc, live)
    return doc


# ------------------------------------------------------------------ typed


class Source(str, Enum):
    DAEMON = "daemon"
    STATE_FILE = "state-file"
    LIVE = "live"


@dataclass(frozen=True)
class SwitchView:
    time: str  # ISO 8601, UTC
    frm: str
    to: str
    reason: str
    latency_ms: Optional[float]
    by: str

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SwitchView:
        lat = d.get("latency_ms")
        return cls(
            str(d.get("time", "")),
            str(d.get("from") or ""),
            str(d.get("to") or ""),
            str(d.get("reason", "")),
            float(lat) if lat is not None else None,
            str(d.get("by", "")),
        )

    @property
    def local_time(self) -> str:
        """Date and time in the guest's time zone, to the millisecond."""
        try:
            t = datetime.fromisoformat(self.time.replace("Z", "+00:00"))
        except ValueError:
            return self.time
        return t.astimezone().strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"

    def describe(self) -> str:
        lat = f", {self.latency_ms:.1f} ms" if self.latency_ms is not None else ""
        return f"{self.local_time} {self.frm or '-'}->{self.to or '-'} ({self.reason}{lat})"


@dataclass(frozen=True)
class PairView:
    key: str
    label: str
    kind: str
    master: str
    health: Health
    phase: str
    why: str
    active: str
    standby: str
    primary: str
    rule: str
    reason: str
    drained: bool
    error: str
    switches: int
    history: tuple[SwitchView, ...]
    json: dict[str, Any]
    mac: str = ""  # records.MAC_MODES

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PairView:
        try:
            health = Health(d.get("state"))
        except ValueError:
            health = Health.FAILED
        return cls(
            key=str(d.get("key", "")),
            label=str(d.get("label") or ""),
            kind=str(d.get("kind", "")),
            master=str(d.get("master") or ""),
            health=health,
            phase=str(d.get("phase", "")),
            why=str(d.get("why", "")),
            active=str(d.get("active") or ""),
            standby=str(d.get("standby") or ""),
            primary=str(d.get("primary") or ""),
            rule=str(d.get("rule") or ""),
            reason=str(d.get("reason") or ""),
            drained=bool(d.get("drained")),
            error=str(d.get("error") or ""),
            switches=int(d.get("switches") or 0),
            history=tuple(SwitchView.from_json(s) for s in d.get("history") or ()),
            json=d,
            mac=str(d.get("mac") or ""),
        )

    @property
    def last_switch(self) -> Optional[SwitchView]:
        last = self.json.get("last_switch")
        if isinstance(last, dict):
            return SwitchView.from_json(last)
        return self.history[-1] if self.history else None

    def is_named(self, name: str) -> bool:
        return bool(name) and name in (self.master, self.label, self.key, self.standby, self.primary)


@dataclass(frozen=True)
class Status:
    source: Source
    health: Health
    running: bool  # is the daemon running?
    pid: Optional[int]
    backend: str
    pairs: tuple[PairView, ...]
    refusals: tuple[str, ...]
    unpaired: tuple[str, ...]
    kernel_managed: tuple[str, ...]
    disagreements: tuple[str, ...]
    state_file: str
    state_file_age_s: Optional[float]
    retry_in_s: Optional[float]
    document: dict[str, Any]  # what --json prints
    attention_button: str = ""  # the daemon's: watched, or why not

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Status:
        d = doc.get("daemon") or {}
        try:
            health = Health(doc.get("health"))
        except ValueError:
            health = Health.FAILED
        running = bool(d.get("running"))
        return cls(
            source=Source(doc.get("source", "live")),
            health=health,
            running=running,
            pid=d.get("pid") if isinstance(d.get("pid"), int) else None,
            backend=str(d.get("backend") or ""),
            pairs=tuple(PairView.from_json(p) for p in doc.get("pairs") or ()),
            refusals=tuple(f"{', '.join(r['links'])}: {r['reason']}" for r in doc.get("refusals") or ()),
            unpaired=tuple(f"{u['link']} ({u['role']}): {u['reason']}" for u in doc.get("unpaired") or ()),
            kernel_managed=tuple(
                f"{k['master']} ({k['kind']}): {', '.join(k['members']) or 'no members'}"
                for k in doc.get("kernel_managed") or ()
            ),
            disagreements=tuple(str(x) for x in doc.get("disagreements") or ()),
            state_file=str(doc.get("state_file") or ""),
            state_file_age_s=doc.get("state_file_age_s"),
            retry_in_s=d.get("retry_in_s") if running else None,
            document=doc,
            attention_button=str(d.get("attention_button") or "") if running else "",
        )

    def pair(self, name: str) -> PairView:
        for p in self.pairs:
            if p.is_named(name):
                return p
        raise NotFound(f"no pair {name!r}")


# ------------------------------------------------------------------ exit code


def exit_code(st: Status) -> Exit:
    """Not running beats everything (what is shown may be stale, and nothing
    switches); then failed, degraded, healthy."""
    if not st.running:
        return Exit.NOT_RUNNING
    if st.health == Health.FAILED:
        return Exit.FAILED
    if st.health == Health.DEGRADED:
        return Exit.DEGRADED
    return Exit.OK


# ------------------------------------------------------------------ print


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, the last one left as it is."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def render(st: Status) -> str:
    rows = [("PAIR", "STATE", "ACTIVE", "STANDBY", "PRIMARY", "RULE", "LAST SWITCH")]
    for p in st.pairs:
        last = p.last_switch
        rows.append(
            (
                p.master or "-",
                p.health.value + (" (drained)" if p.drained else ""),
                p.active or "-",
                p.standby or "-",
                p.primary or "-",
                p.rule or "-",
                last.describe() if last else "-",
            )
        )
    lines = _table(rows)
    if not st.pairs:
        lines.append("(no pairs)")
    lines.extend(f"{p.master or p.key}: error: {p.error}" for p in st.pairs if p.error)
    lines.extend(f"{p.master or p.key}: {MAC_MODES[MAC_FOLLOWS]}" for p in st.pairs if p.mac == MAC_FOLLOWS)
    for title, items in (
        ("refused", st.refusals),
        ("unpaired", st.unpaired),
        ("kernel-managed (left alone)", st.kernel_managed),
        ("disagreements (daemon vs kernel)", st.disagreements),
    ):
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  {i}" for i in items)
    if st.source == Source.DAEMON:
        src = f"daemon (pid {st.pid}, {st.backend})"
    elif st.source == Source.STATE_FILE:
        run = "running" if st.running else "not running"
        src = f"state file {st.state_file} ({st.state_file_age_s} s old; daemon {run})"
    else:
        src = "live view only (no daemon, no state file)"
    lines.append(f"health: {st.health.value}; source: {src}")
    if st.attention_button.startswith("not seen"):
        lines.append(f"attention button {st.attention_button}")
    if st.retry_in_s is not None:
        lines.append(f"the last reconciliation left work undone: tried again in {st.retry_in_s:g} s")
    if not st.running:
        lines.append("the daemon is not running: nothing switches (systemctl start guestfail)")
    return "\n".join(lines)


@dataclass(frozen=True)
class Member:
    """One member as `status PAIR` shows it (like /proc/net/bonding)."""

    name: str
    role: str  # standby | primary
    active: bool
    carrier: Optional[bool]  # None: not there
    speed_mbps: Optional[int]
    driver: str
    pci: str
    slot: str
    perm_mac: str
    link_failures: Optional[int]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "active": self.active,
            "carrier": self.carrier,
            "speed_mbps": self.speed_mbps,
            "driver": self.driver,
            "pci": self.pci,
            "slot": self.slot,
            "permanent_mac": self.perm_mac,
            "link_failures": self.link_failures,
        }


def members(
    p: PairView, snap: Snapshot, counters: Callable[[str], tuple[Optional[int], Optional[int]]]
) -> list[Member]:
    """The pair's members as the kernel shows them now; `counters(name)`
    gives (speed in Mb/s, link failures) from sysfs."""
    out = []
    for role, name in (("standby", p.standby), ("primary", p.primary)):
        if not name:
            continue
        link = snap.by_name(name)
        speed, failures = counters(name) if link is not None else (None, None)
        out.append(
            Member(
                name=name,
                role=role,
                active=name == p.active,
                carrier=(link.up and link.lower_up) if link is not None else None,
                speed_mbps=speed,
                driver=link.driver if link is not None else "",
                pci=link.pci_address if link is not None else "",
                slot=link.slot if link is not None else "",
                perm_mac=link.hw_mac if link is not None else "",
                link_failures=failures,
            )
        )
    return out


def render_pair(p: PairView, ms: list[Member]) -> str:
    lines = [
        f"{p.master or p.key}: {p.health.value}, {p.phase} ({p.why})",
        f"  {p.kind} master, active {p.active or '-'}"
        + (", drained (prepare-unplug)" if p.drained else "")
        + f", {p.switches} switches",
        f"  paired by {p.rule or 'no rule yet'}: {p.reason}" + (f"; label {p.label!r}" if p.label else ""),
    ]
    if p.mac:
        lines.append(f"  MAC: {MAC_MODES.get(p.mac, p.mac)}")
    if p.error:
        lines.append(f"  error: {p.error}")
    rows = [("MEMBER", "ROLE", "CARRIER", "SPEED", "DRIVER", "PCI", "SLOT", "PERMANENT MAC", "LINK FAILURES")]
    for m in ms:
        carrier = "gone" if m.carrier is None else "up" if m.carrier else "down"
        rows.append(
            (
                m.name + (" *" if m.active else ""),
                m.role,
                carrier,
                f"{m.speed_mbps} Mb/s" if m.speed_mbps else "-",
                m.driver or "-",
                m.pci or "-",
                m.slot or "-",
                m.perm_mac or "-",
                "-" if m.link_failures is None else str(m.link_failures),
            )
        )
    lines.extend("  " + line for line in _table(rows))
    lines.append("  (* active)")
    if p.history:
        lines.append("  switches (newest last):")
        lines.extend(f"    {s.describe()} by {s.by}" for s in p.history)
    return "\n".join(lines)
