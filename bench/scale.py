"""`python -m bench scale`: eight pairs in one guest.

Eight standbys and eight VFs (each VF with its standby's MAC, every pair a
MAC of its own) are present at boot; the agent starts afterwards.  Measured:
spawn -> READY=1 (the agent's first reconciliation built everything), spawn
-> all eight bonds with their VF active, as the kernel reports it, and a
restart that adopts the eight masters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.common import BenchGuest, fmt_num, say, table
from lab.topology import Nic, Port, Topology


@dataclass
class Params:
    pairs: int = 8


def mac(i: int) -> str:
    return f"02:00:00:00:01:{i + 1:02x}"


def topology_of(n: int) -> Topology:
    """n standbys on ports s0.. (slots 11..), n VFs on ports v0.. (slots
    5001..), all at boot; the root ports are 0x10.0-7, 0x11.0-7, ..."""
    ports = [Port(f"s{i}", 11 + i) for i in range(n)] + [Port(f"v{i}", 5001 + i) for i in range(n)]
    nics = [Nic(f"sb{i}", "standby", mac(i), f"s{i}") for i in range(n)]
    nics += [Nic(f"vf{i}", "primary", mac(i), f"v{i}") for i in range(n)]
    return Topology(ports=tuple(ports), nics=tuple(nics), memory="1G")


def all_active(g: BenchGuest, masters: list[str], timeout: float) -> None:
    g.lab.wait_net(
        [{"link": m, "attr": "active_slave", "eq": f"{m}npf"} for m in masters],
        timeout=timeout,
        what=f"the VF active in all of {masters}",
    )


def run(p: Params) -> dict[str, Any]:
    n = p.pairs
    with BenchGuest.boot(topology_of(n), "bench-scale") as g:
        masters = [g.setup_standby(f"sb{i}", ip=f"198.18.{i}.2") for i in range(n)]
        vfs = [g.lab.wait_nic(f"vf{i}") for i in range(n)]
        g.lab.run("udevadm", "settle", "--timeout=120", timeout=150)
        say(f"scale: {n} standbys {masters}, {n} VFs {vfs}; starting the agent")
        t0 = time.monotonic()
        agent = g.start_agent(wait=False)
        g.lab.wait_notify(agent.key, "READY=1", timeout=300)
        t_ready = time.monotonic() - t0
        all_active(g, masters, timeout=300)
        t_all = time.monotonic() - t0
        say(f"scale: READY=1 after {t_ready:.1f} s, all {n} VFs active after {t_all:.1f} s")
        links = g.links()
        bonds = g.bonds(links)
        idx = {m: links[m]["ifindex"] for m in masters}
        mem = g.rss_kib(agent.pid)

        say("scale: restarting the agent (it adopts the masters)")
        g.stop_agent(agent)
        t1 = time.monotonic()
        agent2 = g.start_agent(wait=False)
        g.lab.wait_notify(agent2.key, "READY=1", timeout=300)
        t_adopt = time.monotonic() - t1
        all_active(g, masters, timeout=60)
        links2 = g.links()
        kept = all(links2.get(m, {}).get("ifindex") == idx[m] for m in masters)
        doc = g.state()
        return {
            "pairs": n,
            "spawn_to_ready_s": round(t_ready, 2),
            "spawn_to_all_active_s": round(t_all, 2),
            "restart_spawn_to_ready_s": round(t_adopt, 2),
            "bonds": len(bonds),
            "masters_kept_on_restart": kept,
            "healthy_pairs": sum(1 for x in doc.get("pairs", []) if x.get("state") == "healthy"),
            "memory": mem,
            "memory_after_restart": g.rss_kib(agent2.pid),
        }


def render(res: dict[str, Any]) -> str:
    n = res["pairs"]
    rows = [
        ["spawn -> READY=1 (first reconciliation done)", f"{res['spawn_to_ready_s']:.2f} s"],
        [f"spawn -> all {n} bonds have their VF active", f"{res['spawn_to_all_active_s']:.2f} s"],
        ["restart: spawn -> READY=1, adopting the masters", f"{res['restart_spawn_to_ready_s']:.2f} s"],
        ["bonds / healthy pairs", f"{res['bonds']} / {res['healthy_pairs']}"],
        ["masters kept (same ifindex) across the restart", str(res["masters_kept_on_restart"])],
        [f"VmRSS with {n} pairs", f"{fmt_num(res['memory']['VmRSS_kib'])} KiB"],
    ]
    return table(["scale", "value"], rows, f"scale: {n} pairs in one guest (TCG)")
