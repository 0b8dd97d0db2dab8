"""Ethernet II frames for the lab's peer: build them, and parse them without ever raising.

Pure: no I/O.  What the peer sends is built here (ARP, IPv4 with ICMP echo or
UDP, IPv6 with ICMPv6 echo, neighbour discovery or UDP); what the guest sends
is told apart by `parse`, which answers a `Parsed` whose `kind` names the frame:

    arp-request, arp-reply, garp (sender IP == target IP), arp-other,
    icmp-echo-request, icmp-echo-reply, icmp-other, udp, ipv4-fragment, other-ipv4,
    icmp6-echo-request, icmp6-echo-reply, ns, na, unsolicited-na, rs, ra, mld,
    icmp6-other, ipv6-fragment, other-ipv6,
    unknown (an ethertype not handled here), malformed (truncated or inconsistent).

MAC addresses are lowercase "aa:bb:cc:dd:ee:ff" strings; IP addresses are the
strings `ipaddress` prints (IPv6 compressed).  The lab only uses documentation
addresses (192.0.2.0/24, 2001:db8::/32) and link-local ones derived from MACs.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, replace
from typing import Optional, Union

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035  # QEMU's self-announcement after a migration (net/announce.c)
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

ARP_REQUEST = 1
ARP_REPLY = 2

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
ICMP6_MLD_TYPES = frozenset({130, 131, 132, 143})
ICMP6_RS = 133
ICMP6_RA = 134
ICMP6_NS = 135
ICMP6_NA = 136

ND_OPT_SLLA = 1
ND_OPT_TLLA = 2
NA_FLAG_ROUTER = 0x80
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
NDP_HOP_LIMIT = 255

ETH_HEADER_LEN = 14
ARP_LEN = 28
IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
UDP_HEADER_LEN = 8

KINDS = frozenset(
    {
        "arp-request",
        "arp-reply",
        "garp",
        "arp-other",
        "icmp-echo-request",
        "icmp-echo-reply",
        "icmp-other",
        "udp",
        "ipv4-fragment",
        "other-ipv4",
        "icmp6-echo-request",
        "icmp6-echo-reply",
        "ns",
        "na",
        "unsolicited-na",
        "rs",
        "ra",
        "mld",
        "icmp6-other",
        "ipv6-fragment",
        "other-ipv6",
        "rarp",
        "unknown",
        "malformed",
    }
)
ANNOUNCEMENT_KINDS = frozenset({"garp", "unsolicited-na"})

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


# ---------------------------------------------------------------- addresses


def mac_bytes(mac: str) -> bytes:
    """b'\\x02\\x00...' from '02:00:...'; ValueError unless six hex octets."""
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def normalize_mac(mac: str) -> str:
    return mac_str(mac_bytes(mac))


def is_multicast_mac(mac: str) -> bool:
    """True for group addresses (broadcast included): the I/G bit of the first octet."""
    return bool(mac_bytes(mac)[0] & 1)


def ip_address(addr: str) -> IPAddress:
    return ipaddress.ip_address(addr)


def ip_version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def ipv6_multicast_mac(addr: str) -> str:
    """The Ethernet group address of an IPv6 multicast address: 33:33 + its last 32 bits."""
    packed = ipaddress.IPv6Address(addr).packed
    return mac_str(b"\x33\x33" + packed[12:])


def solicited_node(addr: str) -> str:
    """ff02::1:ffXX:XXXX, the solicited-node multicast address of an IPv6 address."""
    packed = ipaddress.IPv6Address(addr).packed
    return str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + packed[13:]))


def link_local(mac: str) -> str:
    """fe80::/64 with the modified EUI-64 interface identifier of `mac`."""
    raw = bytearray(mac_bytes(mac))
    raw[0] ^= 0x02
    iid = bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid))


# ---------------------------------------------------------------- checksums


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    """The IPv4 or IPv6 pseudo-header that UDP and ICMPv6 checksums cover."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"address families differ: {src} {dst}")
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!xBH", proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


