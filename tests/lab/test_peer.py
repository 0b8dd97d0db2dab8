"""lab.peer against fake QEMU ends: one UDP socket on 127.0.0.1 per path, speaking frames.

Every wait has a deadline and waits for an event (a frame, a peer state change);
"nothing else arrived" is shown with a fence: a later frame on the same socket
pair, after which the frames before it are all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Callable, cast

import pytest

from lab import frames as f
from lab.frames import Parsed
from lab.peer import FLOOD, MAX_BURST, Peer, Stream, StreamReport

from .fakes import FakeNic

GUEST = "52:54:00:12:34:56"
PEER = "02:00:00:00:00:01"
G4, P4 = "192.0.2.2", "192.0.2.1"
G6, P6 = "2001:db8::2", "2001:db8::1"


def kind_is(kind: str) -> Callable[[Parsed], bool]:
    return lambda p: p.kind == kind


def payload_is(payload: bytes) -> Callable[[Parsed], bool]:
    return lambda p: p.kind == "udp" and p.payload == payload


@contextlib.asynccontextmanager
async def lab(paths: tuple[str, ...] = ("sby", "vf")) -> AsyncIterator[tuple[Peer, dict[str, FakeNic]]]:
    peer = Peer()
    nics: dict[str, FakeNic] = {}
    try:
        for name in paths:
            peer.add_path(name)  # before start, as the lab does (the ports go on QEMU's command line)
            nics[name] = FakeNic(peer, name)
        await peer.start()
        for nic in nics.values():
            nic.start()
        yield peer, nics
    finally:
        for nic in nics.values():
            nic.close()
        peer.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 15))


def seq64(p: Parsed) -> int:
    (seq,) = struct.unpack_from("!Q", p.payload, 0)
    return int(seq)


def echo_reply_to(p: Parsed) -> bytes:
    assert p.src_ip is not None and p.dst_ip is not None and p.icmp_id is not None and p.icmp_seq is not None
    return f.icmp_echo(GUEST, p.src_mac, p.dst_ip, p.src_ip, p.icmp_id, p.icmp_seq, p.payload, reply=True)


# ---------------------------------------------------------------- paths


def test_paths_are_bound_before_start_and_validated() -> None:
    peer = Peer()
    try:
        a, b = peer.add_path("sby"), peer.add_path("vf")
        assert a != b and a > 0 and b > 0
        assert peer.paths == ["sby", "vf"]
        with pytest.raises(ValueError, match="exists"):
            peer.add_path("sby")
        with pytest.raises(ValueError):
            peer.add_path(FLOOD)
        with pytest.raises(ValueError, match="no path"):
            peer.set_remote("nope", 1234)
        with pytest.raises(ValueError):
            peer.set_remote("sby", 0)
        with pytest.raises(ValueError):
            peer.steer("nope")
        with pytest.raises(RuntimeError):
            peer.start_stream(100)
        peer.set_remote("sby", 4000)
        assert peer.remote("sby") == 4000
        assert peer.remote("vf") is None
    finally:
        peer.close()
        peer.close()


def test_close_after_the_loop_is_gone_and_sends_without_remote_are_counted() -> None:
    peer = Peer()
    peer.add_path("sby")

    async def main() -> None:
        await peer.start()
        assert peer.send_broadcast(5000, b"x") == 0  # no remote yet: nothing sent
        assert peer.counters("sby").dropped == 1
        assert peer.dropped == {"no-remote": 1}

    asyncio.run(main())
    peer.close()
    with pytest.raises(RuntimeError):
        peer.add_path("vf")


def test_a_path_added_after_start_is_read_at_once() -> None:
    async def main() -> None:
        async with lab(("sby",)) as (peer, _nics):
            peer.add_path("vf2")
            late = FakeNic(peer, "vf2")
            late.start()
            try:
                late.send(f.arp_request(GUEST, G4, P4))
                rep = await late.expect(kind_is("arp-reply"))
                assert rep.target_mac == GUEST
                assert peer.learned_path() == "vf2"
            finally:
                late.close()

    run(main())


# ---------------------------------------------------------------- host behaviour


def test_arp_reply_for_the_peer_ip_goes_back_on_the_path_of_the_request() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            nics["sby"].send(f.arp_request(GUEST, G4, P4))
            rep = await nics["sby"].expect(kind_is("arp-reply"))
            assert (rep.sender_mac, rep.sender_ip, rep.target_mac, rep.target_ip) == (PEER, P4, GUEST, G4)
            assert (rep.src_mac, rep.dst_mac) == (PEER, GUEST)
            assert rep.length == 60  # padded like on a wire
            assert peer.guest_mac == GUEST
            assert peer.learned_path() == "sby"
            # the same request on vf: the guest moves there and the reply follows it;
            # before that reply, vf saw no other ARP reply
            nics["vf"].send(f.arp_request(GUEST, G4, P4))
            seen = await nics["vf"].until(kind_is("arp-reply"))
            assert [p.kind for p in seen] == ["arp-reply"]
            assert peer.counters("sby").tx_kinds == {"arp-reply": 1}
            assert peer.counters("vf").tx_kinds == {"arp-reply": 1}
            # a request for another address is not answered
            nics["vf"].send(f.arp_request(GUEST, G4, "192.0.2.77"))
            nics["vf"].send(f.icmp_echo(GUEST, PEER, G4, P4, 1, 1))  # fence
            seen = await nics["vf"].until(kind_is("icmp-echo-reply"))
            assert [p.kind for p in seen] == ["icmp-echo-reply"]

    run(main())


def test_icmp_and_icmp6_echo_ns_and_udp_echo_are_answered() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            sby = nics["sby"]
            sby.send(f.icmp_echo(GUEST, PEER, G4, P4, 0x77, 3, b"four"))
            rep = await sby.expect(kind_is("icmp-echo-reply"))
            assert (rep.src_ip, rep.dst_ip, rep.icmp_id, rep.icmp_seq, rep.payload) == (
                P4,
                G4,
                0x77,
                3,
                b"four",
            )
            assert rep.checksum_ok is True and rep.dst_mac == GUEST

            sby.send(f.neighbor_solicitation(GUEST, G6, P6))
            na = await sby.expect(kind_is("na"))
            assert (na.nd_target, na.nd_lladdr, na.dst_ip, na.dst_mac) == (P6, PEER, G6, GUEST)
            assert na.na_solicited and na.na_override and na.checksum_ok

            sby.send(f.icmp_echo(GUEST, PEER, G6, P6, 0x78, 4, b"six"))
            rep6 = await sby.expect(kind_is("icmp6-echo-reply"))
            assert (rep6.src_ip, rep6.dst_ip, rep6.icmp_seq, rep6.payload) == (P6, G6, 4, b"six")
            assert rep6.checksum_ok is True

            # the peer's link-local address answers too
            sby.send(f.icmp_echo(GUEST, PEER, "fe80::5054:ff:fe12:3456", peer.link_local, 1, 5))
            rep_ll = await sby.expect(kind_is("icmp6-echo-reply"))
            assert rep_ll.src_ip == "fe80::ff:fe00:1"

            for src, dst in ((G4, P4), (G6, P6)):
                sby.send(f.udp(GUEST, PEER, src, dst, 33000, 7, b"echo me"))
                back = await sby.expect(kind_is("udp"))
                assert (back.src_ip, back.dst_ip, back.sport, back.dport, back.payload) == (
                    dst,
                    src,
                    7,
                    33000,
                    b"echo me",
                )
                assert back.checksum_ok is True
            assert peer.counters("vf").tx_frames == 0

    run(main())


def test_guest_mac_is_learned_from_its_ip_traffic() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            other = "02:00:00:00:00:99"
            nics["vf"].send(f.udp(other, PEER, "192.0.2.50", P4, 1, 9, b"x"))  # not the guest
            nics["vf"].send(f.udp(GUEST, PEER, G6, P6, 1, 9, b"y"))
            await peer.wait_for(lambda p: p.guest_mac is not None, 2)
            assert peer.guest_mac == GUEST
            assert set(peer.learned) == {other, GUEST}
            assert [m.from_path for m in peer.moves] == [None, None]

    run(main())


# ---------------------------------------------------------------- switching


def test_learning_moves_and_announcements() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            nics["sby"].send(f.arp_request(GUEST, G4, P4))
            first = await peer.wait_learned(None, "sby", 2)
            t_before_garp = time.monotonic_ns()
            nics["vf"].send(f.garp(GUEST, G4))
            since = await peer.wait_learned(GUEST, "vf", 2)
            assert first < t_before_garp <= since
            move = peer.moves[-1]
            assert (move.mac, move.from_path, move.to_path, move.kind) == (GUEST, "sby", "vf", "garp")
            ann = await peer.wait_announcement("vf", t_before_garp, 2)
            assert (ann.kind, ann.mac, ann.ip, ann.path) == ("garp", GUEST, G4, "vf")
            assert peer.announcements["sby"] == []

            t_before_na = time.monotonic_ns()
            nics["sby"].send(f.unsolicited_na(GUEST, G6))
            ann6 = await peer.wait_announcement("sby", t_before_na, 2)
            assert (ann6.kind, ann6.ip) == ("unsolicited-na", G6)
            assert peer.learned_path(GUEST) == "sby"
            assert [(m.from_path, m.to_path, m.kind) for m in peer.moves] == [
                (None, "sby", "arp-request"),
                ("sby", "vf", "garp"),
                ("vf", "sby", "unsolicited-na"),
            ]
            # the announcement before `after_ns` does not count
            with pytest.raises(TimeoutError):
                await peer.wait_announcement("vf", t_before_na, 0.05)
            snap = json.loads(json.dumps(peer.snapshot()))
            assert snap["learned"][GUEST]["path"] == "sby"
            assert len(snap["moves"]) == 3
            assert snap["announcements"]["vf"][0]["kind"] == "garp"
            assert snap["paths"]["vf"]["rx_kinds"] == {"garp": 1}

    run(main())


def test_steering_overrides_learning() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            sby, vf = nics["sby"], nics["vf"]
            vf.send(f.icmp_echo(GUEST, PEER, G4, P4, 9, 1))
            assert (await vf.expect(kind_is("icmp-echo-reply"))).icmp_seq == 1
            peer.steer("sby")
            vf.send(f.icmp_echo(GUEST, PEER, G4, P4, 9, 2))
            assert (await sby.expect(kind_is("icmp-echo-reply"))).icmp_seq == 2
            assert peer.learned_path() == "vf"  # learning is unchanged, only the way out
            peer.steer(None)
            vf.send(f.icmp_echo(GUEST, PEER, G4, P4, 9, 3))
            seen = await vf.until(kind_is("icmp-echo-reply"))
            assert [(p.kind, p.icmp_seq) for p in seen] == [("icmp-echo-reply", 3)]
            assert peer.counters("sby").tx_kinds == {"icmp-echo-reply": 1}
            assert peer.counters("vf").tx_kinds == {"icmp-echo-reply": 2}
            assert peer.counters("sby").flooded == 0

    run(main())


def test_unknown_unicast_is_flooded_and_a_known_one_is_not() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            unknown = "02:00:00:00:00:99"
            frame = f.udp(PEER, unknown, P4, "192.0.2.99", 9, 9, b"who")
            assert peer.send_frame(None, frame) == 2
            for nic in nics.values():
                got = await nic.expect(payload_is(b"who"))
                assert got.dst_mac == unknown
                assert peer.counters(nic.path).flooded == 1
                assert peer.counters(nic.path).tx_kinds == {"udp": 1}
            # once it speaks on vf, frames to it go to vf only
            nics["vf"].send(f.udp(unknown, PEER, "192.0.2.99", P4, 9, 9, b"here"))
            await peer.wait_learned(unknown, "vf", 2)
            assert peer.send_frame(None, f.udp(PEER, unknown, P4, "192.0.2.99", 9, 9, b"again")) == 1
            assert peer.send_frame("sby", f.udp(PEER, unknown, P4, "192.0.2.99", 9, 9, b"fence")) == 1
            seen = await nics["sby"].until(payload_is(b"fence"))
            assert [p.payload for p in seen] == [b"fence"]
            await nics["vf"].expect(payload_is(b"again"))

    run(main())


def test_stream_before_the_guest_is_known_floods_an_arp_request() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            stream = peer.start_stream(200)
            for nic in nics.values():
                req = await nic.expect(kind_is("arp-request"))
                assert (req.target_ip, req.sender_ip, req.dst_mac) == (G4, P4, f.BROADCAST_MAC)

            def answer(nic: FakeNic, p: Parsed) -> None:
                if p.kind == "icmp-echo-request":
                    nic.send(echo_reply_to(p))

            nics["vf"].responder = answer
            nics["vf"].send(f.arp_reply(GUEST, G4, PEER, P4))
            await peer.wait_for(lambda _p: stream.replied >= 5, 3, "5 replies")
            report = await peer.stop_stream(stream, grace=1.0)
            assert report.not_transmitted >= 1
            assert peer.dropped["guest-unresolved"] == report.not_transmitted
            assert report.lost == report.not_transmitted
            assert report.lost_seqs[0][0] == 0
            assert report.sent_per_path == {"vf": report.sent - report.not_transmitted}
            assert report.replies_per_path == {"vf": report.replied}

    run(main())


def test_broadcast_is_flooded_once_on_every_path() -> None:
    async def main() -> None:
        async with lab(("sby", "vf", "other")) as (peer, nics):
            peer.steer("vf")  # steering pins unicast only: a switch floods broadcasts
            assert peer.send_broadcast(5000, b"bc-1") == 3
            assert peer.send_broadcast(5000, b"fence") == 3
            for nic in nics.values():
                seen = await nic.until(payload_is(b"fence"))
                assert [p.payload for p in seen] == [b"bc-1", b"fence"]
                bc = seen[0]
                assert (bc.dst_mac, bc.dst_ip, bc.src_ip, bc.dport) == (
                    f.BROADCAST_MAC,
                    "192.0.2.255",
                    P4,
                    5000,
                )
                assert peer.counters(nic.path).flooded == 2
            assert peer.broadcasts_sent == 2

    run(main())


# ---------------------------------------------------------------- round-trip stream


def test_stream_loss_per_path_duplicates_reordering_and_windows() -> None:
    drop = {5, 6, 7, 50}
    on_vf = set(range(20, 40))
    held: list[bytes] = []

    async def main() -> None:
        async with lab() as (peer, nics):
            nics["sby"].send(f.arp_request(GUEST, G4, P4))
            await peer.wait_learned(None, "sby", 2)
            peer.steer("sby")  # the answers on vf below must not move where requests go

            def guest(nic: FakeNic, p: Parsed) -> None:
                if p.kind != "icmp-echo-request":
                    return
                seq = seq64(p)
                if seq in drop:
                    return
                reply = echo_reply_to(p)
                out = nics["vf"] if seq in on_vf else nics["sby"]
                if seq == 70:  # answered after 71
                    held.append(reply)
                    return
                out.send(reply)
                if seq == 60:
                    out.send(reply)  # a duplicate
                if seq == 71:
                    out.send(held.pop())

            nics["sby"].responder = guest
            stream = peer.start_stream(200)
            await peer.wait_for(lambda _p: stream.sent >= 100, 3, "100 sent")
            report = await peer.stop_stream(stream, grace=0.3)

            n = report.sent
            assert n >= 100
            assert report.lost == 4
            assert report.lost_seqs == [(5, 7), (50, 50)]
            assert report.replied == n - 4
            assert report.sent_per_path == {"sby": n}
            assert report.replies_per_path == {"vf": 20, "sby": n - 24}
            assert report.duplicates == 1
            recs = report.records
            assert recs[70].arrival is not None and recs[71].arrival is not None
            assert recs[70].arrival > recs[71].arrival
            # 70 after 71; replies over two sockets around a path change may add one more
            # if the loop was late (the exact count is tested in the wrap test)
            assert 1 <= report.reordered <= 3
            assert report.stray == 0
            assert report.first_reply_on_path_ns["sby"] < report.first_reply_on_path_ns["vf"]
            assert report.first_reply_on_path_ns["vf"] == recs[20].recv_ns
            # the longest outage: replies to 4 and 8 are 4 slots (20 ms) apart in send time
            assert 15 <= report.longest_gap_ms_send < 200
            assert report.longest_gap_ms_recv > 0
            # pacing: the last packet went in the slot due at its send time
            last_slot = report.sent + report.skipped_slots - 1
            assert abs(last_slot - (recs[-1].send_ns - report.start_ns) * 200 / 1e9) < 1.5

            early = report.window(recs[0].send_ns, recs[8].send_ns)
            assert (early.sent, early.lost, early.lost_seqs) == (8, 3, [(5, 7)])
            middle = report.window(recs[8].send_ns, recs[50].send_ns)
            assert (middle.sent, middle.lost, middle.replies_per_path) == (42, 0, {"sby": 22, "vf": 20})
            assert report.lost_between(recs[50].send_ns, recs[51].send_ns) == 1
            assert json.loads(json.dumps(report.as_dict()))["lost_seqs"] == [[5, 7], [50, 50]]
            # the stream is gone: a late reply is received but not counted
            late = await nics["sby"].expect(lambda p: p.kind == "icmp-echo-request" and seq64(p) == 5, 0)
            rx = peer.counters("sby").rx_kinds["icmp-echo-reply"]
            nics["sby"].send(echo_reply_to(late))
            nics["sby"].send(f.arp_request(GUEST, G4, P4))  # a fence
            await nics["sby"].expect(kind_is("arp-reply"))
            assert peer.counters("sby").rx_kinds["icmp-echo-reply"] == rx + 1
            assert stream.replied == n - 4

    run(main())


class _Timer:
    def cancel(self) -> None:
        pass


class _Clock:
    """A stand-in for the loop in a pacing test: time is set by the test, timers are recorded."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, cb: Callable[..., None], *args: Any) -> asyncio.Handle:
        return self.call_at(self.now, cb, *args)

    def call_at(self, when: float, cb: Callable[..., None], *args: Any) -> asyncio.Handle:
        self.timers.append((when, cb, args))
        return cast(asyncio.Handle, _Timer())

    def fire(self) -> float:
        when, cb, args = self.timers.pop(0)
        cb(*args)
        return when


