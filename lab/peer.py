"""The lab's peer: the other end of every guest NIC's `-netdev dgram` socket.

QEMU sends each Ethernet frame a guest NIC transmits as one UDP datagram from
127.0.0.1:<qemu_port> to 127.0.0.1:<peer_port>, and hands any datagram sent to
127.0.0.1:<qemu_port> to that NIC as a received frame.  The peer binds one
socket per NIC ("path"), so it always knows which path carried a frame.

It behaves like a small learning switch with one host behind it:

- every received frame's source MAC is learned on its path (moves and the
  guest's announcements, gratuitous ARP and unsolicited NA, are logged with
  their `time.monotonic_ns()` stamps);
- frames to the guest follow learning, or `steer()`, which pins them to one path
  (a host NIC that moved its MAC filter early); unknown unicast, broadcast and
  multicast are flooded on every path;
- the host answers ARP, NS, ICMP and ICMPv6 echo, echoes UDP port 7 and counts
  UDP port 9 ("sink": the guest's sequence-numbered streams);
- `start_stream()` sends paced echo requests to the guest and `stop_stream()`
  reports the round-trip loss, per path.

All methods are meant to run on the event loop the peer was started in (the
lab's `on_loop`); `steer()` and `snapshot()` also tolerate another thread, and
`close()` may be called after that loop stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from lab import frames
from lab.frames import Parsed

log = logging.getLogger("lab.peer")

LOOPBACK = "127.0.0.1"
MIN_FRAME_LEN = 60  # what a wire pads a frame to (without FCS)
ECHO_PORT = 7
SINK_PORT = 9
SINK_MAGIC = b"GFSQ"
SINK_PAYLOAD_LEN = 20  # magic + 8-byte seq + 8-byte guest send time
STREAM_HEADER_LEN = 16  # 8-byte seq + 8-byte send time in every echo request of a stream
FLOOD = "*"  # the sent path of a stream packet that was flooded on every path
# A late stream sends at most this many due packets at once, or BURST_WINDOW_S worth of
# them at high rates: the loop's epoll timeout has a 1 ms granularity, so above ~4000 pps
# several packets are due at every wake-up even when the loop is not late.
MAX_BURST = 4
BURST_WINDOW_S = 0.002
RECV_BATCH = 64
RESOLVE_INTERVAL_NS = 200_000_000  # at most one ARP request / NS for the guest per 200 ms and family
BROADCAST_IPV4 = "192.0.2.255"

FrameHandler = Callable[[str, Parsed, bytes], None]
Predicate = Callable[["Peer"], bool]


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Move:
    """A MAC seen on a path other than where it was learned (from_path None: first seen)."""

    t_ns: int
    mac: str
    from_path: Optional[str]
    to_path: str
    kind: str


@dataclass(frozen=True)
class Announcement:
    """A gratuitous ARP or an unsolicited NA, as received on `path`."""

    t_ns: int
    path: str
    mac: str
    kind: str
    ip: Optional[str]


@dataclass
class Learned:
    mac: str
    path: str
    since_ns: int  # when it was learned on this path
    last_ns: int  # the last frame from it
    kind: str  # the kind of the frame that taught the current path


@dataclass
class PathCounters:
    rx_frames: int = 0
    tx_frames: int = 0
    flooded: int = 0  # copies sent here because the destination was unknown or a group
    dropped: int = 0  # frames for this path not sent (no remote yet, socket full), or refused
    rx_kinds: dict[str, int] = field(default_factory=dict)
    tx_kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class _Path:
    name: str
    sock: socket.socket
    port: int
    remote: Optional[int] = None
    reading: bool = False
    counters: PathCounters = field(default_factory=PathCounters)


def _count(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def _ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """[(first, last), ...] inclusive runs of the sorted integers."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


def _ms(ns: int) -> float:
    return ns / 1e6


# ---------------------------------------------------------------- round trip stream


@dataclass(frozen=True)
class PacketRecord:
    """One echo request of a stream and its first reply."""

    seq: int  # the stream's 64-bit sequence number (the ICMP seq is its low 16 bits)
    send_ns: int
    sent_path: Optional[str]  # None: not transmitted (guest MAC unknown, no remote); "*": flooded
    recv_ns: Optional[int] = None
    recv_path: Optional[str] = None
    copies: int = 0  # replies received for it (more than 1: duplicates)
    arrival: Optional[int] = None  # rank of its first reply among the stream's replies