def _l4_checksum(src: str, dst: str, proto: int, segment: bytes) -> int:
    return checksum(pseudo_header(src, dst, proto, len(segment)) + segment)


# ---------------------------------------------------------------- builders


def ethernet(dst: str, src: str, ethertype: int, payload: bytes, vlan: Optional[int] = None) -> bytes:
    """An Ethernet II frame (no FCS), optionally with one 802.1Q tag."""
    head = mac_bytes(dst) + mac_bytes(src)
    if vlan is not None:
        head += struct.pack("!HH", ETH_P_8021Q, vlan & 0x0FFF)
    return head + struct.pack("!H", ethertype) + payload


def arp(
    op: int,
    sender_mac: str,
    sender_ip: str,
    target_mac: str,
    target_ip: str,
    *,
    eth_dst: Optional[str] = None,
) -> bytes:
    """An ARP frame for Ethernet/IPv4; by default broadcast for requests, to `target_mac` for replies."""
    body = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, op)
    body += mac_bytes(sender_mac) + ipaddress.IPv4Address(sender_ip).packed
    body += mac_bytes(target_mac) + ipaddress.IPv4Address(target_ip).packed
    if eth_dst is None:
        eth_dst = BROADCAST_MAC if op == ARP_REQUEST else target_mac
    return ethernet(eth_dst, sender_mac, ETH_P_ARP, body)


def arp_request(src_mac: str, src_ip: str, target_ip: str, *, eth_dst: str = BROADCAST_MAC) -> bytes:
    return arp(ARP_REQUEST, src_mac, src_ip, ZERO_MAC, target_ip, eth_dst=eth_dst)


