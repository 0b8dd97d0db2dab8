"""The lab's scenarios 1, 2, 3 and 6 with `backend = "team"`: the guest
kernel's team driver, Debian's teamd driven over a real system bus."""

from __future__ import annotations

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


def test_team_pairs_a_hotplugged_vf(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    stream = stream_start(g.lab)
    master, nsby, npf = paired(g)
    m = g.link(master)
    assert m["linkinfo"]["info_kind"] == "team"
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
    stream_stop(g.lab, stream)
    (pair,) = g.status()["pairs"]
    assert (pair["kind"], pair["state"], pair["primary"]) == ("team", "healthy", npf)


def test_team_carrier_loss_and_return(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, nsby, npf = paired(g)
    stream = stream_start(g.lab)
    replies_on(g.lab, stream, "vf0", 50)
    g.lab.set_link("vf0", up=False)
    g.wait_team_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    g.lab.set_link("vf0", up=True)
    g.wait_team_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)
    stream_stop(g.lab, stream)
    (pair,) = g.status()["pairs"]
    assert pair["state"] == "healthy"
    assert any(s["to"] == nsby and "lost carrier" in s["reason"] for s in pair["history"])


def test_team_unplug_and_replug_elsewhere(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, nsby, npf = paired(g)
    stream = stream_start(g.lab)
    g.lab.unplug("vf0")
    g.wait_team_active(master, nsby)
    replies_on(g.lab, stream, "sb0", 100)
    assert sorted(g.team_state(master)["ports"]) == [nsby]
    g.lab.plug("vf0", port="p3")
    g.wait_team_active(master, npf)
    replies_on(g.lab, stream, "vf0", 100)
    stream_stop(g.lab, stream)
    teams = [n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "team"]
    assert teams == [master]


def test_team_agent_killed_and_restarted_adopts(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, _nsby, npf = paired(g)
    ifindex = g.link(master)["ifindex"]
    teamd_pid = g.lab.run("cat", "/run/teamd/" + master + ".pid").out.strip()
    stream = stream_start(g.lab)
    replies_on(g.lab, stream, "vf0", 50)
    g.kill_agent("agent1")
    g.start_agent()
    replies_on(g.lab, stream, "vf0", 100)
    report = stream_stop(g.lab, stream)
    assert report.lost == 0
    teams = [n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "team"]
    assert teams == [master]
    assert g.link(master)["ifindex"] == ifindex
    assert g.lab.run("cat", "/run/teamd/" + master + ".pid").out.strip() == teamd_pid
    g.wait_team_active(master, npf)


def test_teamd_killed_is_noticed_and_restarted_on_the_same_master(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic())
    master, _nsby, npf = paired(g)
    ifindex = g.link(master)["ifindex"]
    pid = g.lab.run("cat", "/run/teamd/" + master + ".pid").out.strip()
    g.lab.run("kill", "-9", pid)
    # the agent notices, says so, and starts teamd again taking over the device
    g.lab.wait_file("/run/guestfail/state.json", contains=f"teamd for {master} exited")
    g.wait_team_active(master, npf)
    new_pid = g.lab.run("cat", "/run/teamd/" + master + ".pid").out.strip()
    assert new_pid != pid
    teams = [n for n, e in g.links().items() if e.get("linkinfo", {}).get("info_kind") == "team"]
    assert teams == [master]
    assert g.link(master)["ifindex"] == ifindex
    g.lab.wait_file("/run/guestfail/state.json", contains='"health": "healthy"')
