"""`python -m bench removal`: what the host's traffic loses when the VF is
removed, the three ways a hypervisor can remove it, all with guestfail:

* surprise:  ACPI hot-plug (QEMU's default on q35): `device_del` and the
             guest ejects the VF at once; guestfail switches when it is gone;
* planned:   ACPI hot-plug, `guestfail prepare-unplug <vf>` first (a
             management layer that asks), then `device_del`;
* ordered:   native PCIe hot-plug: `device_del` presses the slot's attention
             button, the guest powers the slot off 5 s later; guestfail moves
             the pair at the press (issue 13);
* unseen:    the same ordered removal with the press kept from guestfail
             (the agent runs without CAP_SYSLOG, so /dev/kmsg is closed to
             it): the VF goes 5 s later without a word, as before issue 13.

One guest per setup; in it, per rate, `--events` removals, each from a
steady state (VF plugged and carrying the stream), each counted over the
stream's send times from the command (device_del, or prepare-unplug) to
DEVICE_DELETED, and over the 2 s after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import BenchGuest, fmt_spread, now_ns, say, sleep_until, spread, table
from lab import topology
from lab.topology import Topology

SETUPS = ("surprise", "planned", "ordered", "unseen")
TITLES = {
    "surprise": "surprise removal (ACPI)",
    "planned": "prepare-unplug + device_del (ACPI)",
    "ordered": "ordered removal (attention button)",
    "unseen": "ordered removal, button not seen",
}
TAIL_S = 2.0
PORTS = ("p2", "p3")  # the VF alternates between two slots (5001, 5002)
# the agent without CAP_SYSLOG: where kernel.dmesg_restrict=1 (Debian's
# kernel) it cannot open /dev/kmsg.  CAP_SYS_ADMIN goes too: the kernel still
# lets it read the log in CAP_SYSLOG's place (check_syslog_permissions), and
# a root agent has it (the first runs' "unseen" agent did watch the button)
NO_SYSLOG = ["setpriv", "--inh-caps=-syslog,-sys_admin", "--bounding-set=-syslog,-sys_admin", "--"]


@dataclass
class Params:
    events: int = 3
    rates: list[float] = field(default_factory=lambda: [1000.0, 200.0])
    setups: tuple[str, ...] = SETUPS


def _topology(setup: str) -> Topology:
    return topology.basic(hotplug="acpi" if setup in ("surprise", "planned") else "native", with_other=False)


def _remove(g: BenchGuest, setup: str, master: str) -> tuple[int, int, dict[str, Any]]:
    """(t0, DEVICE_DELETED) in monotonic ns, and what else was measured."""
    extra: dict[str, Any] = {}
    t0 = now_ns()
    if setup == "planned":
        g.guestfail("prepare-unplug", f"{master}npf", check=True)
        extra["prepare_unplug_ms"] = (now_ns() - t0) / 1e6
    t_del = now_ns()
    g.lab.qmp("device_del", {"id": "vf0"})
    ev = g.lab.wait_qmp_event(
        "DEVICE_DELETED", lambda d: d.get("device") == "vf0", after_ns=t_del, timeout=60
    )
    del g.lab.plugged["vf0"]
    extra["device_deleted_ms"] = (ev.t_ns - t_del) / 1e6
    return t0, ev.t_ns, extra


def one_guest(setup: str, p: Params) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with BenchGuest.boot(_topology(setup), f"bench-rm-{setup}") as g:
        if setup == "planned":
            g.start_system_bus()  # prepare-unplug is a D-Bus call
        master = g.setup_standby()
        if setup == "unseen":
            g.lab.run("sysctl", "-q", "-w", "kernel.dmesg_restrict=1")  # Debian's default, to be sure
            argv, env = _agent_without_syslog()
            g.agents += 1
            g.lab.spawn(f"agent{g.agents}", argv, env=env, notify=True)
            g.lab.wait_notify(f"agent{g.agents}", "READY=1", timeout=180)
        else:
            g.start_agent(dbus=setup == "planned")
        button = g.state().get("daemon", {}).get("attention_button", "")
        say(f"  {setup}: attention button {button}")
        if (setup == "unseen") == button.startswith("watched"):
            raise RuntimeError(f"{setup}: the attention button is {button!r}, the setup needs the opposite")
        n = 0
        for rate in p.rates:
            for i in range(p.events):
                port = PORTS[n % 2]
                n += 1
                g.lab.plug("vf0", port=port)
                g.wait_active(master, f"{master}npf")
                stream = g.start_stream(rate)
                if not g.wait_replies("vf0", max(20, int(rate / 2)), timeout=30):
                    say(f"  {setup}: no steady state over the VF at {rate:g} pps")
                say(f"  {setup} at {rate:g} pps: removal {i + 1}/{p.events} ({port})")
                t0, t_deleted, extra = _remove(g, setup, master)
                sleep_until(t_deleted + int(TAIL_S * 1e9))
                report = g.stop_stream(stream)
                during, after = (
                    report.window(t0, t_deleted),
                    report.window(t_deleted, t_deleted + int(TAIL_S * 1e9)),
                )
                reasons = [s["reason"] for s in (g.state().get("pairs") or [{}])[0].get("history", [])[-1:]]
                out.append(
                    {
                        "setup": setup,
                        "rate": rate,
                        "event": i,
                        "lost": during.lost,
                        "sent": during.sent,
                        "lost_after": after.lost,
                        "gap_ms": round(
                            report.window(t0, t_deleted + int(TAIL_S * 1e9)).longest_gap_ms_send, 1
                        ),
                        "last_switch": reasons[0] if reasons else "",
                        "attention_button": button,
                        **extra,
                    }
                )
                say(f"  {setup} at {rate:g} pps: lost {during.lost} of {during.sent}, {after.lost} after")
                if setup == "ordered" and not out[-1]["last_switch"].startswith("attention button"):
                    # the press was missed: what the agent said about it
                    out[-1]["agent_log"] = g.lab.log_tail(f"agent{g.agents}", 60)
                    say(f"  {setup}: the press did not move the pair:\n{out[-1]['agent_log']}")
                time.sleep(0.5)
    return out


def _agent_without_syslog() -> tuple[list[str], dict[str, str]]:
    from lab.agent import agent_argv

    argv, env = agent_argv("-v", "run", "--no-dbus")
    return [*NO_SYSLOG, *argv], env


def run(p: Params) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for setup in p.setups:
        say(f"removal: setup {setup} ({TITLES[setup]})")
        try:
            results += one_guest(setup, p)
        except Exception as e:
            import traceback

            say(f"removal: {setup} failed: {e}")
            errors.append({"setup": setup, "error": str(e), "trace": traceback.format_exc()})
    summary: dict[str, Any] = {}
    for rate in p.rates:
        for setup in p.setups:
            runs = [r for r in results if r["setup"] == setup and r["rate"] == rate]
            summary.setdefault(f"{rate:g}", {})[setup] = {
                m: spread([r.get(m) for r in runs])
                for m in ("lost", "sent", "lost_after", "gap_ms", "device_deleted_ms", "prepare_unplug_ms")
            }
    return {
        "params": {"events": p.events, "rates": p.rates, "setups": list(p.setups), "tail_s": TAIL_S},
        "runs": results,
        "errors": errors,
        "summary": summary,
        "seconds": round(time.monotonic() - t0, 1),
    }


def render(res: dict[str, Any]) -> str:
    setups = res["params"]["setups"]
    n = res["params"]["events"]
    parts = []
    for rate, per in res["summary"].items():
        rows = [
            [
                TITLES[s],
                fmt_spread(per[s]["lost"]),
                fmt_spread(per[s]["sent"]),
                fmt_spread(per[s]["lost_after"]),
                fmt_spread(per[s]["gap_ms"]),
                fmt_spread(per[s]["device_deleted_ms"]),
            ]
            for s in setups
        ]
        parts.append(
            table(
                [
                    "removal",
                    "lost, command -> DEVICE_DELETED",
                    "sent",
                    f"lost, {TAIL_S:g} s after",
                    "longest gap (ms)",
                    "device_del -> DEVICE_DELETED (ms)",
                ],
                rows,
                f"VF removal at {rate} pps, guestfail (median [min-max] of {n} removals)",
            )
        )
    if res["errors"]:
        parts.append("errors:\n" + "\n".join(f"  {e['setup']}: {e['error']}" for e in res["errors"]))
    return "\n".join(parts)
