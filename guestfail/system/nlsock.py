"""A small rtnetlink client for what guestfail does most often: dump the
links, addresses and routes, read one link, set a bond's active member or
primary.  pyroute2's message classes encode and decode the messages; the
socket and the request/answer matching are here.

Why not pyroute2's IPRoute for these: importing any part of pyroute2 runs
its package __init__, which loads about 150 modules (netlink families,
NDB, IPDB, conntrack...) where these requests need about 25: 0.3 s natively,
seconds in a small TCG guest, on every `guestfail status` and on the path
of every daemon start.  `lean_pyroute2()` lets the message modules load
without that __init__.  What else guestfail changes (renames, enslaving, tc,
addresses, routes) still goes through IPRoute (guestfail.system.netlink),
imported only when a change is to be made.
"""

from __future__ import annotations

import errno
import importlib.util
import itertools
import os
import socket
import struct
import sys
import types
from typing import Any, Optional

from guestfail.system.rtnl import NLMSG_HDR, split_messages

NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
DUMP_RETRIES = 5


def lean_pyroute2() -> None:
    """Make `import pyroute2.x.y` load x.y without pyroute2's package
    __init__ (a package module whose __path__ is pyroute2's directory).
    Nothing changes if pyroute2 was imported already (then it is whole)."""
    if "pyroute2" in sys.modules:
        return  # imported whole already
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: the import that follows says so
    if pyroute2_06(spec.submodule_search_locations):
        return  # its package maps its names onto pr2modules: loaded whole
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = "pyroute2"
    sys.modules["pyroute2"] = pkg


def pyroute2_06(locations: Optional[list[str]] = None) -> bool:
    """Is pyroute2 0.6 installed?  Its package is an __init__ alone that
    maps its names onto pr2modules (0.7 and later have the modules in it).
    Read from the files, without importing it (importlib.metadata alone
    costs 30 ms)."""
    if locations is None:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            return False
        locations = list(spec.submodule_search_locations)
    return not any(os.path.isdir(os.path.join(p, "netlink")) for p in locations)


class NlError(OSError):
    """The kernel answered a request with an error (errno)."""


class NlSocket:
    """One NETLINK_ROUTE socket; requests are answered in order.  Not
    thread-safe: one thread uses it."""

    def __init__(self) -> None:
        lean_pyroute2()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def _send(self, msg: Any, typ: int, flags: int) -> int:
        seq = next(self.seq)
        msg["header"]["type"] = typ
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg["header"]["pid"] = 0
        msg.encode()
        self.sock.send(bytes(msg.data))
        return seq

    def _answers(self, seq: int, dump: bool) -> tuple[list[tuple[int, bytes]], bool]:
        """(messages, interrupted) answering request `seq`."""
        out: list[tuple[int, bytes]] = []
        interrupted = False
        while True:
            data = self.sock.recv(1 << 20)
            for typ, chunk in split_messages(data):
                _len, _typ, flags, mseq, _pid = NLMSG_HDR.unpack_from(chunk)
                if mseq != seq:
                    continue  # an answer to an earlier, abandoned request
                if flags & NLM_F_DUMP_INTR:
                    interrupted = True
                if typ == NLMSG_DONE:
                    return out, interrupted
                if typ == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", chunk, NLMSG_HDR.size)
                    if code:
                        raise NlError(-code, os.strerror(-code))
                    return out, interrupted  # the ack
                out.append((typ, chunk))
                if not dump:
                    return out, interrupted

    def dump(self, kind: str, family: int = socket.AF_UNSPEC) -> list[Any]:
        """Every link ("link"), address ("addr") or route ("route"), decoded
        (pyroute2 message objects).  A dump the kernel says was interrupted
        (something changed meanwhile) is taken again."""
        cls, typ, want = _KINDS[kind]
        for _ in range(DUMP_RETRIES):
            msg = cls()
            msg["family"] = family
            seq = self._send(msg, typ, NLM_F_REQUEST | NLM_F_DUMP)
            chunks, interrupted = self._answers(seq, dump=True)
            if not interrupted:
                return [_decode(cls, c) for t, c in chunks if t == want]
        raise NlError(errno.EINTR, f"the {kind} dump was interrupted {DUMP_RETRIES} times")

    def get_link(self, ifindex: int) -> Optional[Any]:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        msg = ifinfmsg()
        msg["index"] = ifindex
        try:
            chunks, _ = self._answers(self._send(msg, RTM_GETLINK, NLM_F_REQUEST), dump=False)
        except NlError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return _decode(ifinfmsg, chunks[0][1]) if chunks else None

    def set_bond(self, ifindex: int, **data: int) -> None:
        """RTM_NEWLINK with IFLA_BOND_* data (bond_active_slave=...,
        bond_primary=...), acknowledged."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        msg = ifinfmsg()
        msg["index"] = ifindex
        attrs = [[f"IFLA_{k.upper()}", v] for k, v in data.items()]
        msg["attrs"] = [
            ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "bond"], ["IFLA_INFO_DATA", {"attrs": attrs}]]}]
        ]
        self._answers(self._send(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK), dump=False)

    def create_link(self, name: str, kind: str, mac: str, mtu: int) -> None:
        """RTM_NEWLINK creating a device of `kind` with its MAC and MTU in
        the request, so it is born with them (addr_assign_type "set": udev's
        MACAddressPolicy leaves it alone).  Here and not through IPRoute:
        pyroute2 before 0.8 does not send a "team" request to the kernel but
        starts a teamd of its own, with neither MAC nor MTU."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        msg = ifinfmsg()
        msg["attrs"] = [
            ["IFLA_IFNAME", name],
            ["IFLA_ADDRESS", mac],
            ["IFLA_MTU", mtu],
            ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", kind]]}],
        ]
        flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        self._answers(self._send(msg, RTM_NEWLINK, flags), dump=False)


def _decode(cls: Any, chunk: bytes) -> Any:
    msg = cls(chunk)
    msg.decode()
    return msg


def _classes() -> dict[str, tuple[Any, int, int]]:
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return {
        "link": (ifinfmsg, RTM_GETLINK, RTM_NEWLINK),
        "addr": (ifaddrmsg, RTM_GETADDR, RTM_NEWADDR),
        "route": (rtmsg, RTM_GETROUTE, RTM_NEWROUTE),
    }


class _Kinds(dict[str, tuple[Any, int, int]]):
    """The message classes by kind, imported when first asked for."""

    def __missing__(self, key: str) -> tuple[Any, int, int]:
        self.update(_classes())
        return dict.__getitem__(self, key)


_KINDS = _Kinds()