def arp_reply(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> bytes:
    return arp(ARP_REPLY, src_mac, src_ip, dst_mac, dst_ip)


def garp(mac: str, ip: str, *, reply: bool = False) -> bytes:
    """A gratuitous ARP (sender IP == target IP), broadcast, as a request or a reply."""
    if reply:
        return arp(ARP_REPLY, mac, ip, mac, ip, eth_dst=BROADCAST_MAC)
    return arp(ARP_REQUEST, mac, ip, ZERO_MAC, ip, eth_dst=BROADCAST_MAC)


def ipv4_header(src: str, dst: str, proto: int, payload_len: int, *, ttl: int = 64, ident: int = 0) -> bytes:
    """A 20-byte IPv4 header (DF set) with its checksum."""
    head = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        IPV4_HEADER_LEN + payload_len,
        ident & 0xFFFF,
        0x4000,
        ttl,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:]


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    return ipv4_header(src, dst, proto, len(payload), ttl=ttl, ident=ident) + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    head = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
    return head + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def ip_packet(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 packet, by the family of `src`."""
    if ip_version(src) == 4:
        return ipv4(src, dst, proto, payload, ttl=ttl)
    return ipv6(src, dst, proto, payload, hop_limit=ttl)


def _ethertype_of(ip: str) -> int:
    return ETH_P_IP if ip_version(ip) == 4 else ETH_P_IPV6


def udp_segment(
    src_ip: str, dst_ip: str, sport: int, dport: int, payload: bytes, *, with_checksum: bool = True
) -> bytes:
    """A UDP header and payload; the checksum covers the pseudo-header (mandatory for IPv6)."""
    length = UDP_HEADER_LEN + len(payload)
    seg = struct.pack("!HHHH", sport, dport, length, 0) + payload
    if not with_checksum and ip_version(src_ip) == 4:
        return seg
    csum = _l4_checksum(src_ip, dst_ip, IPPROTO_UDP, seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def udp(
    src_mac: str,
    dst_mac: str,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    with_checksum: bool = True,
) -> bytes:
    """An Ethernet frame with a UDP datagram over IPv4 or IPv6 (by the family of `src_ip`)."""
    seg = udp_segment(src_ip, dst_ip, sport, dport, payload, with_checksum=with_checksum)
    return ethernet(dst_mac, src_mac, _ethertype_of(src_ip), ip_packet(src_ip, dst_ip, IPPROTO_UDP, seg))


def icmp_echo(
    src_mac: str,
    dst_mac: str,
    src_ip: str,
    dst_ip: str,
    ident: int,
    seq: int,
    payload: bytes = b"",
    *,
    reply: bool = False,
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 (IPv6) echo request, or reply, by the family of `src_ip`."""
    if ip_version(src_ip) == 4:
        typ = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
        msg = struct.pack("!BBHHH", typ, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
        return ethernet(dst_mac, src_mac, ETH_P_IP, ipv4(src_ip, dst_ip, IPPROTO_ICMP, msg))
    typ = ICMP6_ECHO_REPLY if reply else ICMP6_ECHO_REQUEST
    msg = struct.pack("!BBHHH", typ, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, _icmp6_packet(src_ip, dst_ip, msg, hop_limit=64))


def _icmp6_packet(src_ip: str, dst_ip: str, msg: bytes, *, hop_limit: int) -> bytes:
    csum = _l4_checksum(src_ip, dst_ip, IPPROTO_ICMPV6, msg)
    msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    return ipv6(src_ip, dst_ip, IPPROTO_ICMPV6, msg, hop_limit=hop_limit)


def _lla_option(opt_type: int, mac: str) -> bytes:
    return struct.pack("!BB", opt_type, 1) + mac_bytes(mac)


def neighbor_solicitation(
    src_mac: str,
    src_ip: str,
    target: str,
    *,
    dst_mac: Optional[str] = None,
    dst_ip: Optional[str] = None,
) -> bytes:
    """An NS for `target`, to its solicited-node group unless `dst_ip` is given.

    With src_ip '::' (duplicate address detection) no source link-layer option is sent.
    """
    if dst_ip is None:
        dst_ip = solicited_node(target)
    if dst_mac is None:
        dst_mac = ipv6_multicast_mac(dst_ip) if ipaddress.IPv6Address(dst_ip).is_multicast else BROADCAST_MAC
    msg = struct.pack("!BBH4x", ICMP6_NS, 0, 0) + ipaddress.IPv6Address(target).packed
    if not ipaddress.IPv6Address(src_ip).is_unspecified:
        msg += _lla_option(ND_OPT_SLLA, src_mac)
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, _icmp6_packet(src_ip, dst_ip, msg, hop_limit=NDP_HOP_LIMIT))


def neighbor_advertisement(
    src_mac: str,
    src_ip: str,
    target: str,
    dst_mac: str,
    dst_ip: str,
    *,
    solicited: bool = True,
    override: bool = True,
    router: bool = False,
    tlla: bool = True,
) -> bytes:
    """An NA for `target` (normally == src_ip) with the target link-layer address option."""
    flags = (
        (NA_FLAG_ROUTER if router else 0)
        | (NA_FLAG_SOLICITED if solicited else 0)
        | (NA_FLAG_OVERRIDE if override else 0)
    )
    msg = struct.pack("!BBHB3x", ICMP6_NA, 0, 0, flags) + ipaddress.IPv6Address(target).packed
    if tlla:
        msg += _lla_option(ND_OPT_TLLA, src_mac)
    return ethernet(dst_mac, src_mac, ETH_P_IPV6, _icmp6_packet(src_ip, dst_ip, msg, hop_limit=NDP_HOP_LIMIT))


def unsolicited_na(mac: str, ip: str) -> bytes:
    """The unsolicited NA a host (or a bond after failover) sends: to ff02::1, override set."""
    return neighbor_advertisement(
        mac, ip, ip, ipv6_multicast_mac(ALL_NODES), ALL_NODES, solicited=False, override=True
    )


def router_solicitation(src_mac: str, src_ip: Optional[str] = None) -> bytes:
    """An RS to ff02::2, from the link-local address of `src_mac` unless `src_ip` is given."""
    if src_ip is None:
        src_ip = link_local(src_mac)
    msg = struct.pack("!BBH4x", ICMP6_RS, 0, 0)
    if not ipaddress.IPv6Address(src_ip).is_unspecified:
        msg += _lla_option(ND_OPT_SLLA, src_mac)
    dst_mac = ipv6_multicast_mac(ALL_ROUTERS)
    return ethernet(
        dst_mac, src_mac, ETH_P_IPV6, _icmp6_packet(src_ip, ALL_ROUTERS, msg, hop_limit=NDP_HOP_LIMIT)
    )


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """What `parse` saw in a frame.  Fields that do not apply stay None."""

    kind: str
    src_mac: str = ""
    dst_mac: str = ""
    ethertype: int = 0
    vlan: Optional[int] = None
    length: int = 0
    # IPv4 / IPv6
    src_ip: Optional[str] = None
    dst_ip: Optional[str] = None
    proto: Optional[int] = None
    ttl: Optional[int] = None
    # ARP
    arp_op: Optional[int] = None
    sender_mac: Optional[str] = None
    sender_ip: Optional[str] = None
    target_mac: Optional[str] = None
    target_ip: Optional[str] = None
    # ICMP / ICMPv6
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    icmp_id: Optional[int] = None
    icmp_seq: Optional[int] = None
    # Neighbour discovery: the target, the link-layer address option (source for NS/RS,
    # target for NA), the NA flags
    nd_target: Optional[str] = None
    nd_lladdr: Optional[str] = None
    na_router: Optional[bool] = None
    na_solicited: Optional[bool] = None
    na_override: Optional[bool] = None
    # UDP
    sport: Optional[int] = None
    dport: Optional[int] = None
    # UDP payload, or ICMP echo data
    payload: bytes = b""
    # IPv4 header, UDP, ICMP, ICMPv6: None when not checked (UDP/IPv4 with checksum 0)
    checksum_ok: Optional[bool] = None
    # why a frame is malformed or unknown
    detail: str = ""

    @property
    def dst_is_group(self) -> bool:
        """Broadcast or multicast destination MAC."""
        return bool(self.dst_mac) and int(self.dst_mac[:2], 16) & 1 == 1


class _Malformed(Exception):
    pass


def parse(frame: bytes) -> Parsed:
    """Tell what an Ethernet frame is.  Never raises: garbage gives kind 'malformed' or 'unknown'."""
    try:
        return _parse(bytes(frame))
    except _Malformed as exc:
        return _malformed(frame, str(exc))
    except (struct.error, ValueError, IndexError, TypeError) as exc:
        return _malformed(frame, f"{type(exc).__name__}: {exc}")


def _malformed(frame: bytes, detail: str) -> Parsed:
    src = dst = ""
    if len(frame) >= 12:
        dst, src = mac_str(frame[0:6]), mac_str(frame[6:12])
    return Parsed(kind="malformed", src_mac=src, dst_mac=dst, length=len(frame), detail=detail)


def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise _Malformed(f"{what}: {len(data)} bytes, need {n}")


def _parse(frame: bytes) -> Parsed:
    _need(frame, ETH_HEADER_LEN, "ethernet header")
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    off = ETH_HEADER_LEN
    vlan: Optional[int] = None
    for _ in range(2):  # at most an 802.1ad outer and an 802.1Q inner tag
        if ethertype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        _need(frame, off + 4, "vlan tag")
        tci, ethertype = struct.unpack_from("!HH", frame, off)
        vlan = tci & 0x0FFF
        off += 4
    eth = Parsed(
        kind="unknown",
        dst_mac=mac_str(frame[0:6]),
        src_mac=mac_str(frame[6:12]),
        ethertype=ethertype,
        vlan=vlan,
        length=len(frame),
    )
    body = frame[off:]
    if ethertype == ETH_P_ARP:
        return _parse_arp(body, eth)
    if ethertype == ETH_P_IP:
        return _parse_ipv4(body, eth)
    if ethertype == ETH_P_IPV6:
        return _parse_ipv6(body, eth)
    if ethertype == ETH_P_RARP:  # learned from like any frame; its body says nothing more
        return replace(eth, kind="rarp")
    detail = "802.3 length field" if ethertype < 0x0600 else f"ethertype 0x{ethertype:04x}"
    return replace(eth, detail=detail)


def _parse_arp(body: bytes, eth: Parsed) -> Parsed:
    _need(body, ARP_LEN, "arp")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", body, 0)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return replace(eth, kind="arp-other", arp_op=op, detail="not Ethernet/IPv4 ARP")
    sender_ip = str(ipaddress.IPv4Address(body[14:18]))
    target_ip = str(ipaddress.IPv4Address(body[24:28]))
    if op not in (ARP_REQUEST, ARP_REPLY):
        kind = "arp-other"
    elif sender_ip == target_ip:
        kind = "garp"
    else:
        kind = "arp-request" if op == ARP_REQUEST else "arp-reply"
    return replace(
        eth,
        kind=kind,
        arp_op=op,
        sender_mac=mac_str(body[8:14]),
        sender_ip=sender_ip,
        target_mac=mac_str(body[18:24]),
        target_ip=target_ip,
    )


def _parse_ipv4(body: bytes, eth: Parsed) -> Parsed:
    _need(body, IPV4_HEADER_LEN, "ipv4 header")
    ver_ihl, _tos, total, _ident, frag, ttl, proto, _csum = struct.unpack_from("!BBHHHBBH", body, 0)
    if ver_ihl >> 4 != 4:
        raise _Malformed(f"ipv4 version {ver_ihl >> 4}")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN or total < ihl:
        raise _Malformed(f"ipv4 header length {ihl}, total length {total}")
    _need(body, total, "ipv4 packet")
    header_ok = checksum(body[:ihl]) == 0
    ip = replace(
        eth,
        kind="other-ipv4",
        src_ip=str(ipaddress.IPv4Address(body[12:16])),
        dst_ip=str(ipaddress.IPv4Address(body[16:20])),
        proto=proto,
        ttl=ttl,
        checksum_ok=header_ok,
    )
    data = body[ihl:total]  # drops the Ethernet padding
    if frag & 0x3FFF:  # more-fragments flag or a fragment offset
        return replace(ip, kind="ipv4-fragment")
    if proto == IPPROTO_ICMP:
        _need(data, 8, "icmp")
        typ, code, _c, ident, seq = struct.unpack_from("!BBHHH", data, 0)
        ip = replace(ip, icmp_type=typ, icmp_code=code, checksum_ok=header_ok and checksum(data) == 0)
        if typ in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) and code == 0:
            kind = "icmp-echo-request" if typ == ICMP_ECHO_REQUEST else "icmp-echo-reply"
            return replace(ip, kind=kind, icmp_id=ident, icmp_seq=seq, payload=data[8:])
        return replace(ip, kind="icmp-other")
    if proto == IPPROTO_UDP:
        return _parse_udp(data, ip)
    return ip


