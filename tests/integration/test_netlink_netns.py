"""guestfail's netlink adapter against this host's kernel, inside a network
namespace the test makes (veth pairs: renames, altnames, addresses, routes,
carrier through the peer, and an event overrun).  This kernel has no bonding:
bonds are the vm tier's."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import threading
import time
from typing import Any, Callable, TypeVar

import pytest

from guestfail.agent.executor import Executor
from guestfail.backends.bond import BondBackend
from guestfail.core.config import Config
from guestfail.core.model import Address, Route, Snapshot
from guestfail.core.steps import MoveAddresses
from guestfail.system.linkevents import LinkMonitor
from guestfail.system.netlink import Netlink, NetlinkFailure, ifindex_of
from guestfail.system.rtnl import movable_route
from guestfail.system.sysfs import Sysfs

pytestmark = pytest.mark.netns
T = TypeVar("T")
CLONE_NEWNET = 0x40000000


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that joined network namespace `name` (threads have
    their own namespace; the test process stays where it is)."""
    result: list[Any] = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            result.append(fn())
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(60)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


def veth(nl: Netlink, a: str, b: str) -> tuple[int, int]:
    nl.ipr.link("add", ifname=a, kind="veth", peer={"ifname": b})
    ia, ib = ifindex_of(nl, a), ifindex_of(nl, b)
    assert ia is not None and ib is not None
    return ia, ib


def test_rename_altname_addresses_and_routes(netns: str) -> None:
    def body() -> None:
        nl = Netlink()
        try:
            a, _b = veth(nl, "gfa", "gfb")
            nl.set_name(a, "gfa", "gfa2")
            nl.add_altname(a, "gfa2", "gfa")
            link = nl.get_link(a)
            assert link is not None and (link.name, link.altnames) == ("gfa2", ("gfa",))
            holder = nl.holder_of("gfa")
            assert holder is not None and holder.ifindex == a
            nl.del_altname(a, "gfa2", "gfa")
            assert nl.holder_of("gfa") is None
            nl.set_state(a, "gfa2", up=True)
            addr = Address(socket.AF_INET, "192.0.2.7", 24)
            nl.add_address(a, "gfa2", addr)
            nl.add_address(a, "gfa2", addr)  # again: no error
            route = Route(socket.AF_INET, "198.51.100.0", 24, gateway="192.0.2.1", protocol=4)
            nl.add_route(a, "gfa2", route)
            dump = nl.dump()
            assert (a, "192.0.2.7") in [(i, x.address) for i, x in dump.addresses]
            assert any(oif == a and r.dst == "198.51.100.0" and r.protocol == 4 for oif, r in dump.routes)
            nl.del_address(a, "gfa2", addr)
            nl.del_address(a, "gfa2", addr)  # already gone: no error
            with pytest.raises(NetlinkFailure) as e:
                nl.set_name(a, "gfa2", "gfb")  # taken by the peer
            assert e.value.code == errno.EEXIST
            assert "rename gfa2 to gfb" in str(e.value) and "EEXIST" in str(e.value)
            with pytest.raises(NetlinkFailure, match=r"^create bond gfbond: ") as no_bond:
                nl.create_bond(
                    "gfbond",
                    "02:00:00:00:00:11",
                    1500,
                    miimon=100,
                    fail_over_mac=0,
                    num_peer_notif=1,
                    all_slaves_active=0,
                )
            assert no_bond.value.code == errno.EOPNOTSUPP  # this kernel has no bonding
        finally:
            nl.close()

    in_netns(netns, body)


