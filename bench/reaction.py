"""`python -m bench reaction`: how fast each setup moves the traffic when
the VF's link goes and comes back, over many flaps, in one run:

* guestfail (bond), guestfail (team), teamd alone (activebackup, ethtool
  link watch, as a careful admin configures it) and the kernel's bond alone
  (miimon=100), each in a guest of its own (the setups of `bench failover`);
* the flaps are QEMU's set_link on the VF (vmxnet3: the guest's driver sees
  the link change at once); the peer streams ICMP echo at 1000 packets/s, and
  a flap's reaction is the time from set_link to the first reply that comes
  back over the other path (host clock only, the same yardstick for every
  setup);
* for guestfail, also its own records (every switch is logged as
  "<master>: active A -> B (reason, by guestfail|kernel in N ms)": link
  event in the daemon -> the kernel confirmed the new active member), and
  who made each switch.

`measure()` (the daemon's records against `ip monitor`, admin flaps) is what
the shared footprint+reaction+soak run uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from bench import failover, profile
from bench.common import (
    Agent,
    BenchGuest,
    SwitchLine,
    carrier_to_active,
    fmt_num,
    now_ns,
    parse_monitor,
    parse_switches,
    percentile,
    say,
    table,
)
from lab import topology

SETUPS = ("guestfail", "guestfail-team", "teamd", "bond")


@dataclass
class Params:
    flaps: int = 250
    setups: tuple[str, ...] = SETUPS
    rate: float = 1000.0
    profile: bool = False  # py-spy on the daemon during the flaps


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
    # guestfail's own share: the event's arrival to its request going out
    out["request"] = latency_stats([s.sent_ms for s in valid if s.sent_ms is not None])
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
    """Every setup, one guest each, the same flaps."""
    out: dict[str, Any] = {"flaps": p.flaps, "rate": p.rate, "setups": {}}
    for key in p.setups:
        say(f"reaction: {key} ({failover.TITLES[key]}), {p.flaps} flaps")
        try:
            out["setups"][key] = one_setup(key, p)
        except Exception as e:
            say(f"reaction: {key} failed: {e}")
            out["setups"][key] = {"error": str(e)}
    return out


def one_setup(key: str, p: Params) -> dict[str, Any]:
    setup = failover.make_setup(key)
    with BenchGuest.boot(setup.topology(), f"bench-re-{key}") as g:
        setup.prepare(g)
        setup.plug(g, first=True)
        agent: Optional[Agent] = getattr(setup, "agent", None)
        if agent is not None:
            g.mark_log(agent)
        stream = g.start_stream(p.rate)
        spied = profile.start(g, agent.pid) if p.profile and agent is not None else None
        flaps: list[tuple[int, int, bool, bool]] = []
        t0 = time.monotonic()
        try:
            if not g.wait_replies("vf0", 50, timeout=60):
                raise RuntimeError(f"no steady state over the VF: {g.lab.peer.summary()}")
            for i in range(1, p.flaps + 1):
                t_down = now_ns()
                g.lab.set_link("vf0", up=False)
                moved = g.wait_replies("sb0", 5, timeout=30)
                t_up = now_ns()
                g.lab.set_link("vf0", up=True)
                back = g.wait_replies("vf0", 5, timeout=30)
                flaps.append((t_down, t_up, moved, back))
                if i % 25 == 0 or i == p.flaps:
                    say(f"reaction: {key}: {i}/{p.flaps} ({(time.monotonic() - t0) / i:.2f} s per flap)")
        finally:
            report = g.stop_stream(stream)
            prof = profile.stop(g, spied)
        ends = [t for t, *_ in flaps[1:]] + [now_ns()]
        down, up, lost = [], [], []
        for (t_down, t_up, _m, _b), t_next in zip(flaps, ends):
            first_sb = report.window(t_down, t_up).first_reply_on_path_ns.get("sb0")
            first_vf = report.window(t_up, t_next).first_reply_on_path_ns.get("vf0")
            if first_sb is not None:
                down.append((first_sb - t_down) / 1e6)
            if first_vf is not None:
                up.append((first_vf - t_up) / 1e6)
            lost.append(float(report.window(t_down, t_next).lost))
        res: dict[str, Any] = {
            "to_standby": latency_stats(down),
            "to_vf": latency_stats(up),
            "lost_per_flap": latency_stats(lost),
            "not_moved": sum(1 for f in flaps if not f[2]),
            "not_back": sum(1 for f in flaps if not f[3]),
            "seconds": round(time.monotonic() - t0, 1),
        }
        if prof:
            res["profile"] = prof
        if agent is not None:
            nsby, npf = f"{setup.master}nsby", f"{setup.master}npf"
            lines = [s for s in parse_switches(g.new_log(agent)) if s.master == setup.master]
            res["records"] = {
                "to_standby": record_stats([s for s in lines if s.to == nsby]),
                "to_vf": record_stats([s for s in lines if s.to == npf]),
            }
        return res


def run_one(p: Params) -> dict[str, Any]:
    """guestfail alone, its records against the kernel's messages (admin flaps)."""
    with BenchGuest.boot(topology.basic(with_other=False), "bench-reaction") as g:
        agent, master = paired(g, dbus=True)  # as the package runs it
        return measure(g, agent, master, p)