def test_pacing_follows_the_slot_grid_and_a_late_loop_skips_instead_of_bursting() -> None:
    peer = Peer()
    try:
        peer.add_path("sby")  # no remote: the packets are counted, not transmitted
        clock = _Clock()
        peer._loop = cast(asyncio.AbstractEventLoop, clock)
        peer.guest_mac = GUEST
        stream = peer.start_stream(1000)
        assert clock.fire() == 100.0  # slot 0 at once
        assert stream.sent == 1
        assert clock.timers[0][0] == pytest.approx(100.001)  # slot 1: start + 1/rate, no drift
        clock.now = 100.001
        clock.fire()
        assert (stream.sent, stream.skipped_slots) == (2, 0)
        clock.now = 100.0025  # a bit late: slot 2 only
        clock.fire()
        assert stream.sent == 3
        assert clock.timers[0][0] == pytest.approx(100.003)
        clock.now = 100.0605  # 58 ms late: slots 3..60 are due
        clock.fire()
        assert stream.sent == 3 + MAX_BURST  # a few, not a burst of 58
        assert stream.skipped_slots == 58 - MAX_BURST
        assert clock.timers[0][0] == pytest.approx(100.061)  # back on the grid
        report = stream.report()
        assert (report.sent, report.not_transmitted, report.skipped_slots) == (7, 7, 54)
    finally:
        peer.close()


