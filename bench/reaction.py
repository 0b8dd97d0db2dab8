"""`python -m bench reaction`: guestfail's own reaction time, from the
arrival of a link event in the daemon to the kernel's confirmation of the
new active member, over many link flaps.

The flaps are administrative (`ip link set <vf> down/up` in the guest): the
carrier goes at once, without the e1000's ~1.5 s of link detection, so what
is measured is the daemon and the kernel, not the emulated NIC.  The figures
are the daemon's own records: every switch is logged as
"<master>: active A -> B (reason, by guestfail|kernel in N ms)".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from bench.common import Agent, BenchGuest, SwitchLine, fmt_num, parse_switches, percentile, say, table
from lab import topology


@dataclass
class Params:
    flaps: int = 250


def paired(g: BenchGuest, dbus: bool = False, verbose: int = 1) -> tuple[Agent, str]:
    """The standby with an address, the agent, the VF plugged and active."""
    if dbus:
        g.start_system_bus()
    master = g.setup_standby()
    agent = g.start_agent(dbus=dbus, verbose=verbose)
    g.lab.plug("vf0")
    g.wait_active(master, f"{master}npf")
    return agent, master


def flap(g: BenchGuest, master: str, timeout: float = 60) -> None:
    """Admin down, standby active; admin up, VF active again."""
    nsby, npf = f"{master}nsby", f"{master}npf"
    g.lab.run("ip", "link", "set", npf, "down")
    g.wait_active(master, nsby, timeout)
    g.lab.run("ip", "link", "set", npf, "up")
    g.wait_active(master, npf, timeout)


def latency_stats(lines: list[SwitchLine]) -> dict[str, Any]:
    ms = [s.ms for s in lines if s.ms is not None]
    by: dict[str, int] = {}
    for s in lines:
        by[s.by] = by.get(s.by, 0) + 1
    return {
        "count": len(lines),
        "with_latency": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "min_ms": min(ms) if ms else None,
        "by": by,
    }


def measure(g: BenchGuest, agent: Agent, master: str, p: Params) -> dict[str, Any]:
    nsby, npf = f"{master}nsby", f"{master}npf"
    g.mark_log(agent)
    say(f"reaction: {p.flaps} admin link flaps of {npf}")
    t0 = time.monotonic()
    for i in range(1, p.flaps + 1):
        flap(g, master)
        if i % 25 == 0 or i == p.flaps:
            el = time.monotonic() - t0
            say(f"reaction: {i}/{p.flaps} flaps ({el / i:.2f} s per flap)")
    secs = time.monotonic() - t0
    time.sleep(1.0)  # the last switch's log line
    lines = [s for s in parse_switches(g.new_log(agent)) if s.master == master]
    down = [s for s in lines if s.to == nsby]
    up = [s for s in lines if s.to == npf]
    return {
        "flaps": p.flaps,
        "seconds": round(secs, 1),
        "all": latency_stats(lines),
        "to_standby": latency_stats(down),
        "to_vf": latency_stats(up),
        "reasons": sorted({s.reason for s in lines}),
        "complete": len(down) >= p.flaps and len(up) >= p.flaps,
    }


def run(p: Params) -> dict[str, Any]:
    with BenchGuest.boot(topology.basic(with_other=False), "bench-reaction") as g:
        agent, master = paired(g, dbus=True)  # as the package runs it
        return measure(g, agent, master, p)


def render(res: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("to_standby", "VF admin down -> standby active"),
        ("to_vf", "VF admin up -> VF active"),
        ("all", "all switches"),
    ):
        s = res[key]
        by = ", ".join(f"{k} {v}" for k, v in sorted(s["by"].items()))
        rows.append(
            [
                label,
                str(s["count"]),
                fmt_ms(s["p50_ms"]),
                fmt_ms(s["p90_ms"]),
                fmt_ms(s["p99_ms"]),
                fmt_ms(s["max_ms"]),
                by,
            ]
        )
    title = (
        f"reaction: event arrival in the daemon -> switch confirmed by the kernel, "
        f"{res['flaps']} flaps in {res['seconds']:.0f} s (TCG guest)"
    )
    text = table(["switch", "count", "p50 ms", "p90 ms", "p99 ms", "max ms", "made by"], rows, title)
    if not res["complete"]:
        text += "note: fewer switch records than flaps (see the JSON)\n"
    return text


def fmt_ms(v: Optional[float]) -> str:
    return fmt_num(v, 2)
