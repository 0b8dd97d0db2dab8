"""Issue 11.2 and 11.3 (hot-plug): each distribution's network stack as it
ships, with the .deb installed and guestfail started by systemd.

One boot per (distribution, stack): the standby alone at boot gets its address
from the lab's DHCP server (20 s leases); guestfail.service is running; the VF
is hot-plugged while the lab's peer streams 200 packets/s: paired, the address
on the master, loss only while the VF comes up.  Then on the wire: two
renewals through the master (each over the path of the active member, in the
renewing state), no DHCP message over a member's own path and none
rebinding (a client that misses its ACKs rebinds), the lease kept past its
end; a switch (the
VF's link down) announces the address over the standby and a renewal follows
there; the VF back; the VF unplugged and plugged into another slot.  Every
boot: no failed unit, no ordering cycle, the units verify.
"""

from __future__ import annotations

from typing import Any

import pytest

from lab import image
from lab.debs import Debs
from lab.dhcp import REBINDING, RENEWING
from lab.topology import SBY_MAC

from . import flavours
from .conftest import build_image, record
from .helpers import (
    GUEST_IP,
    LEASE,
    NPF,
    NSBY,
    SBY,
    boot_checks,
    chain_seconds,
    dhcp_server,
    ipv4,
    kind,
    ns,
    replies_on,
    stream_start,
    stream_stop,
    topology,
    wait_ack,
    wait_active,
    wait_address,
    wait_peer,
)

CASES = [(d, s) for d in image.SUITES for s in image.STACKS]


@pytest.mark.parametrize(("distro", "stack"), CASES, ids=[f"{d}-{s}" for d, s in CASES])
def test_stack_keeps_the_dhcp_address_on_the_master(boot: Any, debs: Debs, distro: str, stack: str) -> None:
    img = build_image(debs, flavours.stack(distro, stack))
    servers: list[Any] = []
    b = boot(img, topology(), before_start=lambda lab: servers.append(dhcp_server(lab)))
    lab, dhcp = b.lab, servers[0]

    checks = boot_checks(lab)
    # the standby's address, from the stack's own DHCP client, before guestfail pairs anything
    first = wait_ack(lab, dhcp, 0)
    assert (first.yiaddr, first.path) == (GUEST_IP, "sb0")
    wait_address(lab, SBY)
    assert lab.run("systemctl", "is-active", "guestfail.service", check=False).out.strip() == "active"
    b.mark("standby configured")

    # the VF arrives: paired under the standby's name, the address on the master
    stream = stream_start(lab)
    replies_on(lab, stream, "sb0", 50)
    t_plug = ns()
    lab.plug("vf0", wait=False)
    wait_active(lab, SBY, NPF)
    t_paired = ns()
    wait_address(lab, SBY)
    assert kind(lab, SBY) == "bond"
    assert ipv4(lab, NSBY) == [] and ipv4(lab, NPF) == []
    t_carrying = ns()
    replies_on(lab, stream, "vf0", 100)  # what was sent before t_carrying had time to come back
    b.mark("paired")
    hotplug = stream.report().window(t_plug, t_carrying)
    # the VF's name was udev's, from its slot: no rule of the stack (netplan's
    # set-name matches the standby's MAC, which the VF shares) renamed it
    altnames = lab.run("ip", "-j", "link", "show", "dev", NPF).out
    assert "ens5001" in altnames, altnames
    renames = [x for x in lab.journal("-o", "cat").splitlines() if "Failed to rename" in x]
    assert renames == [], renames

    # two renewals through the master, over the VF's path, in the renewing state
    r1 = wait_ack(lab, dhcp, t_paired, kind="renew", timeout=LEASE * 2)
    r2 = wait_ack(lab, dhcp, r1.t_ns + 1, kind="renew", timeout=LEASE * 2)
    for r in (r1, r2):
        assert (r.yiaddr, r.path, r.state) == (GUEST_IP, "vf0", RENEWING), r
    b.mark("two renewals")

    # a switch after the DHCP address arrived announces that address
    t_switch = ns()
    lab.set_link("vf0", up=False)
    wait_active(lab, SBY, NSBY)
    wait_peer(
        lab,
        lambda p: any(a.ip == GUEST_IP and a.t_ns >= t_switch for a in p.announcements["sb0"]),
        30,
        f"an announcement of {GUEST_IP} over sb0",
    )
    r3 = wait_ack(lab, dhcp, t_switch, kind="renew", timeout=LEASE * 2)
    assert (r3.yiaddr, r3.path, r3.state) == (GUEST_IP, "sb0", RENEWING), r3
    t_back = ns()
    lab.set_link("vf0", up=True)
    wait_active(lab, SBY, NPF)
    replies_on(lab, stream, "vf0", 50)
    wait_address(lab, SBY)
    b.mark("switched and back")

    # the VF removed (native PCIe hot-plug, the attention button) and plugged
    # back in another slot: paired again, the address kept throughout
    t_unplug = ns()
    lab.unplug("vf0")
    wait_active(lab, SBY, NSBY)
    wait_address(lab, SBY)
    lab.plug("vf0", port="p3", wait=False)
    wait_active(lab, SBY, NPF)
    t_replugged = ns()
    replies_on(lab, stream, "vf0", 50)
    wait_address(lab, SBY)
    b.mark("unplugged and replugged")
    report = stream_stop(lab, stream)

    # on the wire since pairing: DHCP only through the master, over the
    # active member's path (a client bound to a member sends over that
    # member's own path), and never rebinding (a client that misses its
    # ACKs rebinds at T2)
    since = [e for e in dhcp.find(after_ns=t_paired) if e.received]
    for e in since:
        on_standby = t_switch <= e.t_ns < t_back or t_unplug <= e.t_ns < t_replugged
        active_path = "sb0" if on_standby else "vf0"
        assert e.path == active_path, f"{e.kind} over {e.path} while {active_path} was active: {e}"
        assert e.state != REBINDING, e
    assert dhcp.leases[SBY_MAC][0] == GUEST_IP
    assert ipv4(lab, SBY) == [GUEST_IP]
    assert ipv4(lab, NSBY) == [] and ipv4(lab, NPF) == []

    record(
        {
            "kind": "stack",
            "flavour": img.flavour.name,
            "marks": b.marks,
            "hotplug_lost": hotplug.lost,
            "hotplug_sent": hotplug.sent,
            "stream": {"sent": report.sent, "lost": report.lost},
            "network_online_s": chain_seconds(checks["critical_chain"], "network-online.target"),
            "guestfail_s": chain_seconds(checks["critical_chain"], "guestfail.service"),
            "critical_chain": checks["critical_chain"],
            "time": checks["time"],
        }
    )
    # the hot-plug row: a second of the stream (200 packets) while the VF comes
    # up; with ifupdown's allow-hotplug, systemd runs ifdown when the standby
    # gives its name up (the lease released, the address flushed) and
    # guestfail has ifupdown bring the master up: one DHCP exchange more (5 s)
    bound = 1000 if stack == "ifupdown" else 200
    assert hotplug.lost <= bound, hotplug
