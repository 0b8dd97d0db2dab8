"""Link events: a plain non-blocking rtnetlink socket subscribed to
RTMGRP_LINK, which the daemon's event loop watches; messages are decoded
with pyroute2's message class.  A full socket buffer (ENOBUFS) means events
were lost: the batch says so, after the events read around it, and the
daemon resyncs."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Callable

from guestfail.core.model import Link
from guestfail.system.nlsock import lean_pyroute2
from guestfail.system.rtnl import parse_link, split_messages

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTMGRP_LINK = 0x1
# a datagram holds one message or a few (a link's message is a few KiB; a
# PF's with its VFs' list can be tens of KiB)
RECV_BYTES = 1 << 17
NLMSG_OVERRUN = 4


@dataclass(frozen=True)
class LinkEvent:
    deleted: bool
    link: Link
    t_ns: int  # when the daemon read it (CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Batch:
    """What one read gave: the events, in order, and whether the kernel
    dropped some after them (then a resync must follow; the events read
    before the overrun are still good and are handled first)."""

    events: list[LinkEvent]
    lost: str = ""


class LinkMonitor:
    """Link events on a non-blocking netlink socket (RTMGRP_LINK)."""

    def __init__(self, rcvbuf: int = 4 << 20) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self, now_ns: Callable[[], int]) -> Batch:
        """Every event queued now; `lost` says when the kernel dropped some."""
        lean_pyroute2()
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        out: list[LinkEvent] = []
        lost = ""
        while True:
            try:
                data, _anc, flags, _addr = self.sock.recvmsg(RECV_BYTES)
            except BlockingIOError:
                return Batch(out, lost)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # the kernel reports the overrun once, then gives what it
                    # did queue: read on
                    lost = "netlink socket overrun"
                    continue
                raise
            t = now_ns()
            if flags & socket.MSG_TRUNC:  # longer than the buffer: the cut message is read again
                lost = f"a netlink message longer than {RECV_BYTES} bytes"
            for typ, chunk in split_messages(data):
                if typ in (RTM_NEWLINK, RTM_DELLINK):
                    msg = ifinfmsg(chunk)
                    msg.decode()
                    out.append(LinkEvent(typ == RTM_DELLINK, parse_link(msg), t))
                elif typ == NLMSG_OVERRUN:
                    lost = "netlink overrun message"