def _parse_udp(data: bytes, ip: Parsed) -> Parsed:
    """UDP over either family; `ip.checksum_ok` holds the IPv4 header's verdict (None for IPv6)."""
    _need(data, UDP_HEADER_LEN, "udp header")
    sport, dport, length, csum = struct.unpack_from("!HHHH", data, 0)
    if length < UDP_HEADER_LEN or length > len(data):
        raise _Malformed(f"udp length {length} with {len(data)} bytes")
    seg = data[:length]
    src, dst = str(ip.src_ip), str(ip.dst_ip)
    ok: Optional[bool]
    if csum == 0:
        # optional over IPv4, mandatory over IPv6 (RFC 8200 section 8.1)
        ok = None if ip_version(src) == 4 else False
    else:
        ok = _l4_checksum(src, dst, IPPROTO_UDP, seg) == 0
    if ip.checksum_ok is False:
        ok = False
    return replace(ip, kind="udp", sport=sport, dport=dport, payload=seg[UDP_HEADER_LEN:], checksum_ok=ok)


_IPV6_EXT_HEADERS = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)


def _parse_ipv6(body: bytes, eth: Parsed) -> Parsed:
    _need(body, IPV6_HEADER_LEN, "ipv6 header")
    vtf, plen, nxt, hlim = struct.unpack_from("!IHBB", body, 0)
    if vtf >> 28 != 6:
        raise _Malformed(f"ipv6 version {vtf >> 28}")
    _need(body, IPV6_HEADER_LEN + plen, "ipv6 payload")
    ip = replace(
        eth,
        kind="other-ipv6",
        src_ip=str(ipaddress.IPv6Address(body[8:24])),
        dst_ip=str(ipaddress.IPv6Address(body[24:40])),
        ttl=hlim,
    )
    data = body[IPV6_HEADER_LEN : IPV6_HEADER_LEN + plen]  # drops the Ethernet padding
    for _ in range(8):  # a bounded walk along the extension headers
        if nxt in _IPV6_EXT_HEADERS:
            _need(data, 8, "ipv6 extension header")
            ext_len = (data[1] + 1) * 8
            _need(data, ext_len, "ipv6 extension header")
            nxt, data = data[0], data[ext_len:]
        elif nxt == IPPROTO_FRAGMENT:
            _need(data, 8, "ipv6 fragment header")
            (off_m,) = struct.unpack_from("!H", data, 2)
            if off_m & 0xFFF9:
                return replace(ip, kind="ipv6-fragment", proto=nxt)
            nxt, data = data[0], data[8:]  # an atomic fragment: the whole packet
        else:
            break
    ip = replace(ip, proto=nxt)
    if nxt == IPPROTO_ICMPV6:
        return _parse_icmp6(data, ip)
    if nxt == IPPROTO_UDP:
        return _parse_udp(data, ip)
    return ip


