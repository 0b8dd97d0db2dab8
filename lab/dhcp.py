"""A small DHCPv4 server for the lab, plugged into a `lab.peer.Peer` by its frame hook.

The guest's NetworkManager or systemd-networkd asks for an address through the
standby's and the VF's backends; the peer (a learning switch) hands every
received frame to `DhcpServer.handle_frame`, and the replies go back through
`Peer.send_frame(None, ...)`, so learning (or steering, or flooding) picks the
path, as a real switch in front of a real server would.

What it does (RFC 2131, with the client identifier echo of RFC 6842):

- DISCOVER -> OFFER; REQUEST -> ACK or NAK in each client state: selecting
  (server id and requested IP), init-reboot (requested IP, no server id),
  renewing (ciaddr, unicast to the server) and rebinding (ciaddr, broadcast);
  a REQUEST that selects another server is not answered.  RELEASE, DECLINE,
  INFORM (an ACK without a lease).
- Addresses are bound to the client hardware address (chaddr) for the life of
  the server: the same MAC always gets the same address, after a RELEASE too
  (the lab's VF and standby share one MAC, and the bond or team master takes
  it: the guest keeps its address across a switch).  The client identifier
  (option 61) is recorded and echoed, never used as the key.  The first MAC
  gets the pool's first address, 192.0.2.2 by default: the peer's `guest_ipv4`.
- Authoritative by default: a REQUEST for a free pool address from a client it
  has no record of (a guest that kept a lease from before the server started)
  is ACKed, as dnsmasq does; `authoritative=False` stays silent instead.
- Options sent: 53, 54, 51, 58 (T1 = lease/2), 59 (T2 = 7/8 lease), 1, 3, 6
  (only with `dns`), 28, and 61 when the client sent one.  A NAK carries 53, 54,
  56 (why) and 61.
- Delivery (RFC 2131 4.1, no relays in the lab): a NAK is broadcast; a reply to
  a client with an address (ciaddr set: renewing, rebinding, INFORM) is unicast
  to ciaddr; otherwise it is broadcast when the client set the BROADCAST flag
  and unicast to chaddr / yiaddr when it did not.
- Malformed DHCP is logged, counted in `dropped` and never answered; BOOTREPLYs
  and anything that is not IPv4 UDP to port 67 of this server (or broadcast)
  are ignored.

Every message received and sent is a `DhcpEvent` in `events`; `leases`,
`acks()`, `renewals()` and `wait_for_ack()` read them.

Threads: `handle_frame` (the hook) runs on the peer's loop, and so must
`wait_for_ack`; the queries copy what they read and may run anywhere.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from lab import frames
from lab.frames import Parsed
from lab.peer import Peer

log = logging.getLogger("lab.dhcp")

SERVER_PORT = 67
CLIENT_PORT = 68

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHER = 1
BROADCAST_FLAG = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
FIXED_LEN = 236  # op .. file, before the magic cookie
MIN_MESSAGE_LEN = 300  # RFC 1542: what a BOOTP message is padded to
ZERO_IP = "0.0.0.0"
LIMITED_BROADCAST = "255.255.255.255"

# message types (option 53)
DHCPDISCOVER = 1
DHCPOFFER = 2
DHCPREQUEST = 3
DHCPDECLINE = 4
DHCPACK = 5
DHCPNAK = 6
DHCPRELEASE = 7
DHCPINFORM = 8

MESSAGE_TYPES = {
    DHCPDISCOVER: "discover",
    DHCPOFFER: "offer",
    DHCPREQUEST: "request",
    DHCPDECLINE: "decline",
    DHCPACK: "ack",
    DHCPNAK: "nak",
    DHCPRELEASE: "release",
    DHCPINFORM: "inform",
}
EVENT_KINDS = frozenset(MESSAGE_TYPES.values())

# options
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_MESSAGE = 56
OPT_T1 = 58
OPT_T2 = 59
OPT_CLIENT_ID = 61
OPT_END = 255

# REQUEST states (RFC 2131 4.3.2)
SELECTING = "selecting"
INIT_REBOOT = "init-reboot"
RENEWING = "renewing"
REBINDING = "rebinding"
INFORM = "inform"  # the state recorded on the ACK to an INFORM
RENEWAL_STATES = frozenset({RENEWING, REBINDING})


class DhcpError(ValueError):
    """A DHCP message that cannot be parsed."""


# ---------------------------------------------------------------- messages


def _ip4(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _packed(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


@dataclass(frozen=True)
class DhcpMessage:
    """A parsed BOOTP/DHCP message.  `options` holds each option's value, repeated
    options concatenated (RFC 3396), overloaded `file` / `sname` fields included."""

    op: int
    htype: int
    hlen: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    chaddr: str  # the first `hlen` (6) octets of the field, as a MAC
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)

    @property
    def message_type(self) -> Optional[int]:
        v = self.options.get(OPT_MESSAGE_TYPE)
        return v[0] if v is not None and len(v) == 1 else None

    def _ip_option(self, code: int) -> Optional[str]:
        v = self.options.get(code)
        if v is None:
            return None
        if len(v) != 4:
            raise DhcpError(f"option {code}: {len(v)} bytes, need 4")
        return _ip4(v)

    @property
    def requested_ip(self) -> Optional[str]:
        """Option 50; DhcpError if its length is wrong."""
        return self._ip_option(OPT_REQUESTED_IP)

    @property
    def server_id(self) -> Optional[str]:
        """Option 54; DhcpError if its length is wrong."""
        return self._ip_option(OPT_SERVER_ID)

    @property
    def client_id(self) -> Optional[bytes]:
        return self.options.get(OPT_CLIENT_ID)


def _parse_options(data: bytes, into: dict[int, bytes], where: str) -> None:
    """TLV options up to the End option (or the end of the field); repeated codes concatenate."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data):
            raise DhcpError(f"{where}: option {code} has no length")
        n = data[i + 1]
        if i + 2 + n > len(data):
            raise DhcpError(f"{where}: option {code} of {n} bytes overruns the field")
        into[code] = into.get(code, b"") + data[i + 2 : i + 2 + n]
        i += 2 + n


