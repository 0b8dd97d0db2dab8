"""`python -m bench footprint`: what the daemon costs: its memory after
pairing, the CPU it uses while nothing happens (it must not poll), and the
wall time of `guestfail status` in the guest (TCG) and on this host.

The agent runs as the package runs it: with its D-Bus API on a system bus.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    REPO,
    Agent,
    BenchGuest,
    fmt_num,
    guest_python_timer,
    say,
    table,
)
from bench.reaction import paired
from lab import topology
from lab.agent import agent_argv


@dataclass
class Params:
    idle_s: float = 60.0
    status_runs: int = 10


def _median_ms(times: list[float]) -> dict[str, Any]:
    ms = [t * 1000 for t in times]
    return {
        "runs": len(ms),
        "median_ms": statistics.median(ms) if ms else None,
        "min_ms": min(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


def guest_status_times(g: BenchGuest, args: list[str], n: int) -> dict[str, Any]:
    argv, env = agent_argv(*args)
    return guest_times(g, argv, env, n)


def guest_times(g: BenchGuest, argv: list[str], env: dict[str, str], n: int) -> dict[str, Any]:
    code = guest_python_timer(argv, env, n)
    out = g.lab.run(sys.executable, "-c", code, timeout=120 + 60 * n).out
    return _median_ms(json.loads(out))


def host_status_times(n: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "guestfail", "status", "--no-dbus"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(
            argv, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
        times.append(time.perf_counter() - t)
    return _median_ms(times)


def wait_quiet(g: BenchGuest, pid: int, quiet_s: int = 3, max_s: float = 120) -> float:
    """Wait until the process used no CPU for `quiet_s` seconds in a row (the
    pairing's last work done); returns the seconds waited."""
    t0 = time.monotonic()
    last, still = g.cpu_ticks(pid), 0
    while still < quiet_s and time.monotonic() - t0 < max_s:
        time.sleep(1.0)
        now = g.cpu_ticks(pid)
        still = still + 1 if now == last else 0
        last = now
    return time.monotonic() - t0


def measure(g: BenchGuest, agent: Agent, p: Params) -> dict[str, Any]:
    pid = agent.pid
    settled = wait_quiet(g, pid)
    say(f"footprint: the agent was quiet after {settled:.0f} s")
    mem = g.rss_kib(pid)
    say(f"footprint: agent pid {pid}: VmRSS {mem['VmRSS_kib']} KiB, {mem['Threads']} threads")
    clk = int(g.lab.run("getconf", "CLK_TCK").out.strip() or "100")
    u0, s0 = g.cpu_ticks(pid)
    before = g.ctxt_switches(pid)
    say(f"footprint: {p.idle_s:g} s idle (nothing happens on any link)")
    t0 = time.monotonic()
    time.sleep(p.idle_s)
    u1, s1 = g.cpu_ticks(pid)
    after = g.ctxt_switches(pid)
    wall = time.monotonic() - t0
    cpu_ms = ((u1 - u0) + (s1 - s0)) * 1000 / clk

    def delta(key: str) -> int:
        return after[key] - before[key]

    idle = {
        "seconds": round(wall, 1),
        "quiet_before_s": round(settled, 1),
        "cpu_ms": cpu_ms,
        "utime_ticks": u1 - u0,
        "stime_ticks": s1 - s0,
        "clk_tck": clk,
        # a poll loop shows up here even when its CPU time rounds to 0 ticks
        "voluntary_ctxt_switches": delta("voluntary_ctxt_switches"),
        "nonvoluntary_ctxt_switches": delta("nonvoluntary_ctxt_switches"),
    }
    say(f"footprint: idle CPU {cpu_ms:.0f} ms in {wall:.0f} s, {idle['voluntary_ctxt_switches']} wake-ups")
    say(f"footprint: `guestfail status` x{p.status_runs} in the guest and on this host")
    status = {
        "guest_python": guest_times(g, [sys.executable, "-c", "pass"], {}, p.status_runs),
        "guest_dbus": guest_status_times(g, ["status"], p.status_runs),
        "guest_no_dbus": guest_status_times(g, ["status", "--no-dbus"], p.status_runs),
        "host_no_dbus": host_status_times(p.status_runs),
    }
    return {"memory": mem, "memory_after_idle": g.rss_kib(pid), "idle": idle, "status": status}


def run(p: Params) -> dict[str, Any]:
    with BenchGuest.boot(topology.basic(with_other=False), "bench-footprint") as g:
        agent, _master = paired(g, dbus=True)
        return measure(g, agent, p)


def render(res: dict[str, Any]) -> str:
    m, idle, st = res["memory"], res["idle"], res["status"]
    rows = [
        ["VmRSS after pairing (one pair, D-Bus on)", f"{fmt_num(m['VmRSS_kib'])} KiB"],
        ["VmHWM (peak RSS)", f"{fmt_num(m['VmHWM_kib'])} KiB"],
        ["threads", fmt_num(m["Threads"])],
        [
            f"CPU time over {idle['seconds']:.0f} s idle (utime+stime)",
            f"{idle['cpu_ms']:.0f} ms ({idle['utime_ticks']}+{idle['stime_ticks']} ticks "
            f"of 1/{idle['clk_tck']} s)",
        ],
        [
            "voluntary context switches while idle (all threads; polling shows here)",
            fmt_num(idle["voluntary_ctxt_switches"]),
        ],
    ]
    for key, label in (
        ("guest_python", "Python start-up alone in the guest (`python -c pass`; TCG)"),
        ("guest_dbus", "`guestfail status` in the guest (D-Bus; TCG)"),
        ("guest_no_dbus", "`guestfail status --no-dbus` in the guest (TCG)"),
        ("host_no_dbus", "`guestfail status --no-dbus` on this host (native)"),
    ):
        s = st[key]
        rows.append(
            [
                label,
                f"{fmt_num(s['median_ms'])} ms median of {s['runs']} "
                f"({fmt_num(s['min_ms'])}-{fmt_num(s['max_ms'])})",
            ]
        )
    return table(["footprint", "value"], rows, "footprint of the daemon")
