"""lab.dhcp against a fake guest: UDP sockets on 127.0.0.1 stand in for QEMU's end of two paths.

The client messages are packed here, and the replies unpacked here, independently of
lab.dhcp's own encoder and parser.  "No reply" is shown with a fence: once the server
recorded the message (or the peer answered a later ARP request on the same socket),
any reply was already sent, and a frame the peer sends afterwards on a path arrives
after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lab import dhcp
from lab import frames as f
from lab.dhcp import DhcpError, DhcpEvent, DhcpServer
from lab.frames import Parsed
from lab.peer import Peer

from .fakes import FakeNic

GUEST = "52:54:00:12:34:56"
OTHER = "52:54:00:00:00:02"
THIRD = "52:54:00:00:00:03"
PEER = "02:00:00:00:00:01"
P4 = "192.0.2.1"
G4 = "192.0.2.2"
BCAST = "255.255.255.255"
ZERO = "0.0.0.0"
BROADCAST_FLAG = 0x8000

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)


# ---------------------------------------------------------------- the fake guest


@dataclass
class Env:
    peer: Peer
    server: DhcpServer
    sby: FakeNic
    vf: FakeNic

    async def recorded(self, xid: int, kind: str) -> DhcpEvent:
        """The server's record of a client message: once it exists, any reply was sent."""

        def find() -> Optional[DhcpEvent]:
            return next((e for e in self.server.find(kind) if e.xid == xid and e.received), None)

        await self.peer.wait_for(lambda _p: find() is not None, 2, f"{kind} {xid:#x} recorded")
        event = find()
        assert event is not None
        return event

    async def quiet(self, nic: FakeNic) -> list[Parsed]:
        """What reached `nic` before a fence the peer sends now (call once the server is done)."""
        fence = f.udp(PEER, GUEST, P4, G4, 9, 9, b"fence")
        assert self.peer.send_frame(nic.path, fence) == 1
        seen = await nic.until(lambda p: p.kind == "udp" and p.payload == b"fence")
        return seen[:-1]


@contextlib.asynccontextmanager
async def lab_env(**server_args: Any) -> AsyncIterator[Env]:
    peer = Peer()
    nics: list[FakeNic] = []
    try:
        for name in ("sby", "vf"):
            peer.add_path(name)
        await peer.start()
        nics = [FakeNic(peer, name) for name in ("sby", "vf")]
        for nic in nics:
            nic.start()
        with DhcpServer(peer, **server_args) as server:
            yield Env(peer, server, nics[0], nics[1])
    finally:
        for nic in nics:
            nic.close()
        peer.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


# ---------------------------------------------------------------- DHCP, packed and unpacked here


