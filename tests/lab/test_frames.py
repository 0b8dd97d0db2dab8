"""lab.frames: what is built parses back as the same thing, checksums are right, garbage never raises."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import frames as f

GUEST = "52:54:00:12:34:56"
PEER = "02:00:00:00:00:01"
G4, P4 = "192.0.2.2", "192.0.2.1"
G6, P6 = "2001:db8::2", "2001:db8::1"


def ones_sum(data: bytes) -> int:
    """An independent ones' complement sum: end-around carry by modulo 0xffff."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    total = total % 0xFFFF
    return 0xFFFF if total == 0 and data.strip(b"\0") else total


# ---------------------------------------------------------------- addresses


def test_mac_helpers() -> None:
    assert f.mac_str(f.mac_bytes("AA:bb:0C:dd:ee:FF")) == "aa:bb:0c:dd:ee:ff"
    assert f.normalize_mac("02:00:00:00:00:0A") == "02:00:00:00:00:0a"
    assert f.is_multicast_mac(f.BROADCAST_MAC)
    assert f.is_multicast_mac("33:33:00:00:00:01")
    assert f.is_multicast_mac("01:00:5e:00:00:01")
    assert not f.is_multicast_mac(GUEST)
    for bad in ("", "02:00:00:00:00", "02:00:00:00:00:001", "zz:00:00:00:00:00"):
        with pytest.raises(ValueError):
            f.mac_bytes(bad)


def test_ipv6_multicast_helpers() -> None:
    assert f.solicited_node("2001:db8::1") == "ff02::1:ff00:1"
    assert f.solicited_node("2001:db8::abcd:ef12:3456") == "ff02::1:ff12:3456"
    assert f.ipv6_multicast_mac("ff02::1") == "33:33:00:00:00:01"
    assert f.ipv6_multicast_mac("ff02::1:ff12:3456") == "33:33:ff:12:34:56"
    # modified EUI-64: the universal/local bit flipped, ff:fe in the middle
    assert f.link_local("52:54:00:12:34:56") == "fe80::5054:ff:fe12:3456"
    assert f.link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"


# ---------------------------------------------------------------- checksums


def test_ipv4_header_checksum_of_a_known_header() -> None:
    head = f.ipv4_header(G4, P4, f.IPPROTO_ICMP, 8)
    # 4500 001c 0000 4000 4001 csum c000 0202 c000 0201, summed by hand: 0xb6dd
    assert head.hex() == "4500001c000040004001b6ddc0000202c0000201"
    assert f.checksum(head) == 0


def test_checksum_matches_an_independent_sum() -> None:
    for data in (b"", b"\x01", b"\xff\xff", bytes(range(256)), b"\x12\x34\x56"):
        assert f.checksum(data) == ~ones_sum(data) & 0xFFFF


def test_udp6_checksum_sums_to_ffff_over_the_pseudo_header() -> None:
    frame = f.udp(GUEST, PEER, G6, P6, 40000, 9, b"GFSQ" + bytes(16))
    ip = frame[14:]
    seg = ip[40:]
    (csum,) = struct.unpack_from("!H", seg, 6)
    assert csum != 0
    pseudo = (
        ipaddress.IPv6Address(G6).packed
        + ipaddress.IPv6Address(P6).packed
        + struct.pack("!I", len(seg))
        + b"\0\0\0"
        + bytes([17])
    )
    assert ones_sum(pseudo + seg) == 0xFFFF
    # one flipped bit in the payload is caught
    broken = frame[:-1] + bytes([frame[-1] ^ 1])
    assert f.parse(frame).checksum_ok is True
    assert f.parse(broken).checksum_ok is False


def test_udp4_checksum_optional_and_verified() -> None:
    with_sum = f.udp(GUEST, PEER, G4, P4, 1000, 7, b"ping")
    without = f.udp(GUEST, PEER, G4, P4, 1000, 7, b"ping", with_checksum=False)
    assert struct.unpack_from("!H", without, 14 + 20 + 6) == (0,)
    assert f.parse(without).checksum_ok is None
    assert f.parse(with_sum).checksum_ok is True
    seg = with_sum[14 + 20 :]
    pseudo = ipaddress.IPv4Address(G4).packed + ipaddress.IPv4Address(P4).packed + bytes([0, 17])
    assert ones_sum(pseudo + struct.pack("!H", len(seg)) + seg) == 0xFFFF