def parse_dhcp(payload: bytes) -> DhcpMessage:
    """Parse a UDP payload as DHCP; DhcpError if it is not a well-formed DHCP message
    (plain BOOTP, without the magic cookie, is refused too)."""
    data = bytes(payload)
    if len(data) < FIXED_LEN + len(MAGIC_COOKIE):
        raise DhcpError(f"{len(data)} bytes, need at least {FIXED_LEN + len(MAGIC_COOKIE)}")
    op, htype, hlen, _hops, xid, secs, flags = struct.unpack_from("!BBBBIHH", data, 0)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpError(f"op {op}")
    if htype != HTYPE_ETHER or hlen != 6:
        raise DhcpError(f"hardware type {htype} length {hlen}, not Ethernet")
    if data[FIXED_LEN : FIXED_LEN + 4] != MAGIC_COOKIE:
        raise DhcpError("no DHCP magic cookie")
    options: dict[int, bytes] = {}
    _parse_options(data[FIXED_LEN + 4 :], options, "options")
    overload = options.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise DhcpError(f"option overload {overload.hex()}")
        # RFC 2131 4.1: the options field, then 'file', then 'sname'
        if overload[0] & 1:
            _parse_options(data[108:236], options, "file")
        if overload[0] & 2:
            _parse_options(data[44:108], options, "sname")
    return DhcpMessage(
        op=op,
        htype=htype,
        hlen=hlen,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=_ip4(data[12:16]),
        yiaddr=_ip4(data[16:20]),
        siaddr=_ip4(data[20:24]),
        giaddr=_ip4(data[24:28]),
        chaddr=frames.mac_str(data[28:34]),
        options=options,
    )


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """TLV options in the given order, values over 255 bytes split (RFC 3396), then End."""
    out = bytearray()
    for code, value in options:
        if not 0 < code < OPT_END:
            raise ValueError(f"option code {code}")
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    out.append(OPT_END)
    return bytes(out)


