"""The lab's scenarios 1, 2, 3 and 6 with `backend = "team"`: the guest
kernel's team driver, Debian's teamd driven over a real system bus.

One guest for the whole life of a pair (booting one per scenario cost most of
the tier's time): each step starts from where the one before left the pair,
and says which scenario it is when it fails."""

from __future__ import annotations

import time
from typing import Any

from lab import topology

from .helpers import Guest, replies_on, stream_start, stream_stop

TEAM = '[agent]\nbackend = "team"\n'


def paired(g: Guest) -> tuple[str, str, str]:
    sby = g.setup_standby()
    g.start_system_bus()
    g.start_agent(TEAM)
    g.lab.plug("vf0")
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    g.wait_team_active(master, npf)
    return master, nsby, npf


def teams(g: Guest) -> list[str]:
    return [n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "team"]


def teamd_pid(g: Guest, master: str) -> str:
    return str(g.lab.run("cat", "/run/teamd/" + master + ".pid").out.strip())


def pairs_a_hotplugged_vf(g: Guest, stream: Any) -> tuple[str, str, str]:
    master, nsby, npf = paired(g)
    m = g.link(master)
    assert m["linkinfo"]["info_kind"] == "team"
    # the standby's identity: made by teamd, the master could keep a MAC
    # udev's MACAddressPolicy gave it (and its DHCP client another lease)
    assert m["address"] == "02:00:00:00:00:11"
    assert m["ifalias"].startswith("guestfail:1 ")
    assert [a["local"] for a in m["addr_info"] if a["family"] == "inet"] == ["192.0.2.2"]
    state = g.team_state(master)
    assert state["setup"]["runner_name"] == "activebackup"
    assert sorted(state["ports"]) == sorted([nsby, npf])
    for port in (nsby, npf):
        assert g.link(port)["master"] == master
        props = g.udev(port)
        # team ports get no IFF_SLAVE: the marks keep network managers away
        assert props.get("NM_UNMANAGED") == "1", port
        assert props.get("ID_NET_MANAGED_BY") == "io.github.guestfail1", port
    replies_on(g.lab, stream, "vf0", 100)
    (pair,) = g.status()["pairs"]
    assert (pair["kind"], pair["state"], pair["primary"]) == ("team", "healthy", npf)
    return master, nsby, npf


def carrier_loss_and_return(g: Guest, stream: Any, master: str, nsby: str, npf: str) -> None:
    g.lab.set_link("vf0", up=False)
    g.wait_team_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    g.lab.set_link("vf0", up=True)
    g.wait_team_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)
    (pair,) = g.status()["pairs"]
    assert pair["state"] == "healthy"
    assert any(s["to"] == nsby and "lost carrier" in s["reason"] for s in pair["history"])


def agent_killed_and_restarted_adopts(g: Guest, stream: Any, master: str, npf: str) -> None:
    ifindex = g.link(master)["ifindex"]
    pid = teamd_pid(g, master)
    replies_on(g.lab, stream, "vf0", 50)
    t0 = time.monotonic_ns()  # the peer stamps its packets with the same clock
    g.kill_agent("agent1")
    g.start_agent()
    t1 = time.monotonic_ns()
    replies_on(g.lab, stream, "vf0", 100)  # every packet sent before t1 has had its time
    assert stream.report().lost_between(t0, t1) == 0
    assert teams(g) == [master]
    assert g.link(master)["ifindex"] == ifindex
    assert teamd_pid(g, master) == pid  # teamd outlived the agent
    g.wait_team_active(master, npf)


def teamd_killed_is_noticed_and_restarted(g: Guest, master: str, npf: str) -> None:
    ifindex = g.link(master)["ifindex"]
    pid = teamd_pid(g, master)
    g.lab.run("kill", "-9", pid)
    # the agent notices, says so, and starts teamd again taking over the
    # device (its log: the state file shows the error only until the
    # reconciliation a moment later has started teamd again)
    g.lab.wait_file(
        g.lab.guest_path(f"agent{g.agents}.log"), contains=f"{master}: teamd exited; starting it again"
    )
    g.wait_team_active(master, npf)
    assert teamd_pid(g, master) != pid
    assert teams(g) == [master]
    assert g.link(master)["ifindex"] == ifindex
    g.lab.wait_file("/run/guestfail/state.json", contains='"health": "healthy"')


def unplug_and_replug_elsewhere(g: Guest, stream: Any, master: str, nsby: str, npf: str) -> None:
    g.lab.unplug("vf0")
    g.wait_team_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    assert sorted(g.team_state(master)["ports"]) == [nsby]
    g.lab.plug("vf0", port="p3")
    g.wait_team_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)
    assert teams(g) == [master]


def test_team_backend_through_a_pairs_life(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    stream = stream_start(g.lab)
    master, nsby, npf = pairs_a_hotplugged_vf(g, stream)
    carrier_loss_and_return(g, stream, master, nsby, npf)
    agent_killed_and_restarted_adopts(g, stream, master, npf)
    teamd_killed_is_noticed_and_restarted(g, master, npf)
    unplug_and_replug_elsewhere(g, stream, master, nsby, npf)
    stream_stop(g.lab, stream)