def _nd_options(opts: bytes) -> dict[int, str]:
    found: dict[int, str] = {}
    while opts:
        _need(opts, 2, "nd option")
        typ, units = opts[0], opts[1]
        if units == 0:
            raise _Malformed("nd option of length 0")
        _need(opts, units * 8, "nd option")
        if typ in (ND_OPT_SLLA, ND_OPT_TLLA) and units == 1:
            found.setdefault(typ, mac_str(opts[2:8]))
        opts = opts[units * 8 :]
    return found


def _parse_icmp6(data: bytes, ip: Parsed) -> Parsed:
    _need(data, 4, "icmpv6")
    typ, code = data[0], data[1]
    ok = _l4_checksum(str(ip.src_ip), str(ip.dst_ip), IPPROTO_ICMPV6, data) == 0
    msg = replace(ip, kind="icmp6-other", icmp_type=typ, icmp_code=code, checksum_ok=ok)
    if typ in (ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY) and code == 0:
        _need(data, 8, "icmpv6 echo")
        ident, seq = struct.unpack_from("!HH", data, 4)
        kind = "icmp6-echo-request" if typ == ICMP6_ECHO_REQUEST else "icmp6-echo-reply"
        return replace(msg, kind=kind, icmp_id=ident, icmp_seq=seq, payload=data[8:])
    if typ == ICMP6_NS:
        _need(data, 24, "neighbour solicitation")
        opts = _nd_options(data[24:])
        target = str(ipaddress.IPv6Address(data[8:24]))
        return replace(msg, kind="ns", nd_target=target, nd_lladdr=opts.get(ND_OPT_SLLA))
    if typ == ICMP6_NA:
        _need(data, 24, "neighbour advertisement")
        flags = data[4]
        opts = _nd_options(data[24:])
        solicited = bool(flags & NA_FLAG_SOLICITED)
        kind = "unsolicited-na" if (not solicited or ip.dst_ip == ALL_NODES) else "na"
        return replace(
            msg,
            kind=kind,
            nd_target=str(ipaddress.IPv6Address(data[8:24])),
            nd_lladdr=opts.get(ND_OPT_TLLA),
            na_router=bool(flags & NA_FLAG_ROUTER),
            na_solicited=solicited,
            na_override=bool(flags & NA_FLAG_OVERRIDE),
        )
    if typ == ICMP6_RS:
        _need(data, 8, "router solicitation")
        opts = _nd_options(data[8:])
        return replace(msg, kind="rs", nd_lladdr=opts.get(ND_OPT_SLLA))
    if typ == ICMP6_RA:
        return replace(msg, kind="ra")
    if typ in ICMP6_MLD_TYPES:
        return replace(msg, kind="mld")
    return msg