def build_dhcp(
    op: int,
    xid: int,
    chaddr: str,
    options: Iterable[tuple[int, bytes]],
    *,
    flags: int = 0,
    secs: int = 0,
    ciaddr: str = ZERO_IP,
    yiaddr: str = ZERO_IP,
    siaddr: str = ZERO_IP,
    giaddr: str = ZERO_IP,
) -> bytes:
    """A DHCP message (Ethernet chaddr), padded to the 300 bytes of a BOOTP message."""
    head = struct.pack("!BBBBIHH", op, HTYPE_ETHER, 6, 0, xid & 0xFFFFFFFF, secs, flags)
    head += _packed(ciaddr) + _packed(yiaddr) + _packed(siaddr) + _packed(giaddr)
    head += frames.mac_bytes(chaddr).ljust(16, b"\x00") + bytes(64 + 128)
    msg = head + MAGIC_COOKIE + encode_options(options)
    return msg.ljust(MIN_MESSAGE_LEN, b"\x00")


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class DhcpEvent:
    """One DHCP message received from, or sent to, the guest.

    `path` is the path the client's message came in on; a reply carries the path of
    the message it answers.  For a REQUEST and its ACK or NAK, `state` is the
    client's state (selecting, init-reboot, renewing, rebinding); it is "inform"
    on the ACK to an INFORM.  `dst_mac` / `dst_ip` say where the message was
    addressed; `copies` how many copies of a reply the peer sent (None: received).
    """

    t_ns: int
    path: str
    kind: str
    chaddr: str
    xid: int
    ciaddr: str
    yiaddr: str
    requested_ip: Optional[str]
    client_id: Optional[bytes]
    state: Optional[str] = None
    server_id: Optional[str] = None
    dst_mac: str = ""
    dst_ip: str = ""
    copies: Optional[int] = None
    reason: str = ""  # why a NAK, or why no reply

    @property
    def received(self) -> bool:
        return self.copies is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable (the client identifier as hex)."""
        d = asdict(self)
        d["client_id"] = self.client_id.hex() if self.client_id is not None else None
        return d


@dataclass
class _Lease:
    ip: str
    expiry_ns: int


# ---------------------------------------------------------------- the server


class DhcpServer:
    """A DHCPv4 server behind the peer's host (MAC `peer.mac`, address `server_ip`).

    `pool` is an inclusive (first, last) range inside `subnet`; the server's and
    the router's addresses are left out of it.  `lease_seconds` also sets
    T1 (half of it) and T2 (7/8 of it).  `dns`: the addresses of option 6 (not
    sent when None).
    """

    def __init__(
        self,
        peer: Peer,
        *,
        server_ip: str = "192.0.2.1",
        pool: tuple[str, str] = ("192.0.2.2", "192.0.2.254"),
        subnet: str = "192.0.2.0/24",
        router: Optional[str] = "192.0.2.1",
        lease_seconds: int = 30,
        dns: Optional[Sequence[str]] = None,
        authoritative: bool = True,
    ) -> None:
        self.peer = peer
        self.network = ipaddress.IPv4Network(subnet, strict=True)
        if self.network.prefixlen > 30:
            raise ValueError(f"subnet {subnet} has no room for clients")
        self.server_ip = str(ipaddress.IPv4Address(server_ip))
        self.router = str(ipaddress.IPv4Address(router)) if router is not None else None
        self.dns = tuple(str(ipaddress.IPv4Address(d)) for d in dns) if dns is not None else None
        for what, ip in (("server_ip", self.server_ip), ("router", self.router)):
            if ip is not None and not self._host_address(ip):
                raise ValueError(f"{what} {ip} is not a host address of {subnet}")
        if not 4 <= int(lease_seconds) <= 0xFFFFFFFE:
            raise ValueError(f"lease_seconds from 4 to 2**32-2, not {lease_seconds}")
        self.lease_seconds = int(lease_seconds)
        self.t1 = self.lease_seconds // 2
        self.t2 = self.lease_seconds * 7 // 8
        self.authoritative = authoritative
        if len(pool) != 2:
            raise ValueError(f"pool is (first, last), not {pool!r}")
        first, last = (ipaddress.IPv4Address(a) for a in pool)
        if first > last:
            raise ValueError(f"pool {pool}: first after last")
        for a in (first, last):
            if not self._host_address(str(a)):
                raise ValueError(f"pool address {a} is not a host address of {subnet}")
        taken = {self.server_ip, self.router}
        self.pool: tuple[str, ...] = tuple(
            str(ipaddress.IPv4Address(n))
            for n in range(int(first), int(last) + 1)
            if str(ipaddress.IPv4Address(n)) not in taken
        )
        if not self.pool:
            raise ValueError(f"pool {pool} holds no address but the server's or the router's")
        self._pool_set = frozenset(self.pool)
        self.events: list[DhcpEvent] = []
        self.dropped: dict[str, int] = {}  # messages not handled, by reason
        self.client_ids: dict[str, bytes] = {}  # chaddr -> the last client identifier it sent
        self.declined: set[str] = set()
        self._bindings: dict[str, str] = {}  # chaddr -> address, kept for the server's life
        self._owners: dict[str, str] = {}  # address -> chaddr
        self._leases: dict[str, _Lease] = {}  # chaddr -> the lease ACKed last (until RELEASE/DECLINE)
        self._unregister: Optional[Callable[[], None]] = None
        if self.server_ip != peer.ipv4:
            log.warning(
                "server_ip %s is not the peer's address %s: the peer will not answer ARP for it, "
                "so unicast renewals cannot reach the server",
                self.server_ip,
                peer.ipv4,
            )

    # ------------------------------------------------------------ life cycle

    def attach(self) -> DhcpServer:
        """Start answering (register the frame hook); idempotent.  Returns self."""
        if self._unregister is None:
            self._unregister = self.peer.on_frame(self.handle_frame)
            log.info("DHCP server %s attached: pool %s-%s", self.server_ip, self.pool[0], self.pool[-1])
        return self

    def detach(self) -> None:
        """Stop answering; the records and bindings stay.  Idempotent."""
        if self._unregister is not None:
            self._unregister()
            self._unregister = None

    @property
    def attached(self) -> bool:
        return self._unregister is not None

    def __enter__(self) -> DhcpServer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # ------------------------------------------------------------ addresses

    def _host_address(self, ip: str) -> bool:
        a = ipaddress.IPv4Address(ip)
        return a in self.network and a not in (self.network.network_address, self.network.broadcast_address)

    def _on_subnet(self, ip: str) -> bool:
        try:
            return self._host_address(ip)
        except ValueError:
            return False

    def reserve(self, mac: str, ip: str) -> None:
        """Bind `mac` to `ip` (a host address of the subnet, in the pool or not) before it asks."""
        mac = frames.normalize_mac(mac)
        ip = str(ipaddress.IPv4Address(ip))
        if not self._host_address(ip) or ip in (self.server_ip, self.router):
            raise ValueError(f"{ip} cannot be given to a client")
        owner = self._owners.get(ip)
        if owner is not None and owner != mac:
            raise ValueError(f"{ip} is bound to {owner}")
        self._bind(mac, ip)

    def _bind(self, mac: str, ip: str) -> None:
        old = self._bindings.get(mac)
        if old is not None and old != ip:
            self._owners.pop(old, None)
            self._leases.pop(mac, None)
        self._bindings[mac] = ip
        self._owners[ip] = mac
        self.declined.discard(ip)

    def _unbind(self, mac: str) -> None:
        ip = self._bindings.pop(mac, None)
        if ip is not None:
            self._owners.pop(ip, None)
        self._leases.pop(mac, None)

    def _free(self, ip: str, mac: str) -> bool:
        """`ip` may go to `mac`: a pool address, not declined, not bound to another client."""
        return ip in self._pool_set and ip not in self.declined and self._owners.get(ip, mac) == mac

    def _allocate(self, mac: str, hint: Optional[str], now_ns: int) -> Optional[str]:
        """The address for `mac`: its binding, else the free address it asked for, else the
        first free one, else one whose client has no live lease (released or expired)."""
        bound = self._bindings.get(mac)
        if bound is not None:
            return bound
        if hint is not None and self._free(hint, mac):
            self._bind(mac, hint)
            return hint
        for ip in self.pool:
            if self._free(ip, mac):
                self._bind(mac, ip)
                return ip
        for ip in self.pool:
            owner = self._owners.get(ip)
            lease = self._leases.get(owner) if owner is not None else None
            if ip not in self.declined and owner is not None and (lease is None or lease.expiry_ns <= now_ns):
                log.info("pool exhausted: %s taken back from %s for %s", ip, owner, mac)
                self._unbind(owner)
                self._bind(mac, ip)
                return ip
        return None

    def _check(self, mac: str, ip: str) -> tuple[str, str]:
        """May `mac` have `ip`?  ("ack", ""), ("nak", why) or ("silent", why)."""
        if not self._on_subnet(ip):
            return "nak", f"{ip} is not on {self.network}"
        if ip in self.declined:
            return "nak", f"{ip} was declined"
        bound = self._bindings.get(mac)
        if bound is not None:
            return ("ack", "") if bound == ip else ("nak", f"{mac} has {bound}, not {ip}")
        owner = self._owners.get(ip)
        if owner is not None:
            return "nak", f"{ip} is bound to {owner}"
        if ip not in self._pool_set:
            return "nak", f"{ip} is not in the pool"
        if not self.authoritative:
            return "silent", f"no record of {mac}"
        return "ack", ""

    # ------------------------------------------------------------ receiving

    def _drop(self, reason: str, path: str, detail: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        log.warning("path %s: DHCP message dropped: %s%s", path, reason, f" ({detail})" if detail else "")

    def handle_frame(self, path: str, p: Parsed, raw: bytes) -> None:
        """The peer's frame hook: answer a DHCP message to port 67; never raises."""
        if p.kind != "udp" or p.dport != SERVER_PORT or p.ethertype != frames.ETH_P_IP:
            return
        if p.dst_ip not in (LIMITED_BROADCAST, self.server_ip):
            return  # for another server
        if not (p.dst_is_group or p.dst_mac == self.peer.mac):
            return  # a unicast frame for another host
        try:
            self._handle(path, p)
        except Exception as exc:  # a bug here must not stop the peer, nor be silent
            self.dropped["error"] = self.dropped.get("error", 0) + 1
            log.exception("path %s: DHCP handling failed: %s", path, exc)

    def _handle(self, path: str, p: Parsed) -> None:
        if p.vlan is not None:
            self._drop("vlan-tagged", path)
            return
        if p.checksum_ok is False:
            self._drop("bad-checksum", path)
            return
        try:
            msg = parse_dhcp(p.payload)
            if msg.op == BOOTREPLY:
                self.dropped["bootreply"] = self.dropped.get("bootreply", 0) + 1
                log.debug("path %s: BOOTREPLY to port 67 ignored", path)
                return
            mtype = msg.message_type
            if mtype is None:
                raise DhcpError("no message type (option 53)")
            if mtype not in (DHCPDISCOVER, DHCPREQUEST, DHCPDECLINE, DHCPRELEASE, DHCPINFORM):
                raise DhcpError(f"message type {mtype} from a client")
            requested, server_id = msg.requested_ip, msg.server_id
            if frames.is_multicast_mac(msg.chaddr) or msg.chaddr == frames.ZERO_MAC:
                raise DhcpError(f"chaddr {msg.chaddr}")
        except DhcpError as exc:
            self._drop("malformed", path, str(exc))
            return
        now = time.monotonic_ns()
        state = self._request_state(msg, requested, server_id, p) if mtype == DHCPREQUEST else None
        if mtype == DHCPREQUEST and state is None:
            self._drop("malformed", path, "REQUEST with neither server id, requested IP nor ciaddr")
            return
        if msg.client_id is not None:
            self.client_ids[msg.chaddr] = msg.client_id
        event = DhcpEvent(
            t_ns=now,
            path=path,
            kind=MESSAGE_TYPES[mtype],
            chaddr=msg.chaddr,
            xid=msg.xid,
            ciaddr=msg.ciaddr,
            yiaddr=msg.yiaddr,
            requested_ip=requested,
            client_id=msg.client_id,
            state=state,
            server_id=server_id,
            dst_mac=p.dst_mac,
            dst_ip=p.dst_ip or "",
        )
        self.events.append(event)
        log.info(
            "path %s: %s from %s xid %#010x ciaddr %s requested %s server %s%s",
            path,
            event.kind.upper(),
            msg.chaddr,
            msg.xid,
            msg.ciaddr,
            requested,
            server_id,
            f" ({state})" if state else "",
        )
        if mtype == DHCPDISCOVER:
            self._discover(path, msg, requested, now)
        elif mtype == DHCPREQUEST:
            assert state is not None
            self._request(path, msg, state, requested, server_id, now)
        elif mtype == DHCPRELEASE:
            self._release(msg, server_id)
        elif mtype == DHCPDECLINE:
            self._decline(msg, requested, server_id)
        else:
            self._inform(path, msg, p)

    def _request_state(
        self, msg: DhcpMessage, requested: Optional[str], server_id: Optional[str], p: Parsed
    ) -> Optional[str]:
        if server_id is not None:
            return SELECTING if (requested is not None or msg.ciaddr != ZERO_IP) else None
        if msg.ciaddr == ZERO_IP:
            return INIT_REBOOT if requested is not None else None
        return RENEWING if p.dst_ip == self.server_ip else REBINDING

    def _discover(self, path: str, msg: DhcpMessage, requested: Optional[str], now: int) -> None:
        ip = self._allocate(msg.chaddr, requested, now)
        if ip is None:
            self._drop("pool-exhausted", path, f"no address for {msg.chaddr} among {len(self.pool)}")
            return
        self._reply(path, msg, DHCPOFFER, ip, state=None, lease=True)

    def _request(
        self,
        path: str,
        msg: DhcpMessage,
        state: str,
        requested: Optional[str],
        server_id: Optional[str],
        now: int,
    ) -> None:
        if state == SELECTING and server_id != self.server_ip:
            log.info("%s selected server %s, not this one", msg.chaddr, server_id)
            return
        if state in (SELECTING, INIT_REBOOT):
            ip = requested if requested is not None else msg.ciaddr
        else:
            ip = msg.ciaddr
        verdict, why = self._check(msg.chaddr, ip)
        if verdict == "silent":
            log.info("REQUEST from %s for %s not answered: %s", msg.chaddr, ip, why)
            return
        if verdict == "nak":
            log.info("NAK to %s: %s", msg.chaddr, why)
            self._reply(path, msg, DHCPNAK, ZERO_IP, state=state, lease=False, reason=why)
            return
        self._bind(msg.chaddr, ip)
        self._leases[msg.chaddr] = _Lease(ip, now + self.lease_seconds * 1_000_000_000)
        self._reply(path, msg, DHCPACK, ip, state=state, lease=True)

    def _release(self, msg: DhcpMessage, server_id: Optional[str]) -> None:
        if server_id is not None and server_id != self.server_ip:
            return
        lease = self._leases.get(msg.chaddr)
        if lease is not None and lease.ip == msg.ciaddr:
            del self._leases[msg.chaddr]  # the binding stays: the same MAC gets the same address
            log.info("%s released %s", msg.chaddr, msg.ciaddr)

    def _decline(self, msg: DhcpMessage, requested: Optional[str], server_id: Optional[str]) -> None:
        if server_id is not None and server_id != self.server_ip:
            return
        if requested is None or self._bindings.get(msg.chaddr) != requested:
            log.info("DECLINE from %s for %s, not its address: ignored", msg.chaddr, requested)
            return
        self._unbind(msg.chaddr)
        self.declined.add(requested)
        log.warning("%s declined %s (in use on the link?): taken out of the pool", msg.chaddr, requested)

    def _inform(self, path: str, msg: DhcpMessage, p: Parsed) -> None:
        self._reply(path, msg, DHCPACK, ZERO_IP, state=INFORM, lease=False, src_ip=p.src_ip)

    # ------------------------------------------------------------ sending

    def _options(self, mtype: int, msg: DhcpMessage, lease: bool, reason: str) -> list[tuple[int, bytes]]:
        opts: list[tuple[int, bytes]] = [
            (OPT_MESSAGE_TYPE, bytes((mtype,))),
            (OPT_SERVER_ID, _packed(self.server_ip)),
        ]
        if mtype == DHCPNAK:
            if reason:
                opts.append((OPT_MESSAGE, reason.encode()[:255]))
        else:
            if lease:
                opts += [
                    (OPT_LEASE_TIME, struct.pack("!I", self.lease_seconds)),
                    (OPT_T1, struct.pack("!I", self.t1)),
                    (OPT_T2, struct.pack("!I", self.t2)),
                ]
            opts.append((OPT_SUBNET_MASK, self.network.netmask.packed))
            if self.router is not None:
                opts.append((OPT_ROUTER, _packed(self.router)))
            if self.dns is not None:
                opts.append((OPT_DNS, b"".join(_packed(d) for d in self.dns)))
            opts.append((OPT_BROADCAST, self.network.broadcast_address.packed))
        if msg.client_id is not None:
            opts.append((OPT_CLIENT_ID, msg.client_id))  # RFC 6842
        return opts

    def _destination(
        self, msg: DhcpMessage, mtype: int, yiaddr: str, src_ip: Optional[str]
    ) -> tuple[str, str]:
        """(MAC, IP) a reply goes to: RFC 2131 4.1 for a server without relays."""
        if mtype == DHCPNAK:
            return frames.BROADCAST_MAC, LIMITED_BROADCAST
        if msg.ciaddr != ZERO_IP:
            return msg.chaddr, msg.ciaddr
        if mtype == DHCPACK and yiaddr == ZERO_IP:  # an INFORM without ciaddr
            if src_ip is not None and src_ip != ZERO_IP:
                return msg.chaddr, src_ip
            return frames.BROADCAST_MAC, LIMITED_BROADCAST
        if msg.broadcast:
            return frames.BROADCAST_MAC, LIMITED_BROADCAST
        return msg.chaddr, yiaddr

    def _reply(
        self,
        path: str,
        msg: DhcpMessage,
        mtype: int,
        yiaddr: str,
        *,
        state: Optional[str],
        lease: bool,
        reason: str = "",
        src_ip: Optional[str] = None,
    ) -> None:
        ciaddr = msg.ciaddr if mtype == DHCPACK else ZERO_IP
        payload = build_dhcp(
            BOOTREPLY,
            msg.xid,
            msg.chaddr,
            self._options(mtype, msg, lease, reason),
            flags=msg.flags & BROADCAST_FLAG,
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            giaddr=msg.giaddr,
        )
        dst_mac, dst_ip = self._destination(msg, mtype, yiaddr, src_ip)
        frame = frames.udp(self.peer.mac, dst_mac, self.server_ip, dst_ip, SERVER_PORT, CLIENT_PORT, payload)
        copies = self.peer.send_frame(None, frame)
        event = DhcpEvent(
            t_ns=time.monotonic_ns(),
            path=path,
            kind=MESSAGE_TYPES[mtype],
            chaddr=msg.chaddr,
            xid=msg.xid,
            ciaddr=ciaddr,
            yiaddr=yiaddr,
            requested_ip=None,
            client_id=msg.client_id,
            state=state,
            server_id=self.server_ip,
            dst_mac=dst_mac,
            dst_ip=dst_ip,
            copies=copies,
            reason=reason,
        )
        self.events.append(event)
        log.info(
            "path %s: %s %s to %s at %s/%s (%d copies)",
            path,
            event.kind.upper(),
            yiaddr,
            msg.chaddr,
            dst_mac,
            dst_ip,
            copies,
        )
        if copies == 0:
            log.warning("the %s to %s was not sent: %s", event.kind.upper(), msg.chaddr, self.peer.dropped)

    # ------------------------------------------------------------ queries

    @property
    def leases(self) -> dict[str, tuple[str, int]]:
        """mac -> (address, expiry as time.monotonic_ns()) of every ACKed lease not released
        or declined since (an expired one included: compare its expiry with the clock)."""
        return {mac: (lease.ip, lease.expiry_ns) for mac, lease in list(self._leases.items())}

    @property
    def bindings(self) -> dict[str, str]:
        """mac -> the address it has, or will get again (offered, leased or released)."""
        return dict(self._bindings)

    def find(
        self, kind: Optional[str] = None, mac: Optional[str] = None, after_ns: int = 0
    ) -> list[DhcpEvent]:
        """Events of `kind` (None: any) for chaddr `mac` (None: any) at or after `after_ns`."""
        if kind is not None and kind not in EVENT_KINDS:
            raise ValueError(f"no event kind {kind!r}: {sorted(EVENT_KINDS)}")
        m = frames.normalize_mac(mac) if mac is not None else None
        return [
            e
            for e in list(self.events)
            if (kind is None or e.kind == kind) and (m is None or e.chaddr == m) and e.t_ns >= after_ns
        ]

    def acks(self, mac: Optional[str] = None, after_ns: int = 0) -> list[DhcpEvent]:
        """ACKs that granted or extended a lease (not those answering an INFORM)."""
        return [e for e in self.find("ack", mac, after_ns) if e.state != INFORM]

    def naks(self, mac: Optional[str] = None, after_ns: int = 0) -> list[DhcpEvent]:
        return self.find("nak", mac, after_ns)

    def renewals(self, mac: Optional[str] = None, after_ns: int = 0) -> list[DhcpEvent]:
        """ACKs to REQUESTs in the renewing or rebinding state; `path` is where the REQUEST came in."""
        return [e for e in self.acks(mac, after_ns) if e.state in RENEWAL_STATES]

    def summary(self) -> str:
        """One line: message counts, the leases, the last event, the drops."""
        counts: dict[str, int] = {}
        for e in list(self.events):
            key = e.kind if e.received else f"{e.kind} sent"
            counts[key] = counts.get(key, 0) + 1
        parts = [", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "no DHCP messages"]
        leases = self.leases
        if leases:
            parts.append("leases " + ", ".join(f"{m}={ip}" for m, (ip, _exp) in sorted(leases.items())))
        if self.events:
            e = self.events[-1]
            parts.append(f"last {e.kind} {e.chaddr} on {e.path} ({e.state or '-'})")
        if self.dropped:
            parts.append(f"dropped {self.dropped}")
        if not self.attached:
            parts.append("detached")
        return "; ".join(parts)

    async def wait_for_ack(
        self,
        mac: Optional[str] = None,
        after_ns: int = 0,
        kind: str = "any",
        timeout: float = 10.0,
    ) -> DhcpEvent:
        """The first lease ACK (kind "any") or renewal ACK (kind "renew") for `mac` (None: any
        client) sent at or after `after_ns`; waits for it with the peer's `wait_for`, so it
        must run on the peer's loop.  TimeoutError, naming what was awaited and what the
        server saw, after `timeout` s."""
        if kind not in ("any", "renew"):
            raise ValueError(f'kind is "any" or "renew", not {kind!r}')
        query = self.renewals if kind == "renew" else self.acks
        m = frames.normalize_mac(mac) if mac is not None else None

        def first() -> Optional[DhcpEvent]:
            found = query(m, after_ns)
            return found[0] if found else None

        what = f"DHCP {'renewal ' if kind == 'renew' else ''}ACK to {m or 'any client'}"
        try:
            await self.peer.wait_for(lambda _p: first() is not None, timeout, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; dhcp: {self.summary()}") from None
        event = first()
        assert event is not None
        return event