def test_at_high_rates_a_burst_may_hold_2_ms_of_packets() -> None:
    """The loop wakes up at 1 ms granularity (epoll): at 10000 pps, 10 packets are due
    at every wake-up without the loop being late."""
    peer = Peer()
    try:
        peer.add_path("sby")
        clock = _Clock()
        peer._loop = cast(asyncio.AbstractEventLoop, clock)
        peer.guest_mac = GUEST
        fast = peer.start_stream(10000)
        clock.fire()  # slot 0
        clock.now += 0.00155  # slots 1..15 due
        clock.fire()
        assert (fast.sent, fast.skipped_slots) == (16, 0)
        clock.now += 0.00305  # slots 16..45 due: 30, more than 2 ms worth (20)
        clock.fire()
        assert (fast.sent, fast.skipped_slots) == (36, 10)
    finally:
        peer.close()


def test_stream_over_ipv6() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            nics["vf"].send(f.neighbor_solicitation(GUEST, G6, P6))
            await nics["vf"].expect(kind_is("na"))

            def guest(nic: FakeNic, p: Parsed) -> None:
                if p.kind == "icmp6-echo-request" and seq64(p) != 3:
                    nic.send(echo_reply_to(p))

            nics["vf"].responder = guest
            stream = peer.start_stream(500, family=6, payload_len=64)
            await peer.wait_for(lambda _p: stream.sent >= 20, 3)
            report = await peer.stop_stream(stream, grace=0.2)
            assert report.family == 6
            assert report.lost_seqs == [(3, 3)]
            assert report.sent_per_path == {"vf": report.sent}
            assert report.replies_per_path == {"vf": report.sent - 1}
            assert all(p.checksum_ok for p in nics["vf"].frames if p.kind == "icmp6-echo-request")
            assert {len(p.payload) for p in nics["vf"].frames if p.kind == "icmp6-echo-request"} == {64}

    run(main())


