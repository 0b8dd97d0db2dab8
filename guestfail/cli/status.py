"""`guestfail status`: what the daemon knows, next to what the kernel shows.

The daemon answers over D-Bus when it runs; otherwise the state file it wrote
is read.  Either way the links are also observed live (read-only, no root
needed), and every difference between the two is listed under
"disagreements", so a stale state file or a master someone else changed shows.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail.core import records as state
from guestfail.core.config import Config
from guestfail.core.decision import Facts, decide
from guestfail.core.errors import Exit
from guestfail.core.match import MatchResult, match
from guestfail.core.model import Snapshot
from guestfail.core.plan import master_of
from guestfail.core.records import PairRecord, match_sections
from guestfail.system import files


def live_records(cfg: Config, snap: Snapshot, result: MatchResult) -> list[PairRecord]:
    out = []
    for p in result.pairings:
        master = master_of(p.key, p.standby, snap)
        if master is None:
            continue
        sby = snap.links[p.standby]
        prim = snap.get(p.primary)
        rec = PairRecord(p.key, label=p.label, kind=master.kind, rule=p.rule, reason=p.reason)
        rec.master, rec.master_name = master.ifindex, master.name
        rec.standby, rec.standby_name = sby.ifindex, sby.name
        rec.standby_carrier = sby.up and sby.lower_up
        if prim is not None:
            rec.primary, rec.primary_name = prim.ifindex, prim.name
            rec.primary_carrier = prim.up and prim.lower_up
            rec.primary_enslaved = prim.master == master.ifindex
        rec.active = master.bond.active_slave if master.bond else None
        drained = master.bond is not None and rec.primary_enslaved and master.bond.primary is None
        rec.drained = drained
        rec.decision = decide(
            Facts(
                rec.standby,
                rec.standby_carrier,
                rec.primary,
                rec.primary_enslaved,
                rec.primary_carrier,
                drained,
                rec.active,
            )
        )
        out.append(rec)
    return out


def live_document(cfg: Config, snap: Snapshot) -> dict[str, Any]:
    result = match(cfg, snap)
    return state.document(
        live_records(cfg, snap, result), match_sections(result, snap), {"running": False}, "live"
    )


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
        path = Path(cfg.state_dir) / state.STATE_FILE
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


def exit_code(doc: dict[str, Any]) -> Exit:
    health = doc.get("health")
    if health == "failed":
        return Exit.FAILED
    if health == "degraded":
        return Exit.DEGRADED
    return Exit.OK


def _short_time(iso: str) -> str:
    return iso[11:23] if len(iso) >= 23 else iso  # HH:MM:SS.mmm


def render(doc: dict[str, Any]) -> str:
    lines = []
    rows = [("PAIR", "STATE", "ACTIVE", "STANDBY", "PRIMARY", "RULE", "LAST SWITCH")]
    for p in doc["pairs"]:
        last = p.get("last_switch")
        if last:
            lat = f", {last['latency_ms']:.1f} ms" if last.get("latency_ms") is not None else ""
            moved = f"{last['from'] or '-'}->{last['to'] or '-'}"
            sw = f"{_short_time(last['time'])} {moved} ({last['reason']}{lat})"
        else:
            sw = "-"
        st = p["state"] + (" (drained)" if p.get("drained") else "")
        rows.append(
            (
                p["master"] or "-",
                st,
                p["active"] or "-",
                p["standby"] or "-",
                p["primary"] or "-",
                p["rule"] or "-",
                sw,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if len(rows) == 1:
        lines.append("(no pairs)")
    for p in doc["pairs"]:
        if p.get("error"):
            lines.append(f"{p['master'] or p['key']}: error: {p['error']}")
    sections: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
        ("refused", "refusals", lambda r: f"  {', '.join(r['links'])}: {r['reason']}"),
        ("unpaired", "unpaired", lambda u: f"  {u['link']} ({u['role']}): {u['reason']}"),
        (
            "kernel-managed (left alone)",
            "kernel_managed",
            lambda k: f"  {k['master']} ({k['kind']}): {', '.join(k['members']) or 'no members'}",
        ),
        ("disagreements (daemon vs kernel)", "disagreements", lambda d: f"  {d}"),
    )
    for title, key, fmt in sections:
        items = doc.get(key) or []
        if items:
            lines.append(f"{title}:")
            lines.extend(fmt(i) for i in items)
    d = doc.get("daemon", {})
    if doc["source"] == "daemon":
        src = f"daemon (pid {d.get('pid')}, {d.get('backend')})"
    elif doc["source"] == "state-file":
        run = "running" if d.get("running") else "not running"
        src = f"state file {doc.get('state_file')} ({doc.get('state_file_age_s')} s old; daemon {run})"
    else:
        src = "live view only (no daemon, no state file)"
    lines.append(f"health: {doc['health']}; source: {src}")
    return "\n".join(lines)
