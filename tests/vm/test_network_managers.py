"""Issue 7: the guest's own network manager keeps working.  Debian's real
NetworkManager and systemd-networkd run in the guest with a real system bus;
the lab's peer serves DHCP through the standby's and the VF's backends."""

from __future__ import annotations

import time
from typing import Any

from lab import topology
from lab.agent import agent_argv
from lab.dhcp import DhcpServer
from lab.topology import SBY_MAC

from .helpers import GUEST_IP, Guest

LEASE = 20  # seconds: renewals every 10 s, so one follows every switch


def ns() -> int:
    return time.monotonic_ns()


def boot_with_dhcp(boot: Any) -> tuple[Guest, DhcpServer, str]:
    g: Guest = boot(topology.basic(with_other=False))
    dhcp = DhcpServer(g.lab.peer, lease_seconds=LEASE).attach()
    g.start_system_bus()
    return g, dhcp, g.lab.ifname("sb0")


def wait_ack(g: Guest, dhcp: DhcpServer, after: int, kind: str = "any", timeout: float = 60) -> Any:
    return g.lab.on_loop(dhcp.wait_for_ack(SBY_MAC, after_ns=after, kind=kind, timeout=timeout), timeout + 10)


def wait_ack_via(g: Guest, dhcp: DhcpServer, path: str, after: int, timeout: float = 60) -> Any:
    """The first ACK after `after` that went out over `path` (a renewal of
    the old lease over the standby may come first)."""

    def found(_: Any) -> bool:
        return any(e.path == path for e in dhcp.acks(SBY_MAC, after))

    g.lab.on_loop(g.lab.peer.wait_for(found, timeout, f"a DHCP ACK via {path}"), timeout + 10)
    return next(e for e in dhcp.acks(SBY_MAC, after) if e.path == path)


def wait_address(g: Guest, name: str, timeout: float = 60) -> None:
    g.lab.wait_net(
        [{"link": name, "attr": "inet", "has": GUEST_IP}], timeout=timeout, what=f"{GUEST_IP} on {name}"
    )


def assert_members_have_no_address(g: Guest, *members: str) -> None:
    for m in members:
        addrs = [a["local"] for a in g.link(m).get("addr_info", [])]
        assert addrs == [], f"{m} has {addrs}"  # IPv4, IPv6, link-local: none


def switch_and_renew(g: Guest, dhcp: DhcpServer, master: str, nsby: str, npf: str) -> None:
    """VF link down: the lease is renewed over the standby's path, same
    address; VF back: renewed over the VF's path."""
    t = ns()
    g.lab.set_link("vf0", up=False)
    g.wait_active(master, nsby)
    renew = wait_ack(g, dhcp, t, kind="renew")
    assert (renew.yiaddr, renew.path) == (GUEST_IP, "sb0")
    t = ns()
    g.lab.set_link("vf0", up=True)
    g.wait_active(master, npf)
    renew = wait_ack(g, dhcp, t, kind="renew")
    assert (renew.yiaddr, renew.path) == (GUEST_IP, "vf0")
    wait_address(g, master)


def switch_unplug_replug(g: Guest, dhcp: DhcpServer, master: str, nsby: str, npf: str) -> None:
    """Link down and up, then the VF unplugged and plugged at another slot:
    the master keeps its address throughout, the members never get one."""
    switch_and_renew(g, dhcp, master, nsby, npf)
    g.lab.unplug("vf0")
    g.wait_active(master, nsby)
    wait_address(g, master)
    g.lab.plug("vf0", port="p3")
    g.wait_active(master, npf)
    wait_address(g, master)
    assert_members_have_no_address(g, nsby, npf)


