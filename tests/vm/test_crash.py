"""guestfail killed at every step boundary of pairing and of release
(issue 16): after a restart every address and route is where it belongs, no
temporary master or second master is left, and traffic flows.

One guest for the whole sequence.  The fault hook (GUESTFAIL_FAULT=
kill-after-steps=N, off unless set) makes the process SIGKILL itself right
before its (N+1)-th step, after the journal was written.

The VF's stand-in is an e1000, not the lab's default vmxnet3: with a
vmxnet3 the guest stopped answering in 3 of 9 runs (2026-11-27/28).  The
cause was not the NIC: each pairing, release and start adds or removes
clsact qdiscs, which flips the kernel's tc static keys, and under TCG a
vCPU receiving a frame while the receive path is patched takes the patch's
int3 (an RCU stall on Debian 12's kernel, an Oops on Debian 13's).  The lab
now keeps the keys on from the guest's start (lab/guest_helper.py,
pin_tc_static_keys); the e1000 stays until this test has run on a vmxnet3
with that in place.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from lab import topology

from .helpers import PEER_IP, Guest, replies_on, stream_start, stream_stop

V6 = "2001:db8::2"
ROUTE = "198.51.100.0/24"
ROUTE6 = "2001:db8:1::/64"


def configure_standby(g: Guest) -> str:
    sby = g.setup_standby()  # 192.0.2.2/24, a route to 198.51.100.0/24 via the peer
    g.lab.run("ip", "-6", "addr", "add", f"{V6}/64", "dev", sby, "nodad")
    g.lab.run("ip", "-6", "route", "add", ROUTE6, "via", "2001:db8::1", "dev", sby)
    g.lab.run("ip", "route", "add", "203.0.113.0/24", "via", PEER_IP, "dev", sby, "table", "100")
    return sby


def held(g: Guest, name: str) -> dict[str, Any]:
    """What the guest's network config put on a link: addresses (not
    link-local) and routes (not the kernel's own), in every table."""
    addrs = sorted(
        f"{a['local']}/{a['prefixlen']}"
        for a in g.link(name)["addr_info"]
        if not a["local"].startswith("fe80:")
    )
    routes = []
    for family in ("-4", "-6"):
        out = g.lab.run("ip", "-j", family, "route", "show", "table", "all", "dev", name).out
        for r in json.loads(out or "[]"):
            if r.get("protocol") in ("kernel",) or r.get("type") in ("local", "multicast", "anycast"):
                continue
            if r.get("dst", "").startswith("fe80:"):
                continue
            routes.append(f"{r.get('dst')} via {r.get('gateway', '-')} table {r.get('table', 'main')}")
    return {"addresses": addrs, "routes": sorted(routes)}


def bonds(g: Guest) -> list[str]:
    return sorted(n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "bond")


def journal(g: Guest) -> list[str]:
    return g.lab.run("ls", "-A", "/run/guestfail/journal", check=False).out.split()


def steps_logged(g: Guest, key: str) -> int:
    """Steps the executor ran, by its log lines ("<master>: <step>")."""
    verbs = (": create ", ": set ", ": rename ", ": enslave ", ": release ", ": primary of ", ": move ",
             ": delete ", ": put ")  # fmt: skip
    return sum(1 for line in g.lab.log_tail(key, 400).splitlines() if any(v in line for v in verbs))


def fault(n: int) -> dict[str, str]:
    return {"GUESTFAIL_FAULT": f"kill-after-steps={n}"}


@pytest.mark.timeout(3600)  # about 50 starts of Python in a TCG guest
def test_killed_at_every_step_of_pairing_and_release_loses_nothing(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic(vf_at_boot=True, with_other=False, vf_model="e1000"))
    sby = configure_standby(g)
    g.lab.run("udevadm", "settle")
    want = held(g, sby)
    assert len(want["addresses"]) == 2 and len(want["routes"]) == 3, want
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    stream = stream_start(g.lab)

    def paired(why: str) -> None:
        g.wait_active(master, npf)
        assert bonds(g) == [master], why
        assert held(g, master) == want, why
        assert held(g, nsby) == held(g, npf) == {"addresses": [], "routes": []}, why
        assert journal(g) == [], why
        replies_on(g.lab, stream, "vf0", 20)

    def released(why: str) -> None:
        assert bonds(g) == [], why
        links = g.links()
        assert sby in links and "UP" in links[sby]["flags"], why
        assert held(g, sby) == want, why
        assert npf not in links, why  # the VF has its own name back
        assert journal(g) == [], why
        replies_on(g.lab, stream, "sb0", 20)

    # an uninterrupted run tells how many steps there are
    key = g.start_agent()
    paired("uninterrupted")
    pair_steps = steps_logged(g, key)
    g.kill_agent(key, "SIGTERM")
    r = g.guestfail("-v", "release", "--all")
    assert r.rc == 0, r
    release_steps = sum(1 for line in r.err.splitlines() if f"{master}: " in line)
    released("uninterrupted")
    assert pair_steps >= 10 and release_steps >= 4, (pair_steps, release_steps)

    for n in range(max(pair_steps, release_steps)):
        if n < pair_steps:
            key = g.start_agent(None, wait=False, env=fault(n))
            rc = g.lab.wait_proc(key, timeout=300)
            assert rc == -9, f"rc {rc}\n{g.lab.log_tail(key)}\n{g.stacks(key)}"
            key = g.start_agent()  # the next start finishes the pairing
            paired(f"pairing killed after {n} steps")
            g.kill_agent(key, "SIGTERM")
        else:
            key = g.start_agent()
            paired("before the release")
            g.kill_agent(key, "SIGTERM")
        if n < release_steps:
            r = g.guestfail("-v", "release", "--all", env=fault(n))
            assert r.rc == -9, r
        r = g.guestfail("release", "--all")
        assert r.rc == 0, r
        released(f"release killed after {n} steps")
    report = stream_stop(g.lab, stream)
    assert report.replied > 0