@dataclass(frozen=True)
class StreamReport:
    """Round-trip accounting of a peer-originated echo stream (or of a time window of it)."""

    ident: int
    family: int
    rate_pps: float
    start_ns: int
    end_ns: int
    sent: int  # packets the stream generated in the window (transmitted or not)
    replied: int  # of those, how many got at least one reply
    lost: int
    lost_seqs: list[tuple[int, int]]  # inclusive ranges of 64-bit seqs
    longest_gap_ms_send: float  # longest send-time span between consecutive replied packets
    longest_gap_ms_recv: float  # longest receive-time span between consecutive replies
    sent_per_path: dict[str, int]
    replies_per_path: dict[str, int]  # first replies, by the path they came back on
    duplicates: int
    reordered: int  # first replies that arrived after a reply to a later seq
    first_reply_on_path_ns: dict[str, int]
    not_transmitted: int
    skipped_slots: int  # pacing slots skipped because the loop was late (whole stream)
    stray: int  # replies with this ident that matched no request (whole stream)
    records: tuple[PacketRecord, ...] = field(repr=False, default=())

    @classmethod
    def build(
        cls,
        records: tuple[PacketRecord, ...],
        *,
        ident: int,
        family: int,
        rate_pps: float,
        start_ns: int,
        end_ns: int,
        skipped_slots: int = 0,
        stray: int = 0,
    ) -> StreamReport:
        sent_per_path: dict[str, int] = {}
        replies_per_path: dict[str, int] = {}
        first_on_path: dict[str, int] = {}
        lost: list[int] = []
        replied: list[PacketRecord] = []
        duplicates = not_transmitted = 0
        for r in records:
            if r.sent_path is None:
                not_transmitted += 1
            else:
                _count(sent_per_path, r.sent_path)
            if r.recv_ns is None or r.recv_path is None:
                lost.append(r.seq)
                continue
            replied.append(r)
            duplicates += r.copies - 1
            _count(replies_per_path, r.recv_path)
            if r.recv_path not in first_on_path or r.recv_ns < first_on_path[r.recv_path]:
                first_on_path[r.recv_path] = r.recv_ns
        # send-time gaps: between consecutive replied packets, and from the first /
        # to the last packet of the window when those were lost
        gap_send = 0
        if records:
            marks = [records[0].send_ns, *(r.send_ns for r in replied), records[-1].send_ns]
            gap_send = max(b - a for a, b in zip(marks, marks[1:]))
        by_arrival = sorted(replied, key=lambda r: r.arrival or 0)
        recv_times = sorted(r.recv_ns for r in replied if r.recv_ns is not None)
        gap_recv = max((b - a for a, b in zip(recv_times, recv_times[1:])), default=0)
        reordered = 0
        highest = -1
        for r in by_arrival:
            if r.seq < highest:
                reordered += 1
            highest = max(highest, r.seq)
        return cls(
            ident=ident,
            family=family,
            rate_pps=rate_pps,
            start_ns=start_ns,
            end_ns=end_ns,
            sent=len(records),
            replied=len(replied),
            lost=len(lost),
            lost_seqs=_ranges(lost),
            longest_gap_ms_send=_ms(gap_send),
            longest_gap_ms_recv=_ms(gap_recv),
            sent_per_path=sent_per_path,
            replies_per_path=replies_per_path,
            duplicates=duplicates,
            reordered=reordered,
            first_reply_on_path_ns=first_on_path,
            not_transmitted=not_transmitted,
            skipped_slots=skipped_slots,
            stray=stray,
            records=records,
        )

    def window(self, t0_ns: int, t1_ns: int) -> StreamReport:
        """The same accounting for the packets sent in [t0_ns, t1_ns)."""
        recs = tuple(r for r in self.records if t0_ns <= r.send_ns < t1_ns)
        return StreamReport.build(
            recs,
            ident=self.ident,
            family=self.family,
            rate_pps=self.rate_pps,
            start_ns=max(t0_ns, self.start_ns),
            end_ns=min(t1_ns, self.end_ns),
            skipped_slots=self.skipped_slots,
            stray=self.stray,
        )

    def lost_between(self, t0_ns: int, t1_ns: int) -> int:
        return self.window(t0_ns, t1_ns).lost

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable, without the per-packet records."""
        d = asdict(self)
        del d["records"]
        d["lost_seqs"] = [list(r) for r in self.lost_seqs]
        return d


class Stream:
    """A running echo stream; made by `Peer.start_stream`, ended by `Peer.stop_stream`."""

    def __init__(self, ident: int, family: int, rate_pps: float, payload_len: int, dst_ip: str) -> None:
        self.ident = ident
        self.family = family
        self.rate_pps = rate_pps
        self.payload_len = payload_len
        self.dst_ip = dst_ip
        self.start_ns = 0
        self.stop_ns: Optional[int] = None
        self.running = False
        self.skipped_slots = 0
        self.stray = 0
        self._t0 = 0.0  # loop.time() of slot 0
        self._next_slot = 0
        self._handle: Optional[asyncio.Handle] = None
        self._send_ns: list[int] = []
        self._sent_path: list[Optional[str]] = []
        self._transmitted = 0
        self._recv: dict[int, tuple[int, str, int]] = {}  # seq -> (recv_ns, path, arrival rank)
        self._copies: dict[int, int] = {}

    @property
    def sent(self) -> int:
        return len(self._send_ns)

    @property
    def replied(self) -> int:
        return len(self._recv)

    @property
    def all_answered(self) -> bool:
        return self.replied >= self._transmitted

    def _record_send(self, send_ns: int, path: Optional[str]) -> None:
        self._send_ns.append(send_ns)
        self._sent_path.append(path)
        if path is not None:
            self._transmitted += 1

    def _on_reply(self, p: Parsed, path: str, now_ns: int) -> None:
        if len(p.payload) < STREAM_HEADER_LEN or p.src_ip != self.dst_ip:
            self.stray += 1
            return
        seq, send_ns = struct.unpack_from("!QQ", p.payload, 0)
        if seq >= len(self._send_ns) or self._send_ns[seq] != send_ns or (seq & 0xFFFF) != p.icmp_seq:
            self.stray += 1
            return
        self._copies[seq] = self._copies.get(seq, 0) + 1
        if seq not in self._recv:
            self._recv[seq] = (now_ns, path, len(self._recv))

    def records(self) -> tuple[PacketRecord, ...]:
        out = []
        for seq, (send_ns, sent_path) in enumerate(zip(self._send_ns, self._sent_path)):
            got = self._recv.get(seq)
            if got is None:
                out.append(PacketRecord(seq, send_ns, sent_path))
            else:
                out.append(PacketRecord(seq, send_ns, sent_path, got[0], got[1], self._copies[seq], got[2]))
        return tuple(out)

    def report(self) -> StreamReport:
        """The accounting so far (final once `Peer.stop_stream` returned)."""
        end = self.stop_ns if self.stop_ns is not None else time.monotonic_ns()
        return StreamReport.build(
            self.records(),
            ident=self.ident,
            family=self.family,
            rate_pps=self.rate_pps,
            start_ns=self.start_ns,
            end_ns=end,
            skipped_slots=self.skipped_slots,
            stray=self.stray,
        )

    def __repr__(self) -> str:
        return (
            f"Stream(ident={self.ident:#06x}, v{self.family}, {self.rate_pps} pps, "
            f"sent={self.sent}, replied={self.replied}, running={self.running})"
        )


# ---------------------------------------------------------------- guest-originated streams


@dataclass(frozen=True)
class SinkReport:
    """Guest-to-peer accounting of one UDP flow to the sink port (by source port)."""

    src_port: Optional[int]
    received: int  # distinct seqs
    frames: int  # datagrams, duplicates included
    lost: int
    lost_seqs: list[tuple[int, int]]  # gaps between the lowest and the highest seq seen
    duplicates: int
    reordered: int
    first_seq: Optional[int]
    last_seq: Optional[int]
    per_path: dict[str, int]  # datagrams per path, duplicates included
    first_on_path_ns: dict[str, int]
    first_ns: Optional[int]
    last_ns: Optional[int]
    longest_gap_ms: float  # between consecutive arrivals
    longest_gap_start_ns: Optional[int]  # the arrival before that gap
    arrivals: tuple[tuple[int, int, str], ...] = field(repr=False, default=())  # (recv_ns, seq, path)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["arrivals"]
        d["lost_seqs"] = [list(r) for r in self.lost_seqs]
        return d


class _Flow:
    def __init__(self, src_port: Optional[int]) -> None:
        self.src_port = src_port
        self.arrivals: list[tuple[int, int, str]] = []

    def report(self) -> SinkReport:
        seen: dict[int, int] = {}
        per_path: dict[str, int] = {}
        first_on_path: dict[str, int] = {}
        reordered = 0
        highest = -1
        gap, gap_start = 0, None
        prev: Optional[int] = None
        for t, seq, path in self.arrivals:
            if seq in seen:
                seen[seq] += 1
            else:
                seen[seq] = 1
                if seq < highest:
                    reordered += 1
            highest = max(highest, seq)
            _count(per_path, path)
            first_on_path.setdefault(path, t)
            if prev is not None and t - prev > gap:
                gap, gap_start = t - prev, prev
            prev = t
        lost: list[int] = []
        if seen:
            lo, hi = min(seen), max(seen)
            lost = [s for s in range(lo, hi + 1) if s not in seen]
        return SinkReport(
            src_port=self.src_port,
            received=len(seen),
            frames=len(self.arrivals),
            lost=len(lost),
            lost_seqs=_ranges(lost),
            duplicates=len(self.arrivals) - len(seen),
            reordered=reordered,
            first_seq=min(seen) if seen else None,
            last_seq=max(seen) if seen else None,
            per_path=per_path,
            first_on_path_ns=first_on_path,
            first_ns=self.arrivals[0][0] if self.arrivals else None,
            last_ns=self.arrivals[-1][0] if self.arrivals else None,
            longest_gap_ms=_ms(gap),
            longest_gap_start_ns=gap_start,
            arrivals=tuple(self.arrivals),
        )


# ---------------------------------------------------------------- the peer


class Peer:
    def __init__(
        self,
        mac: str = "02:00:00:00:00:01",
        ipv4: str = "192.0.2.1",
        ipv6: str = "2001:db8::1",
        guest_ipv4: str = "192.0.2.2",
        guest_ipv6: str = "2001:db8::2",
    ) -> None:
        self.mac = frames.normalize_mac(mac)
        if frames.is_multicast_mac(self.mac):
            raise ValueError(f"the peer's MAC must be unicast: {mac}")
        self.ipv4 = str(frames.ip_address(ipv4))
        self.ipv6 = str(frames.ip_address(ipv6))
        self.link_local = frames.link_local(self.mac)
        self.guest_ipv4 = str(frames.ip_address(guest_ipv4))
        self.guest_ipv6 = str(frames.ip_address(guest_ipv6))
        self.guest_mac: Optional[str] = None
        self.guest_mac_history: list[tuple[int, str]] = []
        self.steering: Optional[str] = None
        self.learned: dict[str, Learned] = {}
        self.moves: list[Move] = []
        self.announcements: dict[str, list[Announcement]] = {}
        self.dropped: dict[str, int] = {}  # by reason
        self.broadcasts_sent = 0
        self._paths: dict[str, _Path] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        self._waiters: list[tuple[Predicate, asyncio.Future[None]]] = []
        self._handlers: list[FrameHandler] = []
        self._streams: dict[int, Stream] = {}
        self._next_ident = 0x4746
        self._flows: dict[int, _Flow] = {}
        self._sink_other = 0
        self._last_solicit_ns: dict[int, int] = {}
        self._closed = False

    # ------------------------------------------------------------ paths and life cycle

    @property
    def paths(self) -> list[str]:
        return list(self._paths)

    def port(self, name: str) -> int:
        """The peer's own port for a path (QEMU's remote.port)."""
        return self._path(name).port

    def remote(self, name: str) -> Optional[int]:
        return self._path(name).remote

    def counters(self, name: str) -> PathCounters:
        return self._path(name).counters

    def _path(self, name: str) -> _Path:
        try:
            return self._paths[name]
        except KeyError:
            raise ValueError(f"no path {name!r} (paths: {', '.join(self._paths) or 'none'})") from None

    def add_path(self, name: str) -> int:
        """Bind a socket on 127.0.0.1 for a path; returns its port (QEMU's remote.port)."""
        if self._closed:
            raise RuntimeError("the peer is closed")
        if not name or name == FLOOD or not isinstance(name, str):
            raise ValueError(f"bad path name {name!r}")
        if name in self._paths:
            raise ValueError(f"path {name!r} exists")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        path = _Path(name, sock, port)
        self._paths[name] = path
        self.announcements.setdefault(name, [])
        if self._loop is not None:
            self._start_reading(path)
        log.debug("path %s bound to %s:%d", name, LOOPBACK, port)
        return port

    def set_remote(self, name: str, qemu_port: int) -> None:
        """Where frames for this path go: QEMU's local.port on 127.0.0.1."""
        if not 0 < qemu_port < 65536:
            raise ValueError(f"bad port {qemu_port}")
        self._path(name).remote = qemu_port

    async def start(self) -> None:
        """Start reading every path's socket on the running loop."""
        if self._closed:
            raise RuntimeError("the peer is closed")
        if self._loop is not None:
            raise RuntimeError("the peer is already started")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        for path in self._paths.values():
            self._start_reading(path)

    def _start_reading(self, path: _Path) -> None:
        assert self._loop is not None
        self._loop.add_reader(path.sock.fileno(), self._on_readable, path)
        path.reading = True

    def close(self) -> None:
        """Stop streams and close every socket.  Idempotent; safe once the loop stopped."""
        if self._closed:
            return
        self._closed = True
        for stream in self._streams.values():
            stream.running = False
            if stream._handle is not None:
                stream._handle.cancel()
        for path in self._paths.values():
            if path.reading and self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):  # a loop in another state or thread
                    self._loop.remove_reader(path.sock.fileno())
            path.reading = False
            path.sock.close()
        for _pred, fut in self._waiters:
            if not fut.done() and self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(fut.cancel)

    # ------------------------------------------------------------ waiting

    def _notify(self) -> None:
        """Re-evaluate every waiter's predicate now, on the loop's thread."""
        if not self._waiters:
            return
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._notify)
            return
        for pred, fut in list(self._waiters):
            if fut.done():
                continue
            try:
                if pred(self):
                    fut.set_result(None)
            except Exception as exc:  # the waiter's own bug: hand it to the waiter
                fut.set_exception(exc)

    async def wait_for(self, predicate: Predicate, timeout: float, what: str = "") -> None:
        """Return once predicate(peer) is true; it is re-evaluated right after every received
        frame and every state change (not later, so no transient state is missed).
        TimeoutError, with a summary of the peer, if it is still false after `timeout` s."""
        if predicate(self):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            desc = what or getattr(predicate, "__name__", "condition")
            raise TimeoutError(f"{desc} not true within {timeout:g} s; peer: {self.summary()}") from None
        finally:
            self._waiters.remove(entry)

    async def wait_learned(self, mac: Optional[str], path: str, timeout: float) -> int:
        """Wait until `mac` (None: the guest's MAC) is learned on `path`; returns since when (ns)."""
        want = frames.normalize_mac(mac) if mac is not None else None
        self._path(path)

        def learned_there(peer: Peer) -> bool:
            m = want if want is not None else peer.guest_mac
            entry = peer.learned.get(m) if m is not None else None
            return entry is not None and entry.path == path

        await self.wait_for(learned_there, timeout, f"{want or 'guest MAC'} learned on {path}")
        m = want if want is not None else self.guest_mac
        assert m is not None
        return self.learned[m].since_ns

    async def wait_announcement(self, path: str, after_ns: int = 0, timeout: float = 5.0) -> Announcement:
        """Wait for a gratuitous ARP or unsolicited NA on `path` received at or after `after_ns`."""
        self._path(path)

        def find() -> Optional[Announcement]:
            return next((a for a in self.announcements[path] if a.t_ns >= after_ns), None)

        await self.wait_for(lambda _p: find() is not None, timeout, f"announcement on {path}")
        found = find()
        assert found is not None
        return found

    # ------------------------------------------------------------ receiving

    def _on_readable(self, path: _Path) -> None:
        for _ in range(RECV_BATCH):
            try:
                data, addr = path.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # an ICMP error for an earlier send
                continue
            except OSError as exc:
                if not self._closed:
                    log.warning("path %s: receive failed: %s", path.name, exc)
                break
            if addr[0] != LOOPBACK or (path.remote is not None and addr[1] != path.remote):
                path.counters.dropped += 1
                _count(self.dropped, "foreign-source")
                log.debug("path %s: datagram from %s:%d ignored", path.name, addr[0], addr[1])
            else:
                try:
                    self._on_frame(path, data, time.monotonic_ns())
                except Exception:  # never let one frame stop the peer
                    log.exception("path %s: frame %s", path.name, data[:64].hex())
            self._notify()

    def _on_frame(self, path: _Path, raw: bytes, now_ns: int) -> None:
        p = frames.parse(raw)
        c = path.counters
        c.rx_frames += 1
        _count(c.rx_kinds, p.kind)
        if p.kind == "malformed":
            log.debug("path %s: malformed frame (%s)", path.name, p.detail)
            self._call_handlers(path.name, p, raw)
            return
        if p.src_mac and not frames.is_multicast_mac(p.src_mac):
            if p.src_mac == self.mac:
                _count(self.dropped, "own-mac-received")
                log.debug("path %s: a frame with the peer's own MAC", path.name)
            else:
                self._learn(p.src_mac, path.name, now_ns, p.kind)
        if p.kind in frames.ANNOUNCEMENT_KINDS:
            ip = p.sender_ip if p.kind == "garp" else p.nd_target
            ann = Announcement(now_ns, path.name, p.src_mac, p.kind, ip)
            self.announcements[path.name].append(ann)
            log.debug("announcement on %s: %s", path.name, ann)
        self._resolve_guest(p, now_ns)
        if p.dst_mac == self.mac or p.dst_is_group:
            self._host(path.name, p, now_ns)
        self._call_handlers(path.name, p, raw)

    def _call_handlers(self, path: str, p: Parsed, raw: bytes) -> None:
        for handler in list(self._handlers):
            try:
                handler(path, p, raw)
            except Exception:  # a plug-in's bug must not stop the peer
                log.exception("frame handler %r failed", handler)

    def _learn(self, mac: str, path: str, now_ns: int, kind: str) -> None:
        entry = self.learned.get(mac)
        if entry is None:
            self.learned[mac] = Learned(mac, path, now_ns, now_ns, kind)
            self.moves.append(Move(now_ns, mac, None, path, kind))
            log.info("learned %s on %s (%s)", mac, path, kind)
        elif entry.path != path:
            self.moves.append(Move(now_ns, mac, entry.path, path, kind))
            log.info("%s moved %s -> %s (%s)", mac, entry.path, path, kind)
            entry.path, entry.since_ns, entry.last_ns, entry.kind = path, now_ns, now_ns, kind
        else:
            entry.last_ns = now_ns

    def _resolve_guest(self, p: Parsed, now_ns: int) -> None:
        mac: Optional[str] = None
        if p.sender_ip is not None:
            if p.sender_ip == self.guest_ipv4 and p.sender_mac:
                mac = p.sender_mac
        elif p.kind in ("na", "unsolicited-na") and p.nd_target == self.guest_ipv6 and p.nd_lladdr:
            mac = p.nd_lladdr
        elif p.src_ip is not None and p.src_ip in (self.guest_ipv4, self.guest_ipv6):
            mac = p.src_mac
        if mac is None or mac == self.guest_mac or frames.is_multicast_mac(mac) or mac == frames.ZERO_MAC:
            return
        log.info("guest MAC %s (was %s), from %s", mac, self.guest_mac, p.kind)
        self.guest_mac = mac
        self.guest_mac_history.append((now_ns, mac))

    # ------------------------------------------------------------ the host

    def _my_ip(self, ip: Optional[str]) -> bool:
        return ip is not None and ip in (self.ipv4, self.ipv6, self.link_local)

    def _host(self, path: str, p: Parsed, now_ns: int) -> None:
        kind = p.kind
        if kind == "arp-request" and p.target_ip == self.ipv4:
            assert p.sender_mac is not None and p.sender_ip is not None
            self._transmit(frames.arp_reply(self.mac, self.ipv4, p.sender_mac, p.sender_ip), "arp-reply")
        elif kind == "ns" and self._my_ip(p.nd_target):
            assert p.nd_target is not None and p.src_ip is not None
            if p.src_ip == "::":  # someone's DAD for our address: defend it
                na = frames.neighbor_advertisement(
                    self.mac,
                    p.nd_target,
                    p.nd_target,
                    frames.ipv6_multicast_mac(frames.ALL_NODES),
                    frames.ALL_NODES,
                    solicited=False,
                )
                self._transmit(na, "unsolicited-na")
            else:
                dst_mac = p.nd_lladdr or p.src_mac
                na = frames.neighbor_advertisement(self.mac, p.nd_target, p.nd_target, dst_mac, p.src_ip)
                self._transmit(na, "na")
        elif kind in ("icmp-echo-request", "icmp6-echo-request") and self._my_ip(p.dst_ip):
            assert p.src_ip is not None and p.dst_ip is not None
            assert p.icmp_id is not None and p.icmp_seq is not None
            reply = frames.icmp_echo(
                self.mac, p.src_mac, p.dst_ip, p.src_ip, p.icmp_id, p.icmp_seq, p.payload, reply=True
            )
            self._transmit(reply, kind.replace("request", "reply"))
        elif kind in ("icmp-echo-reply", "icmp6-echo-reply") and self._my_ip(p.dst_ip):
            stream = self._streams.get(p.icmp_id or 0)
            if stream is not None and stream.family == (4 if kind == "icmp-echo-reply" else 6):
                stream._on_reply(p, path, now_ns)
        elif kind == "udp" and self._my_ip(p.dst_ip):
            assert p.src_ip is not None and p.dst_ip is not None
            assert p.sport is not None and p.dport is not None
            if p.dport == ECHO_PORT:
                echo = frames.udp(self.mac, p.src_mac, p.dst_ip, p.src_ip, ECHO_PORT, p.sport, p.payload)
                self._transmit(echo, "udp")
            elif p.dport == SINK_PORT:
                self._sink(path, p, now_ns)

    def _sink(self, path: str, p: Parsed, now_ns: int) -> None:
        payload = p.payload
        if len(payload) < SINK_PAYLOAD_LEN or not payload.startswith(SINK_MAGIC) or p.sport is None:
            self._sink_other += 1
            return
        seq, _guest_ns = struct.unpack_from("!QQ", payload, len(SINK_MAGIC))
        flow = self._flows.get(p.sport)
        if flow is None:
            flow = self._flows[p.sport] = _Flow(p.sport)
        flow.arrivals.append((now_ns, seq, path))

    # ------------------------------------------------------------ sending

    def steer(self, path: Optional[str]) -> None:
        """Send every unicast frame on `path` whatever was learned (None: follow learning)."""
        if path is not None:
            self._path(path)
        if path != self.steering:
            log.info("steering %s -> %s", self.steering, path)
        self.steering = path
        self._notify()

    def route(self, dst_mac: str) -> tuple[list[str], bool]:
        """The paths a frame to `dst_mac` takes now, and whether that is a flood."""
        everywhere = list(self._paths)
        if frames.is_multicast_mac(dst_mac):
            return everywhere, True
        if self.steering is not None:
            return [self.steering], False
        entry = self.learned.get(dst_mac)
        if entry is not None and entry.path in self._paths:
            return [entry.path], False
        return everywhere, True

    def _transmit(self, frame: bytes, kind: str, path: Optional[str] = None) -> list[str]:
        if len(frame) < MIN_FRAME_LEN:
            frame = frame.ljust(MIN_FRAME_LEN, b"\x00")
        if path is None:
            names, flooded = self.route(frames.mac_str(frame[0:6]))
        else:
            names, flooded = [self._path(path).name], False
        return [n for n in names if self._send_on(self._paths[n], frame, kind, flooded)]

    def _send_on(self, path: _Path, frame: bytes, kind: str, flooded: bool) -> bool:
        c = path.counters
        if path.remote is None or self._closed:
            c.dropped += 1
            _count(self.dropped, "closed" if self._closed else "no-remote")
            return False
        try:
            path.sock.sendto(frame, (LOOPBACK, path.remote))
        except OSError as exc:  # a full socket buffer, or an ICMP error of an earlier send
            c.dropped += 1
            _count(self.dropped, "send-error")
            log.debug("path %s: send failed: %s", path.name, exc)
            return False
        c.tx_frames += 1
        _count(c.tx_kinds, kind)
        if flooded:
            c.flooded += 1
        return True

    def send_frame(self, path: Optional[str], frame: bytes) -> int:
        """Send a raw frame on `path` (None: by steering, learning or flooding); returns copies sent.
        Short frames are padded to 60 bytes like on a wire."""
        sent = len(self._transmit(bytes(frame), frames.parse(frame).kind, path))
        self._notify()
        return sent

    def send_broadcast(
        self,
        udp_dst_port: int,
        payload: bytes,
        *,
        src_port: Optional[int] = None,
        dst_ip: str = BROADCAST_IPV4,
    ) -> int:
        """Flood one IPv4 UDP broadcast out of every path (as a switch does); returns copies sent."""
        frame = frames.udp(
            self.mac,
            frames.BROADCAST_MAC,
            self.ipv4,
            dst_ip,
            src_port if src_port is not None else udp_dst_port,
            udp_dst_port,
            payload,
        )
        self.broadcasts_sent += 1
        sent = len(self._transmit(frame, "udp"))
        self._notify()
        return sent

    def _guest_dst(self, family: int) -> Optional[str]:
        """The guest's MAC; if unknown, ask for it (rate limited) and answer None."""
        if self.guest_mac is not None:
            return self.guest_mac
        now = time.monotonic_ns()
        if now - self._last_solicit_ns.get(family, -RESOLVE_INTERVAL_NS) >= RESOLVE_INTERVAL_NS:
            self._last_solicit_ns[family] = now
            if family == 4:
                self._transmit(frames.arp_request(self.mac, self.ipv4, self.guest_ipv4), "arp-request")
            else:
                self._transmit(frames.neighbor_solicitation(self.mac, self.ipv6, self.guest_ipv6), "ns")
        return None

    # ------------------------------------------------------------ round-trip streams

    def start_stream(self, rate_pps: float, family: int = 4, payload_len: int = 32) -> Stream:
        """Send echo requests to the guest at a steady rate until `stop_stream`.

        Packet k is due at start + k/rate (loop.call_at; no drift).  A late loop sends
        at most max(MAX_BURST, 2 ms worth) due packets at once and skips the rest
        (`skipped_slots`, in the report).
        Each payload carries the 64-bit seq and the send time, so the 16-bit ICMP seq
        may wrap.  Until the guest's MAC is known, packets are not transmitted (counted
        as lost and `not_transmitted`) and an ARP request / NS is flooded."""
        if self._loop is None or self._closed:
            raise RuntimeError("start the peer first")
        if not rate_pps > 0:
            raise ValueError(f"rate must be positive: {rate_pps}")
        if family not in (4, 6):
            raise ValueError(f"family is 4 or 6, not {family}")
        if not STREAM_HEADER_LEN <= payload_len <= 1400:
            raise ValueError(f"payload_len from {STREAM_HEADER_LEN} to 1400, not {payload_len}")
        ident = self._new_ident()
        dst = self.guest_ipv4 if family == 4 else self.guest_ipv6
        stream = Stream(ident, family, float(rate_pps), payload_len, dst)
        self._streams[ident] = stream
        stream.running = True
        stream.start_ns = time.monotonic_ns()
        stream._t0 = self._loop.time()
        stream._handle = self._loop.call_soon(self._stream_tick, stream)
        log.info("stream %#06x: v%d, %g pps", ident, family, rate_pps)
        return stream

    def _new_ident(self) -> int:
        for _ in range(0x10000):
            ident = self._next_ident
            self._next_ident = (self._next_ident + 1) & 0xFFFF
            if ident not in self._streams:
                return ident
        raise RuntimeError("no free ICMP ident")

    def _stream_tick(self, stream: Stream) -> None:
        if not stream.running or self._closed or self._loop is None:
            return
        now = self._loop.time()
        # the slot this tick was scheduled for is due even if float rounding says otherwise
        due = max(int((now - stream._t0) * stream.rate_pps), stream._next_slot)
        behind = due - stream._next_slot + 1
        burst = max(MAX_BURST, math.ceil(stream.rate_pps * BURST_WINDOW_S))
        if behind > burst:
            stream.skipped_slots += behind - burst
            stream._next_slot += behind - burst
        while stream._next_slot <= due:
            self._stream_send(stream)
            stream._next_slot += 1
        when = stream._t0 + stream._next_slot / stream.rate_pps
        stream._handle = self._loop.call_at(when, self._stream_tick, stream)
        self._notify()

    def _stream_send(self, stream: Stream) -> None:
        seq = stream.sent
        now_ns = time.monotonic_ns()
        dst_mac = self._guest_dst(stream.family)
        if dst_mac is None:
            _count(self.dropped, "guest-unresolved")
            stream._record_send(now_ns, None)
            return
        pad = stream.payload_len - STREAM_HEADER_LEN
        payload = struct.pack("!QQ", seq, now_ns) + bytes((seq + i) & 0xFF for i in range(pad))
        src = self.ipv4 if stream.family == 4 else self.ipv6
        frame = frames.icmp_echo(self.mac, dst_mac, src, stream.dst_ip, stream.ident, seq, payload)
        kind = "icmp-echo-request" if stream.family == 4 else "icmp6-echo-request"
        sent = self._transmit(frame, kind)
        stream._record_send(now_ns, sent[0] if len(sent) == 1 else (FLOOD if sent else None))

    async def stop_stream(self, stream: Stream, grace: float = 0.5) -> StreamReport:
        """Stop sending, wait up to `grace` s for the replies still in flight, and report."""
        stream.running = False
        if stream._handle is not None:
            stream._handle.cancel()
            stream._handle = None
        if stream.stop_ns is None:
            stream.stop_ns = time.monotonic_ns()
        if grace > 0 and not self._closed:
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda _p: stream.all_answered, grace, "all replies")
        self._streams.pop(stream.ident, None)
        report = stream.report()
        log.info(
            "stream %#06x: sent %d, replied %d, lost %d",
            stream.ident,
            report.sent,
            report.replied,
            report.lost,
        )
        return report

    # ------------------------------------------------------------ sink

    def sink_flows(self) -> list[int]:
        """The source ports of the flows seen at the sink."""
        return sorted(self._flows)

    def sink_report(self, src_port: Optional[int] = None) -> SinkReport:
        """Accounting of one guest flow to the sink (None: the only flow; an empty report if none)."""
        if src_port is None:
            if not self._flows:
                return _Flow(None).report()
            if len(self._flows) > 1:
                raise ValueError(f"several sink flows, name one: source ports {self.sink_flows()}")
            src_port = next(iter(self._flows))
        flow = self._flows.get(src_port)
        return (flow or _Flow(src_port)).report()

    def reset_sink(self, src_port: Optional[int] = None) -> None:
        if src_port is None:
            self._flows.clear()
        else:
            self._flows.pop(src_port, None)

    # ------------------------------------------------------------ hooks and state

    def on_frame(self, callback: FrameHandler) -> Callable[[], None]:
        """Call `callback(path, parsed, raw)` for every received frame; returns an unregister function."""
        self._handlers.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(callback)

        return remove

    def learned_path(self, mac: Optional[str] = None) -> Optional[str]:
        """Where `mac` (None: the guest's MAC) is learned, if anywhere."""
        m = frames.normalize_mac(mac) if mac is not None else self.guest_mac
        entry = self.learned.get(m) if m is not None else None
        return entry.path if entry is not None else None

    def summary(self) -> str:
        """One line: the guest's MAC and path, steering, per-path rx/tx, the last move."""
        parts = [f"guest {self.guest_mac or '?'} on {self.learned_path() or '-'}"]
        if self.steering:
            parts.append(f"steered to {self.steering}")
        for p in list(self._paths.values()):
            c = p.counters
            parts.append(f"{p.name}: rx {c.rx_frames} tx {c.tx_frames} drop {c.dropped}")
        if self.moves:
            m = self.moves[-1]
            parts.append(f"last move {m.mac} {m.from_path}->{m.to_path} ({m.kind})")
        ann = sum(len(a) for a in self.announcements.values())
        parts.append(f"{len(self.moves)} moves, {ann} announcements")
        return "; ".join(parts)

    def snapshot(self) -> dict[str, Any]:
        """Everything, as plain JSON-serialisable data."""
        paths = {}
        for p in list(self._paths.values()):
            c = p.counters
            paths[p.name] = {
                "port": p.port,
                "remote": p.remote,
                "rx_frames": c.rx_frames,
                "tx_frames": c.tx_frames,
                "flooded": c.flooded,
                "dropped": c.dropped,
                "rx_kinds": dict(c.rx_kinds),
                "tx_kinds": dict(c.tx_kinds),
            }
        return {
            "mac": self.mac,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "guest_ipv4": self.guest_ipv4,
            "guest_ipv6": self.guest_ipv6,
            "guest_mac": self.guest_mac,
            "guest_mac_history": [list(x) for x in list(self.guest_mac_history)],
            "steering": self.steering,
            "paths": paths,
            "learned": {m: asdict(e) for m, e in list(self.learned.items())},
            "moves": [asdict(m) for m in list(self.moves)],
            "announcements": {k: [asdict(a) for a in list(v)] for k, v in list(self.announcements.items())},
            "dropped": dict(self.dropped),
            "broadcasts_sent": self.broadcasts_sent,
            "streams": {
                f"{s.ident:#06x}": {
                    "family": s.family,
                    "rate_pps": s.rate_pps,
                    "sent": s.sent,
                    "replied": s.replied,
                }
                for s in list(self._streams.values())
            },
            "sink": {str(port): f.report().as_dict() for port, f in list(self._flows.items())},
            "sink_other": self._sink_other,
        }