def test_stream_accounting_survives_16_bit_seq_wrap() -> None:
    stream = Stream(0x4746, 4, 1000.0, 32, G4)
    for i in range(70000):
        stream._record_send(1_000_000 + i, "sby")

    def reply(seq: int, send_ns: int) -> Parsed:
        frame = f.icmp_echo(GUEST, PEER, G4, P4, 0x4746, seq, struct.pack("!QQ", seq, send_ns), reply=True)
        return f.parse(frame)

    stream._on_reply(reply(65537, 1_000_000 + 65537), "vf", 5)
    stream._on_reply(reply(1, 1_000_000 + 65537), "vf", 6)  # seq 1's send time is not this one
    stream._on_reply(reply(1, 1_000_000 + 1), "sby", 7)
    recs = stream.records()
    assert (recs[65537].recv_path, recs[65537].recv_ns) == ("vf", 5)
    assert (recs[1].recv_path, recs[1].recv_ns) == ("sby", 7)
    assert stream.stray == 1
    report = StreamReport.build(
        recs, ident=0x4746, family=4, rate_pps=1000.0, start_ns=0, end_ns=10, stray=stream.stray
    )
    assert report.replied == 2
    assert report.lost_seqs == [(0, 0), (2, 65536), (65538, 69999)]
    assert report.reordered == 1  # 1 arrived after 65537