def ip_bytes(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def client_msg(
    mtype: int,
    xid: int,
    mac: str = GUEST,
    *,
    flags: int = 0,
    ciaddr: str = ZERO,
    requested: Optional[str] = None,
    server_id: Optional[str] = None,
    client_id: Optional[bytes] = None,
    op: int = 1,
    extra: bytes = b"",
) -> bytes:
    head = struct.pack("!BBBBIHH", op, 1, 6, 0, xid, 3, flags)
    head += ip_bytes(ciaddr) + bytes(12) + f.mac_bytes(mac) + bytes(10 + 64 + 128)
    opts = bytes((53, 1, mtype))
    if client_id is not None:
        opts += bytes((61, len(client_id))) + client_id
    if requested is not None:
        opts += bytes((50, 4)) + ip_bytes(requested)
    if server_id is not None:
        opts += bytes((54, 4)) + ip_bytes(server_id)
    opts += bytes((55, 7, 1, 3, 6, 28, 51, 58, 59)) + bytes((12, 5)) + b"guest" + extra + b"\xff"
    return (head + b"\x63\x82\x53\x63" + opts).ljust(300, b"\0")


def bcast(payload: bytes, mac: str = GUEST, src_ip: str = ZERO) -> bytes:
    """A client's broadcast: from 0.0.0.0 (no address yet) or its address (rebinding)."""
    return f.udp(mac, f.BROADCAST_MAC, src_ip, BCAST, 68, 67, payload)


def to_server(payload: bytes, mac: str = GUEST, src_ip: str = G4) -> bytes:
    """A client's unicast to the server (renewing, RELEASE, INFORM)."""
    return f.udp(mac, PEER, src_ip, P4, 68, 67, payload)


@dataclass
class Reply:
    op: int
    xid: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    chaddr: str
    options: dict[int, bytes]
    order: list[int]

    @property
    def mtype(self) -> int:
        return self.options[53][0]

    def u32(self, code: int) -> int:
        (v,) = struct.unpack("!I", self.options[code])
        return int(v)


def decode(payload: bytes) -> Reply:
    op, htype, hlen, _hops, xid, _secs, flags = struct.unpack_from("!BBBBIHH", payload, 0)
    assert (htype, hlen) == (1, 6)
    assert payload[28 + 6 : 28 + 16] == bytes(10)
    assert payload[236:240] == b"\x63\x82\x53\x63"
    options: dict[int, bytes] = {}
    order: list[int] = []
    i = 240
    while payload[i] != 255:
        if payload[i] == 0:
            i += 1
            continue
        code, n = payload[i], payload[i + 1]
        options[code] = payload[i + 2 : i + 2 + n]
        order.append(code)
        i += 2 + n
    ciaddr, yiaddr, siaddr, giaddr = (
        str(ipaddress.IPv4Address(payload[o : o + 4])) for o in (12, 16, 20, 24)
    )
    return Reply(op, xid, flags, ciaddr, yiaddr, siaddr, giaddr, f.mac_str(payload[28:34]), options, order)


def is_dhcp_reply(p: Parsed) -> bool:
    return p.kind == "udp" and p.sport == 67 and p.dport == 68


def reply_to(xid: int, mtype: Optional[int] = None) -> Callable[[Parsed], bool]:
    def pred(p: Parsed) -> bool:
        if not is_dhcp_reply(p):
            return False
        r = decode(p.payload)
        return r.xid == xid and (mtype is None or r.mtype == mtype)

    return pred


async def dora(env: Env, nic: FakeNic, mac: str, xid: int, *, flags: int = BROADCAST_FLAG) -> str:
    """DISCOVER, OFFER, REQUEST (selecting), ACK on `nic`; returns the address."""
    nic.send(bcast(client_msg(DISCOVER, xid, mac, flags=flags), mac))
    offer = decode((await nic.expect(reply_to(xid, OFFER))).payload)
    nic.send(bcast(client_msg(REQUEST, xid, mac, flags=flags, requested=offer.yiaddr, server_id=P4), mac))
    ack = decode((await nic.expect(reply_to(xid, ACK))).payload)
    assert ack.yiaddr == offer.yiaddr
    return ack.yiaddr


def check_lease_options(r: Reply, *, lease: int = 30, dns: Optional[bytes] = None) -> None:
    assert r.op == 2
    assert r.order[0] == 53
    assert r.options[54] == ip_bytes(P4)
    assert r.u32(51) == lease
    assert r.u32(58) == lease // 2
    assert r.u32(59) == lease * 7 // 8
    assert r.options[1] == ip_bytes("255.255.255.0")
    assert r.options[3] == ip_bytes(P4)
    assert r.options[28] == ip_bytes("192.0.2.255")
    assert r.options.get(6) == dns


def check_from_server(p: Parsed) -> None:
    assert (p.src_mac, p.src_ip, p.sport, p.dport) == (PEER, P4, 67, 68)
    assert p.checksum_ok is True


# ---------------------------------------------------------------- DORA


def test_dora_with_the_broadcast_flag_is_broadcast_and_flooded() -> None:
    async def main() -> None:
        async with lab_env() as env:
            cid = b"\x01" + f.mac_bytes(GUEST)
            env.sby.send(bcast(client_msg(DISCOVER, 0x1001, flags=BROADCAST_FLAG, client_id=cid)))
            for nic in (env.sby, env.vf):  # a broadcast: flooded on every path
                p = await nic.expect(reply_to(0x1001))
                check_from_server(p)
                assert (p.dst_mac, p.dst_ip) == (f.BROADCAST_MAC, BCAST)
                offer = decode(p.payload)
                assert offer.mtype == OFFER
                assert (offer.yiaddr, offer.ciaddr, offer.chaddr) == (G4, ZERO, GUEST)
                assert offer.flags == BROADCAST_FLAG
                check_lease_options(offer)
                assert offer.options[61] == cid  # RFC 6842

            request = client_msg(
                REQUEST, 0x1001, flags=BROADCAST_FLAG, requested=G4, server_id=P4, client_id=cid
            )
            env.sby.send(bcast(request))
            for nic in (env.sby, env.vf):
                p = await nic.expect(reply_to(0x1001))
                check_from_server(p)
                assert (p.dst_mac, p.dst_ip) == (f.BROADCAST_MAC, BCAST)
                ack = decode(p.payload)
                assert ack.mtype == ACK
                assert (ack.yiaddr, ack.chaddr) == (G4, GUEST)
                check_lease_options(ack)

            s = env.server
            ip, expiry = s.leases[GUEST]
            assert ip == G4
            assert 25e9 < expiry - time.monotonic_ns() <= 30e9
            assert [e.kind for e in s.events] == ["discover", "offer", "request", "ack"]
            assert all(e.path == "sby" and e.chaddr == GUEST and e.xid == 0x1001 for e in s.events)
            assert all(e.client_id == cid for e in s.events)
            req, ack_ev = s.events[2], s.events[3]
            assert (req.state, req.requested_ip, req.server_id, req.received) == ("selecting", G4, P4, True)
            assert (ack_ev.yiaddr, ack_ev.state, ack_ev.copies, ack_ev.dst_mac) == (
                G4,
                "selecting",
                2,
                f.BROADCAST_MAC,
            )
            assert s.acks() == [ack_ev] == s.acks(GUEST.upper())
            assert s.acks(OTHER) == [] and s.acks(after_ns=ack_ev.t_ns + 1) == []
            assert s.renewals() == []
            assert s.client_ids == {GUEST: cid}
            assert s.dropped == {}
            assert "ack sent 1" in s.summary()

    run(main())


def test_dora_without_the_flag_is_unicast_to_chaddr_and_yiaddr_on_the_learned_path() -> None:
    async def main() -> None:
        dns = ("192.0.2.53", "192.0.2.54")
        async with lab_env(lease_seconds=64, dns=dns) as env:
            env.vf.send(bcast(client_msg(DISCOVER, 0x2002)))
            p = await env.vf.expect(reply_to(0x2002, OFFER))
            check_from_server(p)
            assert (p.dst_mac, p.dst_ip) == (GUEST, G4)
            offer = decode(p.payload)
            assert offer.flags == 0 and offer.yiaddr == G4
            check_lease_options(offer, lease=64, dns=ip_bytes(dns[0]) + ip_bytes(dns[1]))
            assert 61 not in offer.options

            env.vf.send(bcast(client_msg(REQUEST, 0x2002, requested=G4, server_id=P4)))
            p = await env.vf.expect(reply_to(0x2002, ACK))
            assert (p.dst_mac, p.dst_ip) == (GUEST, G4)
            check_lease_options(decode(p.payload), lease=64, dns=ip_bytes(dns[0]) + ip_bytes(dns[1]))
            assert env.server.acks()[-1].copies == 1
            assert not any(is_dhcp_reply(q) for q in await env.quiet(env.sby))  # unicast: not flooded

    run(main())


def test_the_same_mac_gets_the_same_address_after_a_release() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            assert await dora(env, env.sby, GUEST, 0x3001) == G4
            assert await dora(env, env.sby, OTHER, 0x3002) == "192.0.2.3"
            env.sby.send(to_server(client_msg(RELEASE, 0x3003, ciaddr=G4, server_id=P4)))
            release = await env.recorded(0x3003, "release")
            assert (release.path, release.ciaddr) == ("sby", G4)
            assert GUEST not in s.leases and s.leases[OTHER][0] == "192.0.2.3"
            assert s.bindings[GUEST] == G4
            # a newcomer asking for the released address does not get it: it stays GUEST's
            env.vf.send(bcast(client_msg(DISCOVER, 0x3004, THIRD, flags=BROADCAST_FLAG, requested=G4), THIRD))
            assert decode((await env.vf.expect(reply_to(0x3004, OFFER))).payload).yiaddr == "192.0.2.4"
            # GUEST comes back, on the other path: the same address
            assert await dora(env, env.vf, GUEST, 0x3005) == G4
            assert s.leases[GUEST][0] == G4
            assert [e.yiaddr for e in s.acks(GUEST)] == [G4, G4]

    run(main())


# ---------------------------------------------------------------- renewals


def test_a_renewal_over_the_other_path_is_acked_there_and_recorded_as_a_renewal() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            assert await dora(env, env.sby, GUEST, 0x4001, flags=0) == G4
            first_expiry = s.leases[GUEST][1]
            t0 = time.monotonic_ns()
            waiter = asyncio.ensure_future(s.wait_for_ack(GUEST, after_ns=t0, kind="renew", timeout=2))

            # renewing: unicast to the server, ciaddr set, over the VF's path (the master moved)
            env.vf.send(to_server(client_msg(REQUEST, 0x4002, ciaddr=G4)))
            p = await env.vf.expect(reply_to(0x4002, ACK))
            check_from_server(p)
            assert (p.dst_mac, p.dst_ip) == (GUEST, G4)
            ack = decode(p.payload)
            assert (ack.ciaddr, ack.yiaddr) == (G4, G4)
            check_lease_options(ack)
            renewal = await waiter
            assert (renewal.kind, renewal.path, renewal.state, renewal.yiaddr) == (
                "ack",
                "vf",
                "renewing",
                G4,
            )
            assert s.renewals() == [renewal] == s.renewals(GUEST, after_ns=t0)
            req = s.find("request", GUEST, after_ns=t0)[0]
            assert (req.state, req.ciaddr, req.dst_ip, req.requested_ip) == ("renewing", G4, P4, None)
            assert env.peer.learned_path(GUEST) == "vf"
            assert s.leases[GUEST][1] > first_expiry
            assert not any(is_dhcp_reply(q) for q in await env.quiet(env.sby))

            # rebinding: broadcast from its address, back on the standby: unicast to ciaddr
            env.sby.send(bcast(client_msg(REQUEST, 0x4003, ciaddr=G4), src_ip=G4))
            p = await env.sby.expect(reply_to(0x4003, ACK))
            assert (p.dst_mac, p.dst_ip) == (GUEST, G4)
            assert [(e.path, e.state) for e in s.renewals()] == [("vf", "renewing"), ("sby", "rebinding")]
            assert len(s.acks(GUEST)) == 3

    run(main())


# ---------------------------------------------------------------- NAK and silence


def test_a_request_for_a_wrong_address_gets_a_nak_and_one_for_another_server_silence() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            assert await dora(env, env.sby, GUEST, 0x5001) == G4
            assert await dora(env, env.sby, OTHER, 0x5002) == "192.0.2.3"

            cases = [
                # (xid, message, the state the server saw)
                (
                    0x5003,
                    bcast(client_msg(REQUEST, 0x5003, requested="192.0.2.77", server_id=P4)),
                    "selecting",
                ),
                (0x5004, bcast(client_msg(REQUEST, 0x5004, requested="192.0.2.9")), "init-reboot"),
                (0x5005, bcast(client_msg(REQUEST, 0x5005, requested="198.51.100.7")), "init-reboot"),
                (0x5006, to_server(client_msg(REQUEST, 0x5006, ciaddr="192.0.2.3")), "renewing"),
            ]
            for xid, frame, state in cases:
                env.sby.send(frame)
                for nic in (env.sby, env.vf):  # a NAK is broadcast
                    p = await nic.expect(reply_to(xid))
                    check_from_server(p)
                    assert (p.dst_mac, p.dst_ip) == (f.BROADCAST_MAC, BCAST)
                    nak = decode(p.payload)
                    assert nak.mtype == NAK
                    assert (nak.yiaddr, nak.ciaddr, nak.chaddr) == (ZERO, ZERO, GUEST)
                    assert nak.options[54] == ip_bytes(P4)
                    assert 56 in nak.options
                    assert not {51, 58, 59, 1, 3} & set(nak.options)
                assert s.naks(after_ns=0)[-1].state == state
            assert s.naks()[-1].reason == f"{GUEST} has {G4}, not 192.0.2.3"

            # selecting another server: recorded, not answered
            env.sby.send(bcast(client_msg(REQUEST, 0x5007, requested=G4, server_id="192.0.2.254")))
            req = await env.recorded(0x5007, "request")
            assert (req.state, req.server_id) == ("selecting", "192.0.2.254")
            assert not any(is_dhcp_reply(q) for q in await env.quiet(env.sby))
            assert not any(is_dhcp_reply(q) for q in await env.quiet(env.vf))
            assert s.events[-1] == req

            # the NAKs changed nothing; init-reboot with the right address is ACKed
            assert s.leases[GUEST][0] == G4
            env.sby.send(bcast(client_msg(REQUEST, 0x5008, requested=G4)))
            await env.sby.expect(reply_to(0x5008, ACK))
            assert s.acks(GUEST)[-1].state == "init-reboot"

    run(main())


def test_a_client_the_server_has_no_record_of() -> None:
    """A guest that kept a lease from before the server started: authoritative, the
    server ACKs a free pool address and NAKs a taken one; otherwise it stays silent."""

    async def main() -> None:
        async with lab_env() as env:
            env.server.reserve(OTHER, "192.0.2.40")
            env.sby.send(bcast(client_msg(REQUEST, 0x6001, requested="192.0.2.50")))
            p = await env.sby.expect(reply_to(0x6001))
            assert decode(p.payload).mtype == ACK
            assert env.server.leases[GUEST][0] == "192.0.2.50"
            env.sby.send(bcast(client_msg(REQUEST, 0x6002, THIRD, requested="192.0.2.40"), THIRD))
            assert decode((await env.sby.expect(reply_to(0x6002))).payload).mtype == NAK
        async with lab_env(authoritative=False) as env:
            env.sby.send(bcast(client_msg(REQUEST, 0x6003, requested="192.0.2.50")))
            await env.recorded(0x6003, "request")
            assert not any(is_dhcp_reply(q) for q in await env.quiet(env.sby))
            assert env.server.leases == {}

    run(main())


# ---------------------------------------------------------------- DECLINE, INFORM


def test_a_declined_address_leaves_the_pool() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            assert await dora(env, env.sby, GUEST, 0x7001) == G4
            env.sby.send(bcast(client_msg(DECLINE, 0x7002, requested=G4, server_id=P4)))
            decline = await env.recorded(0x7002, "decline")
            assert decline.requested_ip == G4
            assert G4 in s.declined and GUEST not in s.leases and GUEST not in s.bindings
            assert await dora(env, env.sby, GUEST, 0x7003) == "192.0.2.3"
            assert await dora(env, env.sby, OTHER, 0x7004) == "192.0.2.4"

    run(main())


def test_inform_gets_an_ack_without_a_lease() -> None:
    async def main() -> None:
        async with lab_env() as env:
            env.vf.send(to_server(client_msg(INFORM, 0x8001, ciaddr="192.0.2.9"), src_ip="192.0.2.9"))
            p = await env.vf.expect(reply_to(0x8001))
            check_from_server(p)
            assert (p.dst_mac, p.dst_ip) == (GUEST, "192.0.2.9")
            ack = decode(p.payload)
            assert ack.mtype == ACK
            assert (ack.ciaddr, ack.yiaddr) == ("192.0.2.9", ZERO)
            assert not {51, 58, 59} & set(ack.options)
            assert {1, 3, 28, 54} <= set(ack.options)
            s = env.server
            assert [e.kind for e in s.events] == ["inform", "ack"]
            assert s.events[-1].state == "inform"
            assert s.acks() == [] and s.leases == {}

    run(main())


# ---------------------------------------------------------------- garbage


def test_malformed_and_foreign_messages_get_no_reply() -> None:
    async def main() -> None:
        async with lab_env() as env:
            good = client_msg(DISCOVER, 0x9001, flags=BROADCAST_FLAG)
            no_cookie = good[:236] + b"\x63\x82\x53\x64" + good[240:]
            no_type = good[:240] + b"\x0c\x01x\xff"
            overrun = good[:240] + b"\x35\x01\x01\x0c\xf0abc"
            bad_overload = good[:240] + b"\x35\x01\x01\x34\x01\x07\xff"
            short_requested = client_msg(REQUEST, 0x9002, extra=b"\x32\x03abc", server_id=P4)
            token_ring = good[:1] + b"\x06" + good[2:]
            offer_from_client = client_msg(OFFER, 0x9003)
            request_of_nothing = client_msg(REQUEST, 0x9004)
            multicast_chaddr = client_msg(DISCOVER, 0x9005, "01:00:5e:00:00:01")
            bootreply = client_msg(OFFER, 0x9006, op=2)
            bad_checksum = bytearray(bcast(good))
            bad_checksum[-1] ^= 0xFF
            malformed = [
                b"",
                b"\x01",
                good[:239],
                no_cookie,
                no_type,
                overrun,
                bad_overload,
                short_requested,
                token_ring,
                offer_from_client,
                request_of_nothing,
                multicast_chaddr,
                bytes(range(256)) * 2,
            ]
            for payload in malformed:
                env.sby.send(bcast(payload))
            ignored = [
                bcast(bootreply),
                bytes(bad_checksum),
                f.udp(GUEST, f.BROADCAST_MAC, ZERO, BCAST, 68, 68, good),  # not to port 67
                f.udp(GUEST, PEER, G4, "192.0.2.99", 68, 67, good),  # to another server
                f.udp(GUEST, "02:00:00:00:00:99", G4, P4, 68, 67, good),  # to another host's MAC
                f.udp(GUEST, PEER, "2001:db8::2", "2001:db8::1", 68, 67, good),  # IPv6
                f.ethernet(f.BROADCAST_MAC, GUEST, f.ETH_P_IP, good),  # not even IPv4
            ]
            for frame in ignored:
                env.sby.send(frame)
            env.sby.send(f.arp_request(GUEST, ZERO, P4))  # a fence: handled after all of the above
            seen = await env.sby.until(lambda p: p.kind == "arp-reply")
            assert not any(is_dhcp_reply(p) for p in seen)
            assert not any(is_dhcp_reply(p) for p in await env.quiet(env.vf))
            s = env.server
            assert s.events == []
            assert s.dropped == {"malformed": len(malformed), "bootreply": 1, "bad-checksum": 1}
            # and it still answers
            env.sby.send(bcast(good))
            assert decode((await env.sby.expect(reply_to(0x9001))).payload).yiaddr == G4

    run(main())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_payloads_to_port_67_never_crash_nor_get_a_reply(payload: bytes) -> None:
    peer = Peer()  # no paths: whatever the server sent would be counted, not transmitted
    try:
        server = DhcpServer(peer)
        frame = bcast(payload)
        server.handle_frame("sby", f.parse(frame), frame)
        assert "error" not in server.dropped
        assert not [e for e in server.events if not e.received]
    finally:
        peer.close()


_VALID = [
    client_msg(DISCOVER, 1, requested=G4, client_id=b"\x01abc"),
    client_msg(REQUEST, 2, requested=G4, server_id=P4),
    client_msg(REQUEST, 3, ciaddr=G4),
    client_msg(INFORM, 4, ciaddr=G4),
    client_msg(DECLINE, 5, requested=G4, server_id=P4),
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 299), st.integers(0, 255)), max_size=8),
    st.integers(0, 300),
)
def test_mutated_messages_never_crash(msg: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(msg)
    for pos, val in flips:
        data[pos] = val
    peer = Peer()
    try:
        server = DhcpServer(peer)
        for frame in (bcast(bytes(data[: cut or None])), to_server(bytes(data[: cut or None]))):
            server.handle_frame("vf", f.parse(frame), frame)
        assert "error" not in server.dropped
        assert all(e.kind in dhcp.EVENT_KINDS for e in server.events)
    finally:
        peer.close()


# ---------------------------------------------------------------- waiting, attaching


def test_wait_for_ack_returns_on_the_event_and_times_out_quickly() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            waiter = asyncio.ensure_future(s.wait_for_ack(GUEST, timeout=2))
            await dora(env, env.vf, GUEST, 0xA001)
            got = await waiter
            assert (got.kind, got.path, got.yiaddr, got.state) == ("ack", "vf", G4, "selecting")
            assert await s.wait_for_ack(timeout=0.05) == got  # already there: no wait
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=r"DHCP ACK to 52:54:00:00:00:02 not true within.*dhcp:"):
                await s.wait_for_ack(OTHER, timeout=0.05)
            with pytest.raises(TimeoutError, match=r"renewal ACK to any client.*leases 52:54"):
                await s.wait_for_ack(kind="renew", timeout=0.05)
            with pytest.raises(TimeoutError):
                await s.wait_for_ack(GUEST, after_ns=time.monotonic_ns(), timeout=0.05)
            assert time.monotonic() - t0 < 1.0
            with pytest.raises(ValueError):
                await s.wait_for_ack(kind="bogus")
            assert not env.peer._waiters

    run(main())


