"""Announce a switch at once: gratuitous ARP and unsolicited neighbour
advertisements for the master's addresses, sent on the master (so they leave
through the new active member) the moment a switch is confirmed.

The bond sends its own notification after a switch too, but not while the new
member's link event is still pending in the kernel (the usual case when a VF
comes back): then it waits a miimon tick, and the peers keep sending to the
old path.  The team driver sends none unless teamd is told to.

Frames are built here (pure, unit-tested); `send()` is the only I/O: one
AF_PACKET socket bound to the master (CAP_NET_RAW).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable

from guestfail.core.model import Address

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def garp(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request (sender = target = ip), broadcast."""
    m = mac_bytes(mac)
    addr = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + addr + b"\0" * 6 + addr
    frame = BROADCAST + m + struct.pack("!H", ETH_P_ARP) + arp
    return frame.ljust(60, b"\0")


def unsolicited_na(mac: str, ip: str) -> bytes:
    """An unsolicited neighbour advertisement (override set, solicited
    clear) to all nodes, with the target link-layer address option."""
    m = mac_bytes(mac)
    src = ipaddress.IPv6Address(ip)
    # type 136, code 0, checksum, flags (O = 0x20000000), target, option 2
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + src.packed + struct.pack("!BB", 2, 1) + m
    pseudo = src.packed + ALL_NODES.packed + struct.pack("!IxxxB", len(body), 58)
    csum = _checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(body), 58, 255) + src.packed + ALL_NODES.packed
    return ALL_NODES_MAC + m + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def frames(mac: str, addresses: Iterable[Address]) -> list[bytes]:
    out = []
    for a in addresses:
        if a.family == socket.AF_INET:
            out.append(garp(mac, a.address))
        elif a.family == socket.AF_INET6:
            out.append(unsolicited_na(mac, a.address))
    return out


def send(ifindex: int, mac: str, addresses: Iterable[Address]) -> int:
    """Send the announcements on `ifindex`; returns how many went out."""
    batch = frames(mac, addresses)
    if not batch:
        return 0
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((socket.if_indextoname(ifindex), 0))
        for f in batch:
            try:
                s.send(f)
                sent += 1
            except OSError as e:  # e.g. the master went down meanwhile
                log.debug("announcement on %d not sent: %s", ifindex, e)
    return sent