# ---------------------------------------------------------------- sink


def test_sink_accounting_with_gaps_duplicates_and_paths() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):

            def sink(seq: int, sport: int = 40000, dst: str = P4, src: str = G4) -> bytes:
                payload = b"GFSQ" + struct.pack(">QQ", seq, 123456789)
                return f.udp(GUEST, PEER, src, dst, sport, 9, payload)

            for seq in range(10):
                if seq not in (7, 8):
                    nics["sby"].send(sink(seq))
            nics["sby"].send(sink(3))  # a duplicate
            await peer.wait_for(lambda p: p.sink_report(40000).frames == 9, 2, "9 sink datagrams")
            for seq in (10, 11, 13, 15, 14, 16, 17, 18, 19):  # 14 arrives after 15
                nics["vf"].send(sink(seq))
            nics["vf"].send(sink(0, sport=40001, dst=P6, src=G6))
            nics["vf"].send(sink(1, sport=40001, dst=P6, src=G6))
            nics["vf"].send(f.udp(GUEST, PEER, G4, P4, 40002, 9, b"not a sequence"))
            await peer.wait_for(lambda p: p.sink_report(40000).frames == 18, 2, "18 sink datagrams")
            await peer.wait_for(lambda p: p.sink_report(40001).frames == 2, 2)

            r = peer.sink_report(40000)
            assert (r.received, r.lost, r.lost_seqs, r.duplicates) == (17, 3, [(7, 8), (12, 12)], 1)
            assert (r.first_seq, r.last_seq) == (0, 19)
            assert r.reordered == 1
            assert r.per_path == {"sby": 9, "vf": 9}
            assert r.first_on_path_ns["sby"] < r.first_on_path_ns["vf"]
            assert r.first_ns is not None and r.last_ns is not None
            assert 0 < r.longest_gap_ms <= (r.last_ns - r.first_ns) / 1e6
            v6 = peer.sink_report(40001)
            assert (v6.received, v6.lost, v6.per_path) == (2, 0, {"vf": 2})
            assert peer.sink_flows() == [40000, 40001]
            with pytest.raises(ValueError, match="several"):
                peer.sink_report()
            assert peer.sink_report(1234).received == 0
            assert peer.snapshot()["sink_other"] == 1
            peer.reset_sink(40001)
            assert peer.sink_report().src_port == 40000

    run(main())