def test_icmp6_checksums_verify() -> None:
    for frame in (
        f.icmp_echo(GUEST, PEER, G6, P6, 7, 9, b"abc"),
        f.neighbor_solicitation(GUEST, G6, P6),
        f.unsolicited_na(GUEST, G6),
        f.router_solicitation(GUEST),
    ):
        ip = frame[14:]
        plen = struct.unpack_from("!H", ip, 4)[0]
        msg = ip[40 : 40 + plen]
        pseudo = ip[8:40] + struct.pack("!I", plen) + b"\0\0\0\x3a"
        assert ones_sum(pseudo + msg) == 0xFFFF
        assert f.parse(frame).checksum_ok is True


def test_bad_ipv4_header_checksum_is_reported() -> None:
    frame = bytearray(f.icmp_echo(GUEST, PEER, G4, P4, 1, 1))
    frame[14 + 8] ^= 0x01  # the TTL
    p = f.parse(bytes(frame))
    assert p.kind == "icmp-echo-request"
    assert p.checksum_ok is False


# ---------------------------------------------------------------- round trips


def test_arp_request_and_reply() -> None:
    req = f.parse(f.arp_request(GUEST, G4, P4))
    assert (req.kind, req.dst_mac, req.src_mac, req.ethertype) == (
        "arp-request",
        f.BROADCAST_MAC,
        GUEST,
        f.ETH_P_ARP,
    )
    assert (req.sender_mac, req.sender_ip, req.target_ip, req.arp_op) == (GUEST, G4, P4, 1)
    rep = f.parse(f.arp_reply(PEER, P4, GUEST, G4))
    assert (rep.kind, rep.dst_mac, rep.sender_mac, rep.sender_ip, rep.target_mac, rep.target_ip) == (
        "arp-reply",
        GUEST,
        PEER,
        P4,
        GUEST,
        G4,
    )


@pytest.mark.parametrize("reply", [False, True])
def test_gratuitous_arp(reply: bool) -> None:
    p = f.parse(f.garp(GUEST, G4, reply=reply))
    assert p.kind == "garp"
    assert p.arp_op == (2 if reply else 1)
    assert p.dst_mac == f.BROADCAST_MAC
    assert p.sender_ip == p.target_ip == G4
    assert p.sender_mac == GUEST


def test_arp_probe_is_not_gratuitous() -> None:
    p = f.parse(f.arp_request(GUEST, "0.0.0.0", G4))
    assert p.kind == "arp-request"


@pytest.mark.parametrize(("src", "dst"), [(G4, P4), (G6, P6)])
@pytest.mark.parametrize("reply", [False, True])
def test_icmp_echo(src: str, dst: str, reply: bool) -> None:
    frame = f.icmp_echo(GUEST, PEER, src, dst, 0x1234, 0xFFFF, b"\x00payload", reply=reply)
    p = f.parse(frame)
    fam = "icmp" if ":" not in src else "icmp6"
    assert p.kind == f"{fam}-echo-{'reply' if reply else 'request'}"
    assert (p.src_ip, p.dst_ip, p.icmp_id, p.icmp_seq, p.payload) == (
        src,
        dst,
        0x1234,
        0xFFFF,
        b"\x00payload",
    )
    assert (p.src_mac, p.dst_mac) == (GUEST, PEER)
    assert p.checksum_ok is True


def test_icmp_seq_is_16_bits() -> None:
    p = f.parse(f.icmp_echo(GUEST, PEER, G4, P4, 0x10001, 0x10002))
    assert (p.icmp_id, p.icmp_seq) == (1, 2)


@pytest.mark.parametrize(("src", "dst"), [(G4, P4), (G6, P6), ("fe80::1", "fe80::2")])
def test_udp(src: str, dst: str) -> None:
    p = f.parse(f.udp(GUEST, PEER, src, dst, 40000, 9, b"GFSQ" + bytes(16)))
    assert (p.kind, p.src_ip, p.dst_ip, p.sport, p.dport) == ("udp", src, dst, 40000, 9)
    assert p.payload == b"GFSQ" + bytes(16)
    assert p.proto == 17


def test_udp_broadcast() -> None:
    p = f.parse(f.udp(PEER, f.BROADCAST_MAC, P4, "192.0.2.255", 5000, 5000, b"hi"))
    assert (p.kind, p.dst_mac, p.dst_ip, p.payload) == ("udp", f.BROADCAST_MAC, "192.0.2.255", b"hi")
    assert p.dst_is_group


