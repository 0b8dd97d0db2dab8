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

from bench.common import (
    Agent,
    BenchGuest,
    SwitchLine,
    carrier_to_active,
    fmt_num,
    parse_monitor,
    parse_switches,
    percentile,
    say,
    table,
)
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


# what pairstate.decide says when the daemon's record lost the event that
# caused the switch: such a record carries no event time (latency 0.00 ms)
GENERIC_WHYS = frozenset(
    {
        "primary lost carrier",
        "primary has carrier",
        "no primary",
        "primary not enslaved yet",
        "primary drained",
    }
)


def latency_stats(ms: list[float]) -> dict[str, Any]:
    return {
        "count": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else None,
        "min_ms": min(ms) if ms else None,
    }


def record_stats(lines: list[SwitchLine]) -> dict[str, Any]:
    """The daemon's own records: only those that kept the event's arrival time."""
    valid = [s for s in lines if s.ms is not None and s.reason not in GENERIC_WHYS]
    by: dict[str, int] = {}
    for s in lines:
        by[s.by] = by.get(s.by, 0) + 1
    out = latency_stats([s.ms for s in valid if s.ms is not None])
    out.update({"records": len(lines), "without_event_time": len(lines) - len(valid), "by": by})
    return out


def measure(g: BenchGuest, agent: Agent, master: str, p: Params) -> dict[str, Any]:
    nsby, npf = f"{master}nsby", f"{master}npf"
    g.mark_log(agent)
    # the kernel's own account, independent of the daemon's: every link message, time-stamped
    g.lab.spawn("ipmon", ["ip", "-ts", "-d", "monitor", "link"])
    time.sleep(1.0)
    say(f"reaction: {p.flaps} admin link flaps of {npf}")
    t0 = time.monotonic()
    try:
        for i in range(1, p.flaps + 1):
            flap(g, master)
            if i % 25 == 0 or i == p.flaps:
                el = time.monotonic() - t0
                say(f"reaction: {i}/{p.flaps} flaps ({el / i:.2f} s per flap)")
    finally:
        secs = time.monotonic() - t0
        time.sleep(1.0)  # the last switch's log line and link message
        g.lab.signal("ipmon")
        g.lab.wait_proc("ipmon")
    lines = [s for s in parse_switches(g.new_log(agent)) if s.master == master]
    monitor = parse_monitor((g.lab.workdir / "ipmon.log").read_text(errors="replace"))
    kernel = carrier_to_active(monitor, master, npf, nsby)
    return {
        "flaps": p.flaps,
        "seconds": round(secs, 1),
        "kernel": {k: latency_stats(v) for k, v in kernel.items()},
        "records": {
            "to_standby": record_stats([s for s in lines if s.to == nsby]),
            "to_vf": record_stats([s for s in lines if s.to == npf]),
        },
        "reasons": sorted({s.reason for s in lines}),
    }


def run(p: Params) -> dict[str, Any]:
    with BenchGuest.boot(topology.basic(with_other=False), "bench-reaction") as g:
        agent, master = paired(g, dbus=True)  # as the package runs it
        return measure(g, agent, master, p)


def render(res: dict[str, Any]) -> str:
    rows = []
    for key, label in (("to_standby", "VF down -> standby active"), ("to_vf", "VF up -> VF active")):
        k = res["kernel"][key]
        rows.append(
            [
                f"{label}: kernel's messages (ip monitor)",
                str(k["count"]),
                fmt_ms(k["p50_ms"]),
                fmt_ms(k["p99_ms"]),
                fmt_ms(k["max_ms"]),
                "",
            ]
        )
        r = res["records"][key]
        by = ", ".join(f"{b} {n}" for b, n in sorted(r["by"].items()))
        rows.append(
            [
                f"{label}: the daemon's records",
                f"{r['count']} of {r['records']}",
                fmt_ms(r["p50_ms"]),
                fmt_ms(r["p99_ms"]),
                fmt_ms(r["max_ms"]),
                f"{by}; {r['without_event_time']} without event time",
            ]
        )
    title = (
        f"reaction: link event -> switch confirmed by the kernel, {res['flaps']} admin flaps "
        f"in {res['seconds']:.0f} s (TCG guest)"
    )
    return table(["switch", "count", "p50 ms", "p99 ms", "max ms", "made by"], rows, title)


def fmt_ms(v: Optional[float]) -> str:
    return fmt_num(v, 2)