def test_networkmanager_keeps_the_lease_on_the_master(boot) -> None:  # type: ignore[no-untyped-def]
    g, dhcp, sby = boot_with_dhcp(boot)
    g.lab.spawn("nm", ["NetworkManager", "--debug"])  # no daemon, log to stderr
    t0 = ns()
    g.lab.run("nm-online", "--timeout", "90", timeout=100)  # NetworkManager's own "connected"
    first = wait_ack(g, dhcp, 0)
    assert first.yiaddr == GUEST_IP
    wait_address(g, sby)

    g.start_agent()
    t_plug = ns()
    vf_kernel_name = g.lab.plug("vf0")
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    g.wait_active(master, npf)
    # guestfail's profile for the master is active: NetworkManager runs DHCP
    # on the master, through the VF
    g.lab.wait_net(
        [{"link": master, "attr": "nm_state", "eq": "100"}], timeout=90, what=f"{master} connected"
    )
    ack = wait_ack_via(g, dhcp, "vf0", t_plug)
    assert ack.yiaddr == GUEST_IP
    wait_address(g, master)

    # NetworkManager configures no member.  The VF is unmanaged from the udev
    # event that announced it.  The standby was NetworkManager's own device:
    # guestfail took it over unmanaged and handed it back once enslaved, and
    # NetworkManager now holds it as a bond port (a port has no IP settings)
    # under guestfail's port profile: a bond with no port NetworkManager
    # knows never gets DHCP (see guestfail.integrations.nmclient).
    port = f"guestfail {master} port {nsby}"
    g.lab.wait_net(
        [
            {"link": npf, "attr": "nm_state_text", "eq": "10 (unmanaged)"},
            {"link": nsby, "attr": "nm_state_text", "eq": "100 (connected)"},
        ],
        timeout=60,
        what="the VF unmanaged, the standby NetworkManager's bond port",
    )
    listing = g.lab.run("nmcli", "-t", "-f", "DEVICE,STATE,CONNECTION", "device").out
    devices = {d: (st, c) for d, st, c in (line.split(":", 2) for line in listing.splitlines())}
    assert devices[npf] == ("unmanaged", "")
    assert devices[nsby] == ("connected", port)
    assert devices[master] == ("connected", f"guestfail {master}")
    slave_type = g.lab.run(
        "nmcli", "-g", "connection.slave-type,connection.master", "connection", "show", port
    )
    assert slave_type.out.split() == ["bond", master]
    assert_members_have_no_address(g, nsby, npf)
    # NetworkManager never took the VF: it was unmanaged in the event that announced it
    nm_log = g.lab.log_tail("nm", 100000)
    for name in (vf_kernel_name, npf):
        assert f"{name}): state change: unmanaged -> unavailable" not in nm_log
        assert f"({name}): Activation" not in nm_log
    # and never ran DHCP on the standby once it was a member
    assert f"dhcp4 ({nsby})" not in nm_log
    assert not [e for e in dhcp.find(after_ns=t0) if e.path == "vf0" and e.t_ns < t_plug]

    switch_unplug_replug(g, dhcp, master, nsby, npf)

    # NetworkManager restarted while the pair stands (the boot order when the
    # VF is there at boot: guestfail pairs before network-pre.target): it reads
    # the members' udev marks now, and guestfail hands the standby back as the
    # bond's port, so the master is connected again and renews its lease
    g.lab.signal("nm", "SIGTERM")
    assert g.lab.wait_proc("nm", timeout=60) is not None
    g.lab.spawn("nm-again", ["NetworkManager", "--debug"])
    g.lab.wait_net(
        [
            {"link": master, "attr": "nm_state", "eq": "100"},
            {"link": nsby, "attr": "nm_state_text", "eq": "100 (connected)"},
            {"link": npf, "attr": "nm_state_text", "eq": "10 (unmanaged)"},
        ],
        timeout=120,
        what="NetworkManager back: the master connected, the standby its port",
    )
    t = ns()
    assert wait_ack(g, dhcp, t, kind="renew").path == "vf0"
    assert_members_have_no_address(g, nsby, npf)

    # removing guestfail gives the plain setup back: NetworkManager's own
    # profile on the standby, which has its name back
    g.kill_agent("agent1", "SIGTERM")
    argv, env = agent_argv("release", "--all")
    out = g.lab.run(*argv, env=env, timeout=300).out  # TCG: Python starts slowly
    assert f"released {master}" in out and f"NetworkManager profile of {master}" in out
    t = ns()
    g.lab.wait_net(
        [{"link": sby, "attr": "nm_state", "eq": "100"}], timeout=90, what=f"{sby} connected again"
    )
    assert "linkinfo" not in g.link(sby)
    wait_address(g, sby)
    assert wait_ack(g, dhcp, t).path == "sb0"


NETWORKD = """[Match]
Name={name}

[Network]
DHCP=ipv4
IPv6AcceptRA=no
"""


def test_systemd_networkd_configures_the_master_by_its_name(boot) -> None:  # type: ignore[no-untyped-def]
    g, dhcp, sby = boot_with_dhcp(boot)
    g.lab.write_file(f"/etc/systemd/network/50-{sby}.network", NETWORKD.format(name=sby))
    g.lab.run("mkdir", "-p", "/run/systemd/netif")
    g.lab.run("chown", "systemd-network:systemd-network", "/run/systemd/netif")
    g.lab.spawn("networkd", ["/lib/systemd/systemd-networkd"])
    first = wait_ack(g, dhcp, 0)
    assert first.yiaddr == GUEST_IP
    wait_address(g, sby)

    g.start_agent()
    t_plug = ns()
    g.lab.plug("vf0")
    master, nsby, npf = sby, f"{sby}nsby", f"{sby}npf"
    g.wait_active(master, npf)
    # the user's .network matches the master by name: networkd runs DHCP on it
    ack = wait_ack_via(g, dhcp, "vf0", t_plug)
    assert ack.yiaddr == GUEST_IP
    wait_address(g, master)
    links = {}
    for line in g.lab.run("networkctl", "list", "--no-legend", "--no-pager").out.splitlines():
        cols = line.split()
        links[cols[1]] = cols[-1]
    assert links[nsby] == links[npf] == "unmanaged", links
    assert links[master] in ("configured", "configuring"), links
    assert_members_have_no_address(g, nsby, npf)

    switch_unplug_replug(g, dhcp, master, nsby, npf)

    g.kill_agent("agent1", "SIGTERM")
    argv, env = agent_argv("release", "--all")
    g.lab.run(*argv, env=env, timeout=300)  # TCG: Python starts slowly
    t = ns()
    assert "linkinfo" not in g.link(sby)
    wait_address(g, sby)
    assert wait_ack(g, dhcp, t).path == "sb0"