def test_neighbor_solicitation() -> None:
    p = f.parse(f.neighbor_solicitation(GUEST, G6, P6))
    assert p.kind == "ns"
    assert p.dst_ip == "ff02::1:ff00:1"
    assert p.dst_mac == "33:33:ff:00:00:01"
    assert p.nd_target == P6
    assert p.nd_lladdr == GUEST
    assert p.ttl == 255
    dad = f.parse(f.neighbor_solicitation(GUEST, "::", G6))
    assert (dad.kind, dad.src_ip, dad.nd_lladdr) == ("ns", "::", None)
    uni = f.parse(f.neighbor_solicitation(PEER, P6, G6, dst_mac=GUEST, dst_ip=G6))
    assert (uni.dst_mac, uni.dst_ip) == (GUEST, G6)


def test_neighbor_advertisement_solicited() -> None:
    p = f.parse(f.neighbor_advertisement(PEER, P6, P6, GUEST, G6))
    assert p.kind == "na"
    assert (p.na_solicited, p.na_override, p.na_router) == (True, True, False)
    assert (p.nd_target, p.nd_lladdr, p.dst_ip, p.dst_mac) == (P6, PEER, G6, GUEST)


def test_unsolicited_na() -> None:
    p = f.parse(f.unsolicited_na(GUEST, G6))
    assert p.kind == "unsolicited-na"
    assert (p.dst_ip, p.dst_mac) == ("ff02::1", "33:33:00:00:00:01")
    assert (p.na_solicited, p.na_override) == (False, True)
    assert (p.nd_target, p.nd_lladdr) == (G6, GUEST)
    # a unicast NA without the solicited flag is unsolicited too
    q = f.parse(f.neighbor_advertisement(GUEST, G6, G6, PEER, P6, solicited=False))
    assert q.kind == "unsolicited-na"
    # and a "solicited" one to all-nodes as well
    r = f.parse(f.neighbor_advertisement(GUEST, G6, G6, "33:33:00:00:00:01", "ff02::1", solicited=True))
    assert r.kind == "unsolicited-na"


def test_router_solicitation() -> None:
    p = f.parse(f.router_solicitation(GUEST))
    assert (p.kind, p.src_ip, p.dst_ip, p.nd_lladdr) == ("rs", "fe80::5054:ff:fe12:3456", "ff02::2", GUEST)


def test_vlan_tag_is_skipped() -> None:
    inner = f.icmp_echo(GUEST, PEER, G4, P4, 1, 2, b"x")
    tagged = f.ethernet(PEER, GUEST, f.ETH_P_IP, inner[14:], vlan=42)
    p = f.parse(tagged)
    assert (p.kind, p.vlan, p.ethertype, p.icmp_seq) == ("icmp-echo-request", 42, f.ETH_P_IP, 2)
    qinq = inner[:12] + struct.pack("!HHHH", f.ETH_P_8021AD, 7, f.ETH_P_8021Q, 42) + inner[12:]
    q = f.parse(qinq)
    assert (q.kind, q.vlan) == ("icmp-echo-request", 42)


def test_ethernet_padding_is_ignored() -> None:
    frame = f.arp_request(GUEST, G4, P4) + b"\0" * 18
    assert f.parse(frame).kind == "arp-request"
    udp = f.udp(GUEST, PEER, G4, P4, 1, 9, b"ab") + b"\0" * 14
    assert f.parse(udp).payload == b"ab"


def test_rarp_is_told_apart() -> None:
    # QEMU's self-announcement after a migration: a RARP broadcast from the NIC's MAC
    body = bytes.fromhex("0001080006040003") + bytes.fromhex(GUEST.replace(":", "")) * 2 + bytes(8)
    p = f.parse(f.ethernet(f.BROADCAST_MAC, GUEST, f.ETH_P_RARP, body))
    assert (p.kind, p.src_mac) == ("rarp", GUEST)


def test_other_kinds() -> None:
    assert f.parse(f.ethernet(PEER, GUEST, 0x88CC, b"lldp" * 10)).kind == "unknown"
    assert f.parse(f.ethernet(PEER, GUEST, 0x0030, b"llc" * 10)).kind == "unknown"
    tcp = f.ethernet(PEER, GUEST, f.ETH_P_IP, f.ipv4(G4, P4, 6, bytes(20)))
    assert f.parse(tcp).kind == "other-ipv4"
    tcp6 = f.ethernet(PEER, GUEST, f.ETH_P_IPV6, f.ipv6(G6, P6, 6, bytes(20)))
    assert f.parse(tcp6).kind == "other-ipv6"
    unreach = struct.pack("!BBHI", 3, 3, 0, 0) + bytes(28)
    unreach = unreach[:2] + struct.pack("!H", f.checksum(unreach)) + unreach[4:]
    p = f.parse(f.ethernet(PEER, GUEST, f.ETH_P_IP, f.ipv4(G4, P4, 1, unreach)))
    assert (p.kind, p.icmp_type, p.checksum_ok) == ("icmp-other", 3, True)
    frag = bytearray(f.udp(GUEST, PEER, G4, P4, 1, 9, b"x"))
    frag[14 + 6] |= 0x20  # more fragments
    assert f.parse(bytes(frag)).kind == "ipv4-fragment"


