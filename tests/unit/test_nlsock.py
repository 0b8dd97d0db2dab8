"""The small rtnetlink client against a fake socket that answers as the
kernel does (messages built with pyroute2's classes, as the kernel's are
decoded): answers matched to their request, multi-part dumps, a dump the
kernel says was interrupted taken again, errors and acks."""

from __future__ import annotations

import errno
import itertools
import struct
from typing import Any

import pytest

from guestfail.system.nlsock import (
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_NEWLINK,
    NlError,
    NlSocket,
    lean_pyroute2,
)

# at collection, as the other tests import pyroute2: its import runs
# `uname -p` (platform.uname(); pyroute2 0.7) and unit tests start no process
lean_pyroute2()
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: E402

HDR = struct.Struct("=LHHLL")


def link_msg(seq: int, index: int, name: str, flags: int = 0x2) -> bytes:
    m = ifinfmsg()
    m["index"] = index
    m["attrs"] = [["IFLA_IFNAME", name]]
    m["header"]["type"] = RTM_NEWLINK
    m["header"]["flags"] = flags
    m["header"]["sequence_number"] = seq
    m.encode()
    return bytes(m.data)


def done(seq: int) -> bytes:
    return HDR.pack(HDR.size + 4, NLMSG_DONE, 0x2, seq, 0) + struct.pack("=i", 0)


def error(seq: int, code: int) -> bytes:
    return HDR.pack(HDR.size + 4 + HDR.size, NLMSG_ERROR, 0, seq, 0) + struct.pack("=i", code) + bytes(16)


class Kernel:
    """The socket's other end: each request (by its sequence number) gets the
    datagrams `answer(seq, request)` gives."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        _len, _typ, _flags, seq, _pid = HDR.unpack_from(data)
        self.queue.extend(self.answer(seq, data))
        return len(data)

    def recv(self, _size: int) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def nl(answer: Any) -> tuple[NlSocket, Kernel]:
    s = NlSocket.__new__(NlSocket)
    k = Kernel(answer)
    s.sock = k  # type: ignore[assignment]
    s.seq = itertools.count(1)
    return s, k


def test_a_dump_in_parts_and_a_stale_answer_are_told_apart() -> None:
    def answer(seq: int, _req: bytes) -> list[bytes]:
        # an answer to an abandoned earlier request comes first; the dump
        # arrives in two datagrams
        return [link_msg(seq - 1 + 100, 9, "stale"), link_msg(seq, 1, "lo") + link_msg(seq, 2, "ens11"),
                link_msg(seq, 3, "ens5001") + done(seq)]  # fmt: skip

    s, _ = nl(answer)
    names = [m.get_attr("IFLA_IFNAME") for m in s.dump("link")]
    assert names == ["lo", "ens11", "ens5001"]


def test_an_interrupted_dump_is_taken_again() -> None:
    calls = itertools.count()

    def answer(seq: int, _req: bytes) -> list[bytes]:
        n = next(calls)
        flags = 0x2 | (NLM_F_DUMP_INTR if n == 0 else 0)
        return [link_msg(seq, 1, f"try{n}", flags) + done(seq)]

    s, k = nl(answer)
    assert [m.get_attr("IFLA_IFNAME") for m in s.dump("link")] == ["try1"]
    assert len(k.sent) == 2


def test_errors_come_back_as_errno_and_a_missing_link_as_none() -> None:
    s, _ = nl(lambda seq, _r: [error(seq, -errno.ENODEV)])
    assert s.get_link(42) is None
    s, _ = nl(lambda seq, _r: [error(seq, -errno.EINVAL)])
    with pytest.raises(NlError) as e:
        s.set_bond(5, bond_active_slave=3)
    assert e.value.errno == errno.EINVAL


def test_a_bond_request_carries_the_member_and_is_acknowledged() -> None:
    s, k = nl(lambda seq, _r: [error(seq, 0)])  # the ack
    s.set_bond(5, bond_active_slave=3)
    (req,) = k.sent
    m = ifinfmsg(req)
    m.decode()
    info = m.get_attr("IFLA_LINKINFO")
    assert m["index"] == 5 and info.get_attr("IFLA_INFO_KIND") == "bond"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_BOND_ACTIVE_SLAVE") == 3
    assert m["header"]["flags"] & 0x4  # NLM_F_ACK: the kernel's answer is awaited


def test_a_team_is_created_with_its_mac_and_mtu_in_the_request() -> None:
    """The device must be born with the standby's MAC (udev leaves a MAC set
    at creation alone); IPRoute before pyroute2 0.8 would start a teamd of
    its own instead of sending this."""
    s, k = nl(lambda seq, _r: [error(seq, 0)])
    s.create_link("ens11", "team", "02:00:00:00:00:11", 1400)
    (req,) = k.sent
    m = ifinfmsg(req)
    m.decode()
    assert m.get_attr("IFLA_IFNAME") == "ens11"
    assert m.get_attr("IFLA_ADDRESS") == "02:00:00:00:00:11"
    assert m.get_attr("IFLA_MTU") == 1400
    assert m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "team"
    flags = m["header"]["flags"]
    assert flags & 0x400 and flags & 0x200  # NLM_F_CREATE | NLM_F_EXCL: never an existing device
    s, _ = nl(lambda seq, _r: [error(seq, -errno.EEXIST)])
    with pytest.raises(NlError) as e:
        s.create_link("ens11", "team", "02:00:00:00:00:11", 1500)
    assert e.value.errno == errno.EEXIST
