"""The lab's scenarios with the bond backend (issue 2's list), asserted on the
guest kernel (ip, sysfs, udev) and the peer.  A pair's life (hot-plug, carrier
loss and return, the agent killed, unplug and replug elsewhere) runs as steps
of one test in one guest: a boot is most of a scenario's time under TCG.
Topologies of their own (two standbys, QEMU's failover, a VF at boot, the
from-start policy) boot their own guest."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lab import topology
from lab.topology import SBY_MAC

from .helpers import Guest, replies_on, stream_start, stream_stop

SERIAL_CONFIG = """
[[standby]]
match = {{ name = "{name}" }}
serial = 5001
"""


def bonds(g: Guest) -> list[str]:
    return [n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "bond"]


def hotplugged_vf_is_paired_under_a_bond(g: Guest, stream: Any) -> tuple[str, str, str]:
    sby = g.lab.ifname("sb0")
    g.setup_standby()
    g.start_agent()
    replies_on(g.lab, stream, "sb0", 20)  # the standby carries the traffic before
    vf_kernel_name = g.lab.plug("vf0")
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    g.wait_active(master, npf)

    m = g.link(master)
    assert m["linkinfo"]["info_kind"] == "bond"
    data = m["linkinfo"]["info_data"]
    assert (data["mode"], data["primary"], data["primary_reselect"]) == ("active-backup", npf, "always")
    assert data["miimon"] == 100
    assert m["address"] == SBY_MAC  # the standby's identity
    assert m["ifalias"].startswith("guestfail:1 ")
    assert [a["local"] for a in m["addr_info"] if a["family"] == "inet"] == ["192.0.2.2"]
    for member in (g.link(nsby), g.link(npf)):
        assert member["master"] == master
        assert "SLAVE" in member["flags"]
        assert not [a for a in member.get("addr_info", []) if a["family"] == "inet"]
    assert vf_kernel_name in g.link(npf).get("altnames", [])
    routes = g.lab.run("ip", "-j", "route", "show", "198.51.100.0/24").out
    assert f'"dev":"{master}"' in routes.replace(" ", "")

    # the udev marks that keep network managers away
    for name in (nsby, npf):
        props = g.udev(name)
        assert props.get("NM_UNMANAGED") == "1", name
        assert props.get("ID_NET_MANAGED_BY") == "io.github.guestfail1", name

    replies_on(g.lab, stream, "vf0", 100)  # the peer now gets the replies over the VF's path
    (pair,) = g.status()["pairs"]
    assert (pair["master"], pair["state"], pair["active"], pair["rule"]) == (master, "healthy", npf, "mac")
    return master, nsby, npf


def vf_carrier_loss_moves_traffic_to_the_standby_and_back(
    g: Guest, stream: Any, master: str, nsby: str, npf: str
) -> None:
    g.lab.set_link("vf0", up=False)
    g.wait_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    assert g.link(npf)["operstate"] == "DOWN"

    g.lab.set_link("vf0", up=True)
    g.wait_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)

    (pair,) = g.status()["pairs"]
    assert pair["state"] == "healthy"
    moves = [(s["from"], s["to"]) for s in pair["history"]]
    assert (npf, nsby) in moves and moves[-1] == (nsby, npf)
    lost_carrier = next(s for s in pair["history"] if s["to"] == nsby)
    assert "lost carrier" in lost_carrier["reason"]
    assert lost_carrier["latency_ms"] is not None and lost_carrier["latency_ms"] >= 0


def agent_killed_and_restarted_adopts_its_master(g: Guest, stream: Any, master: str, npf: str) -> None:
    ifindex = g.link(master)["ifindex"]
    t0 = time.monotonic_ns()  # the peer stamps its packets with the same clock
    assert g.kill_agent("agent1") == -9
    g.start_agent()
    t1 = time.monotonic_ns()
    replies_on(g.lab, stream, "vf0", 100)  # every packet sent before t1 has had its time
    assert bonds(g) == [master]
    assert g.link(master)["ifindex"] == ifindex
    assert g.link(master)["linkinfo"]["info_data"]["active_slave"] == npf
    # the kernel kept forwarding while the agent was away: nothing lost
    assert stream.report().window(t0, t1).lost == 0
    assert g.status()["pairs"][0]["state"] == "healthy"


def unplug_keeps_config_and_replug_elsewhere_pairs_again(
    g: Guest, stream: Any, master: str, nsby: str, npf: str
) -> None:
    g.lab.unplug("vf0")
    g.wait_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    m = g.link(master)
    assert [a["local"] for a in m["addr_info"] if a["family"] == "inet"] == ["192.0.2.2"]
    assert g.lab.run("ip", "-j", "link", "show", npf, check=False).rc != 0
    (pair,) = g.status()["pairs"]
    assert (pair["state"], pair["phase"], pair["primary"]) == ("degraded", "standby-only", None)

    new_kernel_name = g.lab.plug("vf0", port="p3")  # another slot, another PCI address
    g.wait_active(master, npf)
    assert new_kernel_name in g.link(npf).get("altnames", [])
    replies_on(g.lab, stream, "vf0", 100)
    assert bonds(g) == [master]


@pytest.mark.basic
def test_bond_backend_through_a_pairs_life(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    untouched = g.out_of_scope()
    stream = stream_start(g.lab)
    master, nsby, npf = hotplugged_vf_is_paired_under_a_bond(g, stream)
    vf_carrier_loss_moves_traffic_to_the_standby_and_back(g, stream, master, nsby, npf)
    agent_killed_and_restarted_adopts_its_master(g, stream, master, npf)
    unplug_keeps_config_and_replug_elsewhere_pairs_again(g, stream, master, nsby, npf)
    report = stream_stop(g.lab, stream)
    assert report.replies_per_path.get("vf0", 0) >= 400
    # the other NIC of the guest was never touched, whatever happened to the pair
    assert g.out_of_scope() == untouched


def test_serial_ties_the_vf_to_the_second_of_two_standbys_with_one_mac(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.serial_pair())
    sb0, sb1 = g.lab.ifname("sb0"), g.lab.ifname("sb1")
    assert g.lab.run("cat", "/sys/bus/pci/slots/5001/address").out.strip()

    # without the serial the MAC is ambiguous: refused, nothing built
    first = g.start_agent("")
    vf_name = g.lab.plug("vf0")
    g.lab.wait_file("/run/guestfail/state.json", contains=f'"{vf_name}"')
    doc = g.status()
    assert doc["pairs"] == []
    assert any(vf_name in r["links"] and "2 standbys" in r["reason"] for r in doc["refusals"]), doc
    assert doc["health"] == "degraded"
    g.kill_agent(first, "SIGTERM")

    g.start_agent(SERIAL_CONFIG.format(name=sb1))
    g.wait_active(sb1, f"{sb1}npf")
    (pair,) = g.status()["pairs"]
    assert (pair["master"], pair["rule"]) == (sb1, "serial")
    assert "slot 5001" in pair["reason"]
    assert g.link(sb0).get("linkinfo") is None  # the other standby is untouched
    assert "master" not in g.link(sb0)


def test_qemu_failover_is_left_to_the_kernel(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic(qemu_failover=True))
    g.lab.plug("vf0", wait=False)
    g.lab.wait_nic("vf0")
    before = {n: (e.get("master"), e.get("linkinfo", {}).get("info_kind")) for n, e in g.links().items()}
    g.start_agent()
    doc = g.status()
    assert doc["pairs"] == []
    (km,) = doc["kernel_managed"]
    assert km["kind"] == "net_failover"
    assert sorted(km["members"]) == sorted(n for n, e in g.links().items() if e.get("master") == km["master"])
    after = {n: (e.get("master"), e.get("linkinfo", {}).get("info_kind")) for n, e in g.links().items()}
    assert after == before
    assert "kernel-managed (left alone):" in g.guestfail("status", "--no-dbus").out


@pytest.mark.basic
def test_vf_present_before_the_agent_starts_is_paired_at_start(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic(vf_at_boot=True))
    sby = g.setup_standby()
    g.lab.run("udevadm", "settle")  # the VF is there and udev is done with it
    g.start_agent()
    # READY=1 comes after the first reconciliation: paired already, no waiting
    assert g.link(sby)["linkinfo"]["info_data"]["active_slave"] == f"{sby}npf"
    (pair,) = g.status()["pairs"]
    assert pair["primary"] == f"{sby}npf"


def test_from_start_builds_the_master_before_any_vf(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic(with_other=False))
    sby = g.setup_standby()
    g.start_agent('[agent]\nmaster_policy = "from-start"\n')
    # READY=1: the master exists, on the standby alone, with the address
    master = g.link(sby)
    assert master["linkinfo"]["info_kind"] == "bond"
    assert master["linkinfo"]["info_data"]["active_slave"] == f"{sby}nsby"
    assert [a["local"] for a in master["addr_info"] if a["family"] == "inet"] == ["192.0.2.2"]
    (pair,) = g.status()["pairs"]
    assert (pair["phase"], pair["state"], pair["primary"]) == ("standby-only", "degraded", None)
    g.lab.plug("vf0")
    g.wait_active(sby, f"{sby}npf")
    assert g.status()["pairs"][0]["state"] == "healthy"
