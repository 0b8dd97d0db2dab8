"""py-spy on the daemon in the guest while a benchmark runs: where its CPU
time goes (issue 15: the switch path from the netlink event to the request).

py-spy (from the host's venv, which the guest sees over the shared root)
samples the daemon's Python stacks from outside the process; idle threads are
not sampled, so the profile holds only the time the daemon was busy.  The
summary counts, for each function, the samples where it was on the CPU itself
("self") and where it was anywhere on the stack ("total").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from bench.common import BenchGuest, say

RATE_HZ = 200
KEY = "py-spy"


def spy() -> Optional[Path]:
    p = Path(sys.executable).parent / "py-spy"
    return p if p.exists() else None


def start(g: BenchGuest, pid: int) -> Optional[Path]:
    """Start recording `pid`; the raw (collapsed) stacks go to the returned
    file in the lab's shared directory.  None when py-spy is not installed."""
    exe = spy()
    if exe is None:
        say("profile: no py-spy in this venv (pip install py-spy): not recorded")
        return None
    out = g.lab.workdir / "profile.raw"
    argv = [str(exe), "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw"]
    g.lab.spawn(KEY, [*argv, "--nonblocking", "--output", str(out)])
    return out


def stop(g: BenchGuest, out: Optional[Path]) -> dict[str, Any]:
    if out is None:
        return {}
    g.lab.signal(KEY, "SIGINT")  # py-spy writes its file on SIGINT
    g.lab.wait_proc(KEY, timeout=120)
    if not out.exists():
        return {"error": "py-spy wrote no profile"}
    return summarize(out.read_text(errors="replace"))


def summarize(raw: str, top: int = 20) -> dict[str, Any]:
    """Collapsed stacks ("f1;f2;f3 N" per line, outermost first) -> the
    busiest functions by self and by total samples."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        samples += count
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + count
        for f in set(frames):
            total[f] = total.get(f, 0) + count

    def ranked(d: dict[str, int]) -> list[dict[str, Any]]:
        rows = sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:top]  # ties by name: stable output
        return [
            {"function": f, "samples": c, "share": round(c / samples, 3) if samples else 0.0} for f, c in rows
        ]

    return {"rate_hz": RATE_HZ, "samples": samples, "self": ranked(own), "total": ranked(total)}


def render(prof: dict[str, Any], title: str) -> str:
    if not prof or "samples" not in prof:
        return f"{title}: {prof.get('error', 'not recorded')}\n" if prof else ""
    lines = [f"{title}: {prof['samples']} samples at {prof['rate_hz']} Hz (busy time only)"]
    for kind in ("self", "total"):
        lines.append(f"  by {kind}:")
        for row in prof[kind][:12]:
            lines.append(f"    {row['share'] * 100:5.1f}%  {row['function']}")
    return "\n".join(lines) + "\n"