def render(res: dict[str, Any]) -> str:
    if "setups" in res:
        return render_compare(res)
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
        req = r.get("request") or {}
        rows.append(
            [
                f"{label}: event -> guestfail's request out",
                str(req.get("count", 0)),
                fmt_ms(req.get("p50_ms")),
                fmt_ms(req.get("p99_ms")),
                fmt_ms(req.get("max_ms")),
                "the daemon's own share (its records)",
            ]
        )
    title = (
        f"reaction: link event -> switch confirmed by the kernel, {res['flaps']} admin flaps "
        f"in {res['seconds']:.0f} s (TCG guest)"
    )
    return table(["switch", "count", "p50 ms", "p99 ms", "max ms", "made by"], rows, title)


def render_compare(res: dict[str, Any]) -> str:
    rows = []
    for key, r in res["setups"].items():
        title = failover.TITLES[key]
        if "error" in r:
            rows.append([title, "failed", "", "", "", r["error"][:60]])
            continue
        for what, label in (("to_standby", "set_link down -> first reply over the standby"),
                            ("to_vf", "set_link up -> first reply over the VF")):  # fmt: skip
            st = r[what]
            note = ""
            if "records" in r:
                rec = r["records"][what]
                by = ", ".join(f"{b} {n}" for b, n in sorted(rec["by"].items()))
                note = f"daemon's records p50 {fmt_ms(rec['p50_ms'])} p99 {fmt_ms(rec['p99_ms'])} ms; {by}"
                req = rec.get("request") or {}
                if req.get("count"):
                    note += f"; request out p50 {fmt_ms(req['p50_ms'])} p99 {fmt_ms(req['p99_ms'])} ms"
            rows.append([f"{title}: {label}", str(st["count"]), fmt_ms(st["p50_ms"]), fmt_ms(st["p99_ms"]),
                         fmt_ms(st["max_ms"]), note])  # fmt: skip
        lost = r["lost_per_flap"]
        rows.append([f"{title}: packets lost per flap", str(lost["count"]), fmt_num(lost["p50_ms"]),
                     fmt_num(lost["p99_ms"]), fmt_num(lost["max_ms"]),
                     f"{r['not_moved']} flaps not moved, {r['not_back']} not back"])  # fmt: skip
    title = (
        f"reaction: QEMU set_link on the VF -> traffic on the other path, {res['flaps']} flaps per setup, "
        f"{res['rate']:g} packets/s (TCG guests)"
    )
    out = table(["setup", "count", "p50 ms", "p99 ms", "max ms", ""], rows, title)
    for key, r in res["setups"].items():
        if r.get("profile"):
            out += "\n" + profile.render(r["profile"], f"py-spy on {failover.TITLES[key]} during the flaps")
    return out


def fmt_ms(v: Optional[float]) -> str:
    return fmt_num(v, 2)
