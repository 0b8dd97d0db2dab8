"""guestfail's announcements, read back by the lab peer's own parser (an
independent implementation of the same wire formats)."""

from __future__ import annotations

import socket

from guestfail.core.model import Address
from guestfail.system import packets as announce
from lab import frames

MAC = "02:00:00:00:00:11"


def test_gratuitous_arp() -> None:
    p = frames.parse(announce.garp(MAC, "192.0.2.2"))
    assert p.kind == "garp"
    assert p.src_mac == MAC and p.dst_mac == "ff:ff:ff:ff:ff:ff"
    assert p.sender_ip == p.target_ip == "192.0.2.2"
    assert p.sender_mac == MAC


def test_unsolicited_neighbour_advertisement() -> None:
    p = frames.parse(announce.unsolicited_na(MAC, "2001:db8::2"))
    assert p.kind == "unsolicited-na"
    assert p.checksum_ok
    assert p.src_mac == MAC and p.dst_mac == "33:33:00:00:00:01"
    assert p.src_ip == "2001:db8::2" and p.dst_ip == "ff02::1"
    assert (p.nd_target, p.nd_lladdr, p.na_override, p.na_solicited) == ("2001:db8::2", MAC, True, False)


def test_one_frame_per_address() -> None:
    addrs = [
        Address(socket.AF_INET, "192.0.2.2", 24),
        Address(socket.AF_INET6, "2001:db8::2", 64),
        Address(socket.AF_INET6, "fe80::ff:fe00:11", 64),
    ]
    kinds = [frames.parse(f).kind for f in announce.frames(MAC, addrs)]
    assert kinds == ["garp", "unsolicited-na", "unsolicited-na"]
