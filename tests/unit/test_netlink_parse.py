"""Recorded RTM_NEWLINK dumps from the lab's guest kernel (tests/data),
replayed through pyroute2's parser and guestfail's."""

from __future__ import annotations

import socket
import struct

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from guestfail.core.model import Address, Link, Route
from guestfail.system.netlink import Dump
from guestfail.system.rtnl import movable_route, parse_addr, parse_link, split_messages

from .conftest import DATA


def load_links(name: str) -> dict[str, Link]:
    out = {}
    for typ, chunk in split_messages((DATA / f"{name}.link.bin").read_bytes()):
        if typ == 16:
            m = ifinfmsg(chunk)
            m.decode()
            link = parse_link(m)
            out[link.name] = link
    return out


def load_dump(name: str) -> Dump:
    links = list(load_links(name).values())
    addrs = []
    for typ, chunk in split_messages((DATA / f"{name}.addr.bin").read_bytes()):
        if typ == 20:
            m = ifaddrmsg(chunk)
            m.decode()
            addrs.append(parse_addr(m))
    return Dump(links, addrs, [])


def test_paired_bond_and_slaves() -> None:
    links = load_links("paired")
    bond, sby, pf = links["enp1s0"], links["enp1s0nsby"], links["enp1s0npf"]
    assert bond.kind == "bond"
    assert bond.marker == {"key": "pci-0000:01:00.0", "name": "enp1s0"}
    assert bond.bond is not None
    assert (bond.bond.mode, bond.bond.active_slave, bond.bond.primary) == (1, pf.ifindex, pf.ifindex)
    assert bond.bond.miimon == 100 and bond.bond.primary_reselect == 0
    assert (sby.master, sby.slave_kind, sby.slave_state) == (bond.ifindex, "bond", "backup")
    assert (pf.master, pf.slave_state) == (bond.ifindex, "active")
    assert pf.altnames == ("enp2s0",)
    assert pf.perm_mac == sby.perm_mac == "02:00:00:00:00:11"
    assert pf.up and pf.lower_up


def test_vf_down_dump() -> None:
    links = load_links("vf-down")
    bond, pf = links["enp1s0"], links["enp1s0npf"]
    assert bond.bond is not None and bond.bond.active_slave == links["enp1s0nsby"].ifindex
    assert pf.up and not pf.lower_up
    assert pf.slave_state == "backup"


def test_net_failover_dump() -> None:
    links = load_links("net-failover")
    master, sby, prim = links["enp1s0"], links["enp1s0nsby"], links["enp2s0"]
    assert master.kind == "" and master.master is None
    assert sby.master == master.ifindex and prim.master == master.ifindex
    assert sby.slave_kind == ""  # net_failover slaves carry no slave kind


def test_addresses() -> None:
    addrs = load_dump("unpaired").addresses
    v4 = [(i, a.address, a.prefixlen) for i, a in addrs if a.family == 2 and a.address != "127.0.0.1"]
    assert v4 == [(2, "192.0.2.2", 24)]


def test_split_messages_tolerates_truncation() -> None:
    data = (DATA / "paired.link.bin").read_bytes()
    whole = split_messages(data)
    for cut in (0, 3, 17, len(data) // 2, len(data) - 1):
        part = split_messages(data[:cut])
        assert len(part) <= len(whole)
        assert all(t in (16, 3) for t, _ in part)
    bogus = struct.pack("=LHHLL", 4, 16, 0, 0, 0) + b"\0" * 16  # length below the header
    assert split_messages(bogus) == []


@pytest.mark.parametrize(
    ("route", "movable"),
    [
        (Route(2, "198.51.100.0", 24, "192.0.2.1", protocol=4), True),
        (Route(2, "", 0, "192.0.2.1", protocol=16), True),
        (Route(2, "192.0.2.0", 24, protocol=2), False),  # the kernel's prefix route
        (Route(2, "192.0.2.2", 32, table=255, protocol=2, type=2), False),
    ],
)
def test_which_routes_move(route: Route, movable: bool) -> None:
    assert movable_route(route) is movable


class _Socket:
    """The kernel's side of a netlink socket: recorded datagrams, and the
    overrun it reports between them."""

    def __init__(self, *replies: object) -> None:
        self.replies = list(replies)

    def recvmsg(self, size: int) -> tuple[bytes, list[object], int, object]:
        """As the kernel answers: a datagram longer than `size` is cut, and
        says so in the flags (MSG_TRUNC)."""
        if not self.replies:
            raise BlockingIOError
        r = self.replies.pop(0)
        if isinstance(r, OSError):
            raise r
        assert isinstance(r, bytes)
        return r[:size], [], socket.MSG_TRUNC if len(r) > size else 0, None


def test_an_overrun_keeps_the_events_read_before_and_after_it() -> None:
    """Issue 16 #12: the events of one read that came before an ENOBUFS were
    dropped with it; now the batch has all of them and says events were lost."""
    import errno

    from guestfail.system.linkevents import LinkMonitor

    raw = (DATA / "vf-down.link.bin").read_bytes()
    mon = LinkMonitor.__new__(LinkMonitor)
    mon.sock = _Socket(raw, OSError(errno.ENOBUFS, "No buffer space"), raw)  # type: ignore[assignment]
    batch = mon.read(lambda: 7)
    per_dump = len([t for t, _ in split_messages(raw) if t == 16])
    assert len(batch.events) == 2 * per_dump and batch.lost == "netlink socket overrun"
    assert all(ev.t_ns == 7 for ev in batch.events)


def test_a_message_longer_than_the_buffer_is_a_loss_not_a_silent_cut() -> None:
    """A datagram longer than the monitor's buffer arrives cut: the complete
    messages before the cut are events, and the batch says one was lost, so
    the daemon reads the links again."""
    from guestfail.system.linkevents import RECV_BYTES, LinkMonitor

    raw = (DATA / "vf-down.link.bin").read_bytes()
    messages = [c for t, c in split_messages(raw) if t == 16]
    mon = LinkMonitor.__new__(LinkMonitor)
    filler = messages[0] * (RECV_BYTES // len(messages[0]) + 1)  # complete messages, then one cut
    mon.sock = _Socket(filler)  # type: ignore[assignment]
    batch = mon.read(lambda: 7)
    assert len(batch.events) == RECV_BYTES // len(messages[0])
    assert batch.lost.startswith("a netlink message longer than")


V4 = Address(2, "192.0.2.2", 24)
V4_NM = Address(2, "192.0.2.2", 24, flags=0x200)  # IFA_F_NOPREFIXROUTE, as NetworkManager adds it
V6 = Address(10, "2001:db8::2", 64)


@pytest.mark.parametrize(
    ("route", "addresses", "movable"),
    [
        # the kernel's prefix route, made by the address
        (Route(2, "192.0.2.0", 24, protocol=2), [V4], False),
        (Route(10, "2001:db8::", 64, protocol=2, priority=256), [V6], False),
        # NetworkManager's: protocol "kernel", its metric, the address without a prefix route
        (Route(2, "192.0.2.0", 24, protocol=2, priority=100), [V4_NM], True),
        # protocol "kernel" with no address of that prefix: not the kernel's own either
        (Route(2, "198.51.100.0", 24, protocol=2), [V4], True),
        (Route(2, "192.0.2.2", 32, table=255, protocol=2, type=2), [V4_NM], False),
    ],
)
def test_a_kernel_route_moves_unless_an_address_makes_it(
    route: Route, addresses: list[Address], movable: bool
) -> None:
    assert movable_route(route, addresses) is movable