def test_detach_stops_answering_and_attach_resumes() -> None:
    async def main() -> None:
        async with lab_env() as env:
            s = env.server
            s.detach()
            s.detach()
            assert not s.attached
            env.sby.send(bcast(client_msg(DISCOVER, 0xB001, flags=BROADCAST_FLAG)))
            env.sby.send(f.arp_request(GUEST, ZERO, P4))
            seen = await env.sby.until(lambda p: p.kind == "arp-reply")
            assert not any(is_dhcp_reply(p) for p in seen) and s.events == []
            assert s.attach() is s.attach() is s
            env.sby.send(bcast(client_msg(DISCOVER, 0xB002, flags=BROADCAST_FLAG)))
            await env.sby.expect(reply_to(0xB002, OFFER))

    run(main())


# ---------------------------------------------------------------- without sockets


def test_pool_exhaustion_and_reclaiming_a_released_address() -> None:
    peer = Peer()
    try:
        s = DhcpServer(peer, pool=("192.0.2.1", "192.0.2.3"))  # the server's address is left out
        assert s.pool == ("192.0.2.2", "192.0.2.3")

        def handle(frame: bytes) -> None:
            s.handle_frame("sby", f.parse(frame), frame)

        for mac, ip in ((GUEST, G4), (OTHER, "192.0.2.3")):
            handle(bcast(client_msg(DISCOVER, 1, mac), mac))
            handle(bcast(client_msg(REQUEST, 2, mac, requested=ip, server_id=P4), mac))
        assert {m: ip for m, (ip, _e) in s.leases.items()} == {GUEST: G4, OTHER: "192.0.2.3"}
        handle(bcast(client_msg(DISCOVER, 3, THIRD), THIRD))
        assert s.dropped == {"pool-exhausted": 1}
        handle(to_server(client_msg(RELEASE, 4, OTHER, ciaddr="192.0.2.3", server_id=P4), OTHER))
        handle(bcast(client_msg(DISCOVER, 5, THIRD), THIRD))
        assert s.find("offer", THIRD)[0].yiaddr == "192.0.2.3"
        assert OTHER not in s.bindings
    finally:
        peer.close()