def test_link_monitor_sees_carrier_through_the_peer(netns: str) -> None:
    def body() -> None:
        nl = Netlink()
        mon = LinkMonitor()
        try:
            a, b = veth(nl, "gfa", "gfb")
            nl.set_state(a, "gfa", up=True)
            nl.set_state(b, "gfb", up=True)
            deadline = time.monotonic() + 10

            def wait(pred: Callable[[Any], bool]) -> Any:
                while time.monotonic() < deadline:
                    import select

                    select.select([mon.fileno()], [], [], deadline - time.monotonic())
                    for ev in mon.read(time.monotonic_ns).events:
                        if pred(ev):
                            return ev
                raise AssertionError("no such event")

            up = wait(lambda ev: ev.link.ifindex == a and ev.link.lower_up)
            assert up.link.carrier
            nl.set_state(b, "gfb", up=False)  # the peer goes: a loses carrier
            down = wait(lambda ev: ev.link.ifindex == a and not ev.link.lower_up)
            assert down.link.up and not down.deleted
            nl.delete_link(b, "gfb")
            gone = wait(lambda ev: ev.deleted and ev.link.ifindex in (a, b))
            assert gone.deleted
        finally:
            mon.close()
            nl.close()

    in_netns(netns, body)


def test_an_event_storm_overruns_a_small_buffer_and_says_so(netns: str) -> None:
    """The kernel drops events for a full socket: the read says so, and
    gives the events it read before the overrun (issue 16 #12: they were
    dropped with it)."""

    def body() -> None:
        nl = Netlink()
        mon = LinkMonitor(rcvbuf=4096)
        mon.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            for i in range(40):
                veth(nl, f"s{i}a", f"s{i}b")
            batch = mon.read(time.monotonic_ns)
            assert batch.lost == "netlink socket overrun"
            assert batch.events and all(ev.link.name.startswith("s") for ev in batch.events)
            assert mon.read(time.monotonic_ns).lost == ""  # the socket works on
        finally:
            mon.close()
            nl.close()

    in_netns(netns, body)


def ip(*args: str) -> None:
    """iproute2, as the guest's own tools (a DHCP client, the admin) set things up."""
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_moving_addresses_and_routes_keeps_every_detail(netns: str) -> None:
    """What MoveAddresses carries from a standby to its master: flags,
    lifetimes, broadcast, peer and label of each address; metric, table,
    metrics, preference, onlink and every path of a multipath route."""

    def body() -> None:
        nl = Netlink()
        try:
            a, _ = veth(nl, "gfa", "gfb")  # the standby
            c, _ = veth(nl, "gfc", "gfd")  # the master
            e, _ = veth(nl, "gfe", "gff")  # another path of a multipath route
            for dev in ("gfa", "gfb", "gfc", "gfd", "gfe", "gff"):
                ip("link", "set", dev, "up")
            ip("addr", "add", "192.0.2.2/25", "brd", "192.0.2.127", "dev", "gfa", "label", "gfa:web",
               "valid_lft", "600", "preferred_lft", "300")  # fmt: skip
            ip("addr", "add", "192.0.2.9", "peer", "192.0.2.10/32", "dev", "gfa")
            ip("addr", "add", "192.0.2.130/25", "dev", "gfe")
            ip("-6", "addr", "add", "2001:db8::2/64", "dev", "gfa", "nodad", "noprefixroute")
            ip("-6", "addr", "add", "2001:db8:1::2/64", "dev", "gfa", "nodad", "valid_lft", "900",
               "preferred_lft", "800")  # fmt: skip
            ip("route", "add", "default", "via", "192.0.2.1", "dev", "gfa", "metric", "50")
            ip("route", "add", "198.51.100.0/24", "via", "192.0.2.1", "dev", "gfa", "mtu", "1400",
               "table", "100")  # fmt: skip
            ip("route", "add", "203.0.113.0/24", "via", "198.51.100.1", "dev", "gfa", "onlink")
            ip("route", "add", "203.0.113.128/25", "nexthop", "via", "192.0.2.1", "dev", "gfa", "weight", "2",
               "nexthop", "via", "192.0.2.129", "dev", "gfe", "weight", "1")  # fmt: skip
            ip("-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:1::1", "dev", "gfa", "pref", "high")
            ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "gfa", "metric", "20")

            before = nl.dump()
            links = {x.ifindex: x for x in before.links}
            snap = Snapshot(links, tuple((o, r) for o, r in before.routes if movable_route(r)))
            moving = tuple(x for i, x in before.addresses if i == a and not x.link_local)
            routes = tuple(snap.routes_via(a))
            assert len(moving) == 4 and len(routes) == 6
            Executor(nl, BondBackend(Config(), nl, Sysfs())).run_steps(
                "t", [MoveAddresses(a, c, moving, routes)], links
            )
            after = nl.dump()

            got = {x.key: x for i, x in after.addresses if i == c and not x.link_local}
            for old in moving:
                new = got.pop(old.key)
                assert (new.flags, new.broadcast, new.peer, new.scope) == (
                    old.flags,
                    old.broadcast,
                    old.peer,
                    old.scope,
                ), old
                for was, now in ((old.valid_lft, new.valid_lft), (old.preferred_lft, new.preferred_lft)):
                    assert (was is None) == (now is None) and (was is None or was - 30 < now <= was)  # type: ignore[operator]
            assert got == {}
            labels = {x.address: x.label for i, x in after.addresses if i == c and x.family == socket.AF_INET}
            assert labels == {"192.0.2.2": "gfc:web", "192.0.2.9": "gfc"}
            assert not [x for i, x in after.addresses if i == a and not x.link_local]

            want = {r.key: r.moved(a, c) for r in routes}
            have = {r.key: r for o, r in after.routes if movable_route(r) and r.uses(c, o)}
            assert have == want
            multipath = next(r for r in have.values() if r.nexthops)
            assert {(h.oif, h.gateway, h.hops) for h in multipath.nexthops} == {
                (c, "192.0.2.1", 1),
                (e, "192.0.2.129", 0),
            }
        finally:
            nl.close()

    in_netns(netns, body)