# ---------------------------------------------------------------- waiting, hooks, robustness


def test_wait_for_times_out_quickly_with_a_summary() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            nics["sby"].send(f.arp_request(GUEST, G4, P4))
            await peer.wait_learned(None, "sby", 2)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError, match=r"never.*guest 52:54:00:12:34:56 on sby"):
                await peer.wait_for(lambda _p: False, 0.05, "never")
            with pytest.raises(TimeoutError, match="learned on vf"):
                await peer.wait_learned(None, "vf", 0.05)
            assert time.monotonic() - t0 < 1.0
            assert not peer._waiters

    run(main())


def test_wait_for_sees_a_transient_state() -> None:
    """The predicate runs after every frame, not when the waiting task next runs:
    a guest MAC that lasts for one frame only is seen."""

    async def main() -> None:
        async with lab() as (peer, nics):
            first = "02:00:00:00:00:aa"
            waiter = asyncio.ensure_future(peer.wait_for(lambda p: p.guest_mac == first, 2))
            # both queued before the peer reads its socket: it handles them in one go
            nics["sby"].send(f.udp(first, PEER, G4, P4, 1, 9, b"a"))
            nics["sby"].send(f.udp(GUEST, PEER, G4, P4, 1, 9, b"b"))
            await waiter
            await peer.wait_for(lambda p: p.guest_mac == GUEST, 2)
            assert [m for _t, m in peer.guest_mac_history] == [first, GUEST]

    run(main())


