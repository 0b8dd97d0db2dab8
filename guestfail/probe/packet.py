"""AF_PACKET for the probe: the test frames, sent from the sender and counted
where they arrive.  No tool needs to be installed.

A test frame: destination = the test MAC, source = the sender, an optional
802.1Q tag, EtherType 0x88B5 (IEEE 802 local experimental), then
"GFPROBE1", the run's id, the state letter and a sequence number, so every
arrival is counted once, for the state it was sent in, whatever else the
interface carries.

`Listener` binds to one interface; with `membership=True` it also adds the
test MAC to the interface's unicast filter (PACKET_ADD_MEMBERSHIP, PACKET_MR_UNICAST:
what a macvlan on the PF does, without promiscuous mode) for as long as the
socket is open, so the kernel drops it however the probe ends.  A classic
BPF filter keeps everything but test frames out of the socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from guestfail.core.errors import NotFound, SystemRefused

T = TypeVar("T")

ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_PROBE = 0x88B5
MAGIC = b"GFPROBE1"
MIN_FRAME = 60
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_UNICAST = 3
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SIOCGIFFLAGS = 0x8913
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
IFF_RUNNING = 0x40
CLONE_NEWNET = 0x40000000
_PAYLOAD = struct.Struct("!8s8scI")

# ldh [12]; jeq 0x88b5 -> accept; jeq 0x8100 -> ldh [16]; jeq 0x88b5 -> accept; drop
BPF_TEST_FRAMES = (
    (0x28, 0, 0, 12),
    (0x15, 3, 0, ETH_P_PROBE),
    (0x15, 0, 3, ETH_P_8021Q),
    (0x28, 0, 0, 16),
    (0x15, 0, 1, ETH_P_PROBE),
    (0x06, 0, 0, 0x40000),
    (0x06, 0, 0, 0),
)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b[:6])


def build_frame(
    dst: str, src: str, run_id: bytes, state: str, seq: int, vlan: int = 0, qos: int = 0
) -> bytes:
    head = mac_bytes(dst) + mac_bytes(src)
    if vlan:
        head += struct.pack("!HH", ETH_P_8021Q, (qos << 13) | vlan)
    frame = head + struct.pack("!H", ETH_P_PROBE) + _PAYLOAD.pack(MAGIC, run_id, state.encode(), seq)
    return frame.ljust(MIN_FRAME, b"\0")


@dataclass(frozen=True)
class TestFrame:
    dst: str
    run_id: bytes
    state: str
    seq: int


def parse_frame(data: bytes) -> Optional[TestFrame]:
    """A received test frame (up to two VLAN tags skipped), or None."""
    if len(data) < 14:
        return None
    off = 12
    for _ in range(3):
        (etype,) = struct.unpack_from("!H", data, off)
        if etype in (ETH_P_8021Q, ETH_P_8021AD):
            off += 4
            if len(data) < off + 2:
                return None
            continue
        break
    if etype != ETH_P_PROBE or len(data) < off + 2 + _PAYLOAD.size:
        return None
    magic, run_id, state, seq = _PAYLOAD.unpack_from(data, off + 2)
    if magic != MAGIC:
        return None
    return TestFrame(mac_text(data), run_id, state.decode("ascii", "replace"), seq)


def _attach_filter(sock: socket.socket) -> None:
    prog = b"".join(struct.pack("HBBI", *ins) for ins in BPF_TEST_FRAMES)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(BPF_TEST_FRAMES), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _open(ifname: str, proto: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    except PermissionError as e:
        raise SystemRefused("packet sockets need root (CAP_NET_RAW)") from e
    try:
        sock.bind((ifname, proto))
    except OSError as e:
        sock.close()
        if e.errno == 19:  # ENODEV
            raise NotFound(f"no interface {ifname}") from e
        raise SystemRefused(f"bind a packet socket to {ifname}: {e.strerror}") from e
    return sock


class Listener:
    """Counts the run's test frames arriving on one interface."""

    def __init__(self, ifname: str, run_id: bytes, dst: str, *, membership: bool = False) -> None:
        self.ifname = ifname
        self.run_id = run_id
        self.dst = dst
        self.sock = _open(ifname, ETH_P_ALL)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            _attach_filter(self.sock)
            if membership:
                ifindex = socket.if_nametoindex(ifname)
                mreq = struct.pack("iHH8s", ifindex, PACKET_MR_UNICAST, 6, mac_bytes(dst))
                self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except OSError as e:
            self.sock.close()
            raise SystemRefused(f"set up the packet socket on {ifname}: {e.strerror}") from e
        self.sock.setblocking(False)
        self.seen: dict[str, set[int]] = {}

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            f = parse_frame(data)
            if f is None or f.run_id != self.run_id or f.dst != self.dst:
                continue
            self.seen.setdefault(f.state, set()).add(f.seq)

    def count(self, state: str) -> int:
        return len(self.seen.get(state, ()))

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def _netns_fd(name: str) -> Iterator[int]:
    for base in ("/run/netns", "/var/run/netns"):
        path = os.path.join(base, name)
        if os.path.exists(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                yield fd
            finally:
                os.close(fd)
            return
    raise NotFound(f"no network namespace {name} (ip netns list)")


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run fn in a thread that entered network namespace `name` (a socket
    made there stays there); the calling thread stays where it is."""
    if not name:
        return fn()
    result: list[Any] = []

    def body() -> None:
        try:
            with _netns_fd(name) as fd:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise SystemRefused(f"enter network namespace {name}: {os.strerror(err)}")
                result.append(fn())
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=body, name=f"netns-{name}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


class SenderSocket:
    """Sends test frames out of one interface (in another netns if given)."""

    def __init__(self, ifname: str, netns: str = "") -> None:
        self.ifname = ifname
        self.netns = netns
        self.sock = in_netns(netns, lambda: _open(ifname, 0))
        req = struct.pack("16s24x", ifname.encode()[:15])
        try:
            flags = struct.unpack_from("H", fcntl.ioctl(self.sock.fileno(), SIOCGIFFLAGS, req), 16)[0]
            hw = fcntl.ioctl(self.sock.fileno(), SIOCGIFHWADDR, req)
        except OSError as e:
            self.sock.close()
            raise SystemRefused(f"read {ifname}'s flags: {e.strerror}") from e
        self.up = bool(flags & IFF_UP)
        self.running = bool(flags & IFF_RUNNING)
        self.mac = mac_text(hw[18:24])

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError as e:
            raise SystemRefused(f"send a test frame on {self.ifname}: {e.strerror}") from e

    def close(self) -> None:
        self.sock.close()