def test_network_managers_prefix_route_moves_with_its_address(netns: str) -> None:
    """NetworkManager adds its IPv4 addresses with noprefixroute and the
    prefix route itself, as protocol "kernel" with its own metric: that
    route is not the kernel's own and moves (and goes first), or the default
    route's gateway is unreachable where the address went (ENETUNREACH)."""

    def body() -> None:
        nl = Netlink()
        try:
            a, _ = veth(nl, "gfa", "gfb")
            c, _ = veth(nl, "gfc", "gfd")
            for dev in ("gfa", "gfb", "gfc", "gfd"):
                ip("link", "set", dev, "up")
            ip("addr", "add", "192.0.2.2/24", "dev", "gfa", "noprefixroute")
            ip("route", "add", "192.0.2.0/24", "dev", "gfa", "proto", "kernel", "scope", "link", "src",
               "192.0.2.2", "metric", "100")  # fmt: skip
            ip("route", "add", "default", "via", "192.0.2.1", "dev", "gfa", "proto", "dhcp", "metric", "100")
            before = nl.dump()
            links = {x.ifindex: x for x in before.links}
            held = [x for i, x in before.addresses if i == a]  # as observe() sees them
            addrs = [x for x in held if not x.link_local]
            snap = Snapshot(links, tuple((o, r) for o, r in before.routes if movable_route(r, held)))
            routes = tuple(snap.routes_via(a))
            assert sorted(r.dst for r in routes) == ["", "192.0.2.0"]
            Executor(nl, BondBackend(Config(), nl, Sysfs())).run_steps(
                "t", [MoveAddresses(a, c, tuple(addrs), routes)], links
            )
            after = nl.dump()
            moved = [x for i, x in after.addresses if i == c]
            have = {r.key for o, r in after.routes if movable_route(r, moved) and r.uses(c, o)}
            assert have == {r.moved(a, c).key for r in routes}
        finally:
            nl.close()

    in_netns(netns, body)
