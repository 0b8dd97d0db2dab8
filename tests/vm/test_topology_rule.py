"""The topology rule (issue 13) in a guest: a PCIe switch with its own PCI ID
(QEMU's x3130, 104c:8232) holds the standby; what else sits behind it is
its VF, whatever its MAC.  Three NICs behind it are refused with the
reason; a NIC elsewhere with the standby's MAC is not taken; a VF with
another MAC hot-plugged into the switch's free slot is paired, given the
standby's MAC, and carries the traffic.  One guest for all of it."""

from __future__ import annotations

import time

from lab import topology
from lab.topology import SBY_MAC, SWITCH_ID, VF_MAC

from .helpers import STATE_FILE, Guest, replies_on, stream_start, stream_stop

CONFIG = f'[agent]\nmatch = ["topology", "mac"]\n[[topology]]\nbridge = {{ id = "{SWITCH_ID}" }}\n'


def test_pairs_behind_one_bridge_refuses_three_and_takes_a_vf_plugged_into_it(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.switched(vf_at_boot=True, extra_vf=True))
    sby = g.setup_standby()
    vf0, vf1, x0 = (g.lab.ifname(n) for n in ("vf0", "vf1", "x0"))
    g.lab.run("udevadm", "settle")
    g.start_agent(CONFIG)

    # three NICs behind the switch: which two belong together is not clear
    doc = g.state()
    assert doc["pairs"] == []
    by_links = {tuple(sorted(r["links"])): r["reason"] for r in doc["refusals"]}
    reason = by_links[tuple(sorted((sby, vf0, vf1)))]
    assert f"({SWITCH_ID}) has 1 standbys and 2 primaries behind it" in reason, reason
    # the NIC elsewhere with the standby's MAC is not taken: the switch holds the standby
    assert "reserved by the topology rule" in by_links[(x0,)], by_links
    assert g.link(sby).get("linkinfo") is None

    # both VFs go (ordered removals of unpaired VFs: nothing to move)
    t0 = time.monotonic_ns()
    for nic in ("vf0", "vf1"):
        g.lab.qmp("device_del", {"id": nic})
    for nic in ("vf0", "vf1"):
        g.lab.wait_qmp_event("DEVICE_DELETED", lambda d, n=nic: d.get("device") == n, after_ns=t0, timeout=60)
        del g.lab.plugged[nic]
    assert "pci-" in " ".join(g.lab.run("ls", "/run/guestfail/claims").out.split())  # the free slots

    # a VF with another MAC into the switch's free slot: paired by topology
    stream = stream_start(g.lab, 200)
    replies_on(g.lab, stream, "sb0", 20)
    g.lab.plug("vf0", port="d3")
    master, npf = sby, f"{sby}npf"
    g.wait_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)
    stream_stop(g.lab, stream)
    vf = g.link(npf)
    assert vf["address"] == SBY_MAC and vf.get("permaddr", VF_MAC) == VF_MAC  # given the standby's MAC
    m = g.link(master)
    assert m["address"] == SBY_MAC and m["linkinfo"]["info_data"]["fail_over_mac"] == "active"
    assert g.udev(npf).get("NM_UNMANAGED") == "1"
    g.lab.wait_file(STATE_FILE, contains='"rule": "topology"')
    (pair,) = g.state()["pairs"]
    assert (pair["rule"], pair["mac"], pair["primary"], pair["slot"]) == ("topology", "set", npf, "33")
    assert "behind bridge" in pair["reason"] and f"({SWITCH_ID})" in pair["reason"]
    # the NIC elsewhere with the standby's MAC is still not taken
    assert any("already paired with" in r["reason"] for r in g.state()["refusals"] if x0 in r["links"])
    assert "master" not in g.link(x0)