def test_constructor_checks() -> None:
    peer = Peer()
    try:
        bad: list[dict[str, Any]] = [
            {"pool": ("192.0.2.9", "192.0.2.2")},
            {"pool": ("192.0.2.2", "198.51.100.9")},
            {"pool": ("192.0.2.0", "192.0.2.9")},
            {"pool": ("192.0.2.1", "192.0.2.1")},
            {"server_ip": "198.51.100.1"},
            {"subnet": "192.0.2.1/24"},
            {"lease_seconds": 0},
            {"dns": ["not-an-address"]},
        ]
        for args in bad:
            with pytest.raises(ValueError):
                DhcpServer(peer, **args)
        s = DhcpServer(peer, lease_seconds=100, router=None)
        assert (s.t1, s.t2, s.router) == (50, 87, None)
        s.reserve(GUEST.upper(), "192.0.2.200")
        assert s.bindings == {GUEST: "192.0.2.200"}
        with pytest.raises(ValueError, match="bound to"):
            s.reserve(OTHER, "192.0.2.200")
        with pytest.raises(ValueError):
            s.reserve(OTHER, P4)
        with pytest.raises(ValueError):
            s.find("bogus")
    finally:
        peer.close()


def test_parse_and_build() -> None:
    msg = dhcp.parse_dhcp(client_msg(REQUEST, 0xDEADBEEF, flags=BROADCAST_FLAG, requested=G4, server_id=P4))
    assert (msg.op, msg.xid, msg.broadcast, msg.chaddr) == (1, 0xDEADBEEF, True, GUEST)
    assert (msg.message_type, msg.requested_ip, msg.server_id, msg.client_id) == (REQUEST, G4, P4, None)
    assert msg.options[12] == b"guest"

    # overloaded 'file' and 'sname' fields, and an option split in two (RFC 3396)
    raw = bytearray(client_msg(DISCOVER, 7, extra=b"\x34\x01\x03\x0c\x02ab"))
    raw[108:116] = b"\x0c\x02cd\x3d\x01x\xff"  # file
    raw[44:50] = b"\x3d\x01y\xff\x00\x00"  # sname
    msg = dhcp.parse_dhcp(bytes(raw))
    assert msg.options[12] == b"guestabcd"
    assert msg.client_id == b"xy"

    with pytest.raises(DhcpError):
        _ = dhcp.parse_dhcp(client_msg(DISCOVER, 1, extra=b"\x36\x02ab")).server_id
    assert (
        dhcp.encode_options([(61, bytes(300))])
        == b"\x3d\xff" + bytes(255) + b"\x3d\x2d" + bytes(45) + b"\xff"
    )
    built = dhcp.build_dhcp(2, 9, GUEST, [(53, b"\x05")], yiaddr=G4, ciaddr=ZERO, flags=BROADCAST_FLAG)
    assert len(built) == 300
    r = decode(built)
    assert (r.op, r.xid, r.flags, r.yiaddr, r.chaddr, r.options) == (
        2,
        9,
        BROADCAST_FLAG,
        G4,
        GUEST,
        {53: b"\x05"},
    )
    event = DhcpEvent(1, "sby", "ack", GUEST, 9, ZERO, G4, None, b"\x01\x02")
    assert event.as_dict()["client_id"] == "0102"