def test_mld_behind_a_hop_by_hop_header() -> None:
    # an MLDv2 report as Linux sends it: hop-by-hop options (router alert), then ICMPv6 143
    hbh = bytes([58, 0, 5, 2, 0, 0, 1, 0])
    mld = bytes([143, 0, 0, 0, 0, 0, 0, 0])
    src, dst = "fe80::5054:ff:fe12:3456", "ff02::16"
    csum = f.checksum(f.pseudo_header(src, dst, 58, len(mld)) + mld)
    mld = mld[:2] + struct.pack("!H", csum) + mld[4:]
    frame = f.ethernet("33:33:00:00:00:16", GUEST, f.ETH_P_IPV6, f.ipv6(src, dst, 0, hbh + mld, hop_limit=1))
    p = f.parse(frame)
    assert (p.kind, p.proto, p.checksum_ok) == ("mld", 58, True)


def test_each_builder_parses_as_its_kind() -> None:
    built = [
        f.arp_request(GUEST, G4, P4),
        f.arp_reply(PEER, P4, GUEST, G4),
        f.garp(GUEST, G4),
        f.icmp_echo(GUEST, PEER, G4, P4, 1, 1),
        f.icmp_echo(GUEST, PEER, G4, P4, 1, 1, reply=True),
        f.icmp_echo(GUEST, PEER, G6, P6, 1, 1),
        f.icmp_echo(GUEST, PEER, G6, P6, 1, 1, reply=True),
        f.udp(GUEST, PEER, G4, P4, 1, 2, b""),
        f.neighbor_solicitation(GUEST, G6, P6),
        f.neighbor_advertisement(PEER, P6, P6, GUEST, G6),
        f.unsolicited_na(GUEST, G6),
        f.router_solicitation(GUEST),
        b"",
        bytes(14),
    ]
    kinds = [f.parse(b).kind for b in built]
    assert set(kinds) <= f.KINDS
    assert kinds == [
        "arp-request",
        "arp-reply",
        "garp",
        "icmp-echo-request",
        "icmp-echo-reply",
        "icmp6-echo-request",
        "icmp6-echo-reply",
        "udp",
        "ns",
        "na",
        "unsolicited-na",
        "rs",
        "malformed",
        "unknown",
    ]


# ---------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "frame",
    [
        f.arp_request(GUEST, G4, P4),
        f.icmp_echo(GUEST, PEER, G4, P4, 1, 2, b"abcdef"),
        f.icmp_echo(GUEST, PEER, G6, P6, 1, 2, b"abcdef"),
        f.udp(GUEST, PEER, G6, P6, 1, 2, b"abcdef"),
        f.neighbor_solicitation(GUEST, G6, P6),
        f.unsolicited_na(GUEST, G6),
        f.router_solicitation(GUEST),
    ],
)
def test_every_truncation_is_malformed_not_an_exception(frame: bytes) -> None:
    full = f.parse(frame).kind
    assert full != "malformed"
    for n in range(len(frame)):
        p = f.parse(frame[:n])
        assert p.kind in f.KINDS
        if n < 14:
            assert p.kind == "malformed"
    # cut inside the network layer: never the full kind with missing data
    assert f.parse(frame[:20]).kind == "malformed"


def test_bad_nd_option_length_is_malformed() -> None:
    ns = bytearray(f.neighbor_solicitation(GUEST, G6, P6))
    ns[-7] = 0  # the option's length byte
    assert f.parse(bytes(ns)).kind == "malformed"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    p = f.parse(data)
    assert p.kind in f.KINDS
    assert p.length == len(data)


_VALID = [
    f.arp_request(GUEST, G4, P4),
    f.icmp_echo(GUEST, PEER, G4, P4, 1, 2, b"abc"),
    f.icmp_echo(GUEST, PEER, G6, P6, 1, 2, b"abc"),
    f.udp(GUEST, PEER, G4, P4, 1, 2, b"abc"),
    f.udp(GUEST, PEER, G6, P6, 1, 2, b"abc"),
    f.neighbor_advertisement(PEER, P6, P6, GUEST, G6),
    f.router_solicitation(GUEST),
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 200),
)
def test_mutated_frames_never_raise(frame: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(frame)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    p = f.parse(bytes(data[: max(cut, 0) or len(data)]))
    assert p.kind in f.KINDS