def test_frame_hooks_and_a_failing_hook() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            seen: list[tuple[str, str, int]] = []

            def bad(path: str, p: Parsed, raw: bytes) -> None:
                raise RuntimeError("a plug-in bug")

            peer.on_frame(bad)
            remove = peer.on_frame(lambda path, p, raw: seen.append((path, p.kind, len(raw))))
            nics["vf"].send(f.router_solicitation(GUEST))
            await peer.wait_for(lambda _p: len(seen) == 1, 2)
            assert seen == [("vf", "rs", 70)]
            remove()
            nics["vf"].send(f.arp_request(GUEST, G4, P4))
            await nics["vf"].expect(kind_is("arp-reply"))
            assert len(seen) == 1

    run(main())


def test_garbage_and_foreign_datagrams_do_not_stop_the_peer() -> None:
    async def main() -> None:
        async with lab() as (peer, nics):
            sby = nics["sby"]
            valid = f.icmp_echo(GUEST, PEER, G4, P4, 1, 1, b"abc")
            garbage = [valid[:n] for n in range(len(valid))] + [bytes(range(256)) * 4, b"\xff" * 1500]
            for g in garbage:
                sby.send(g)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.bind(("127.0.0.1", 0))
                stranger.sendto(f.arp_request(GUEST, G4, P4), ("127.0.0.1", peer.port("sby")))
            await peer.wait_for(lambda p: p.dropped.get("foreign-source") == 1, 2)
            sby.send(f.arp_request(GUEST, G4, P4))
            await sby.expect(kind_is("arp-reply"))
            c = peer.counters("sby")
            assert c.rx_frames == len(garbage) + 1
            assert c.rx_kinds["malformed"] == len(valid)  # every truncation
            assert c.rx_kinds["unknown"] == 2
            assert sum(c.rx_kinds.values()) == c.rx_frames
            assert c.dropped == 1
            # a switch learns from any well-formed frame: the unicast source of the unknown one
            assert set(peer.learned) == {GUEST, "06:07:08:09:0a:0b"}

    run(main())
