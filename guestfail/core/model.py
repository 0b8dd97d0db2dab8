"""What guestfail knows about the guest's links: one frozen snapshot.

Built by `guestfail.discover` from netlink, sysfs and udev; everything that
decides (`match`, `plan`, `fsm`) reads only these objects, so it runs in unit
tests without root and without a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

# net/if.h
IFF_UP = 0x1
IFF_SLAVE = 0x800
IFF_MASTER = 0x400
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

ARPHRD_ETHER = 1
#: IFA_F_NOPREFIXROUTE: an address without the kernel's prefix route (what
#: NetworkManager adds, to set the prefix route's metric itself)
IFA_F_NOPREFIXROUTE = 0x200

#: virtio-net feature bit 62: the hypervisor offers a failover standby
VIRTIO_NET_F_STANDBY = 62

#: ifalias of every master guestfail creates; what follows are key=value words.
MARKER = "guestfail:1"


@dataclass(frozen=True)
class Address:
    """An address as the kernel reports it, with everything needed to put it
    on another link unchanged: flags (IFA_F_*: permanent, nodad,
    noprefixroute, managetempaddr...), lifetimes, the IPv4 broadcast and
    point-to-point peer, the label."""

    family: int  # socket.AF_INET / AF_INET6
    address: str
    prefixlen: int
    scope: int = 0
    flags: int = 0
    valid_lft: Optional[int] = None  # seconds left when read; None = forever
    preferred_lft: Optional[int] = None
    label: str = ""
    broadcast: str = ""
    peer: str = ""  # IPv4 point-to-point: the other end (IFA_ADDRESS != IFA_LOCAL)

    @property
    def link_local(self) -> bool:
        return self.family == 10 and self.address.lower().startswith("fe80:")

    @property
    def key(self) -> tuple[int, str, int]:
        """What makes two addresses on one link the same address."""
        return (self.family, self.address.lower(), self.prefixlen)

    def relabelled(self, new_dev: str) -> Address:
        """The address as it goes on `new_dev`: an IPv4 label names its
        device ("eth0" or "eth0:web"), so it follows the device's name."""
        if not self.label:
            return self
        if ":" not in self.label:
            return replace(self, label="")  # the default: the device's own name
        suffix = self.label[self.label.index(":") :]
        label = (new_dev + suffix).encode("utf-8", "surrogateescape")[:15].decode("utf-8", "ignore")
        return replace(self, label=label)

    def aged(self, seconds: float) -> Optional[Address]:
        """The same address `seconds` later: lifetimes run down; None once it
        has expired (an expired address must not be put back)."""
        if self.valid_lft is None and self.preferred_lft is None:
            return self
        gone = max(int(seconds), 0)
        valid = None if self.valid_lft is None else self.valid_lft - gone
        if valid is not None and valid <= 0:
            return None
        pref = None if self.preferred_lft is None else max(self.preferred_lft - gone, 0)
        return replace(self, valid_lft=valid, preferred_lft=pref)


@dataclass(frozen=True)
class NextHop:
    """One path of a multipath route."""

    oif: int
    gateway: str = ""
    hops: int = 0  # weight - 1, as rtnexthop.rtnh_hops
    flags: int = 0


@dataclass(frozen=True)
class Route:
    family: int
    dst: str  # "" = default route
    dst_len: int
    gateway: str = ""
    table: int = 254
    priority: int = 0
    protocol: int = 0
    scope: int = 0
    type: int = 1
    prefsrc: str = ""
    flags: int = 0  # rtm_flags (RTNH_F_ONLINK...)
    # RTA_METRICS as (name, value): mtu, advmss, window, hoplimit...
    metrics: tuple[tuple[str, int], ...] = ()
    pref: Optional[int] = None  # IPv6 router preference (RTA_PREF)
    nexthops: tuple[NextHop, ...] = ()  # multipath (RTA_MULTIPATH): the oif is per hop

    @property
    def key(self) -> tuple[int, str, int, int, int]:
        """What makes two routes one route (the kernel's EEXIST)."""
        return (self.family, self.dst, self.dst_len, self.table, self.priority)

    def uses(self, ifindex: int, oif: int) -> bool:
        """Does this route (reported with `oif`) send anything out of ifindex?"""
        if self.nexthops:
            return any(h.oif == ifindex for h in self.nexthops)
        return oif == ifindex

    def moved(self, src: int, dst: int) -> Route:
        """The route with every path out of src going out of dst instead."""
        if not self.nexthops:
            return self
        hops = tuple(replace(h, oif=dst) if h.oif == src else h for h in self.nexthops)
        return replace(self, nexthops=hops)


@dataclass(frozen=True)
class BondState:
    mode: int
    active_slave: Optional[int]  # ifindex
    primary: Optional[int]
    miimon: int
    fail_over_mac: int
    primary_reselect: int
    all_slaves_active: int = 0
    num_peer_notif: int = 1


@dataclass(frozen=True)
class Bridge:
    """A PCI bridge above a device: a root port, a switch's port, a PCI-PCI
    bridge (the topology rule pairs the NICs behind one)."""

    address: str  # its PCI function, 0000:00:1c.0
    id: str = ""  # vendor:device, 1b36:000c

    def describe(self) -> str:
        return f"{self.address} ({self.id})" if self.id else self.address


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str
    kind: str = ""  # IFLA_INFO_KIND: "bond", "team", "veth", "" for hardware
    link_type: int = ARPHRD_ETHER
    mac: str = ""
    perm_mac: str = ""
    mtu: int = 1500
    flags: int = 0
    operstate: str = "unknown"
    carrier: bool = False
    master: Optional[int] = None
    slave_kind: str = ""  # "bond" / "team" when enslaved
    slave_state: str = ""  # "active" / "backup" for bond slaves
    altnames: tuple[str, ...] = ()
    ifalias: str = ""
    # from sysfs
    driver: str = ""  # of the device itself (virtio_net for virtio)
    bus: str = ""  # "pci", "virtio", "vmbus", "" (virtual)
    pci_address: str = ""  # the PCI function (for virtio: the virtio device's)
    slot: str = ""  # PCI slot name from /sys/bus/pci/slots, if any
    bridges: tuple[Bridge, ...] = ()  # the PCI bridges above it, nearest first
    vmbus_id: str = ""
    standby_feature: bool = False  # virtio feature bit 62 negotiated
    is_vlan: bool = False
    # from udev
    udev_initialized: bool = True
    udev: tuple[tuple[str, str], ...] = ()
    bond: Optional[BondState] = None
    addresses: tuple[Address, ...] = ()

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def lower_up(self) -> bool:
        return bool(self.flags & IFF_LOWER_UP)

    @property
    def hw_mac(self) -> str:
        """The address that identifies the hardware: the permanent one where
        the kernel reports it, else the current one."""
        return self.perm_mac or self.mac

    def udev_prop(self, key: str) -> Optional[str]:
        for k, v in self.udev:
            if k == key:
                return v
        return None

    @property
    def marker(self) -> Optional[dict[str, str]]:
        """The key=value words of guestfail's ifalias marker, if this link
        carries it (a master guestfail created)."""
        return parse_marker(self.ifalias)


# ------------------------------------------------------------------ ownership
# A master is guestfail's when its ifalias carries the marker: the one test
# of ownership, for the daemon, `status`, `release` and the backends.


def is_ours(link: Optional[Link]) -> bool:
    return link is not None and link.kind in ("bond", "team") and link.marker is not None


def our_masters(snap: Snapshot) -> dict[str, list[Link]]:
    """guestfail's masters by pair key (more than one per key is a leak)."""
    out: dict[str, list[Link]] = {}
    for link in snap.links.values():
        if is_ours(link):
            m = parse_marker(link.ifalias) or {}
            out.setdefault(m.get("key", ""), []).append(link)
    return out


#: the kernel keeps at most IFALIASZ - 1 bytes of an ifalias
IFALIAS_MAX = 255
_ESCAPED = frozenset("%= \t\n\r\v\f")


def _escaped(value: str) -> list[str]:
    """Marker values are words: a space, '=' or '%' in one (a pair's label is
    the user's free text) is written %XX, so it cannot add or change a field.
    One token per character of `value`."""
    return [f"%{ord(c):02X}" if c in _ESCAPED or not c.isprintable() else c for c in value]


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        hexdigits = value[i + 1 : i + 3]
        if c == "%" and len(hexdigits) == 2 and all(x in "0123456789abcdefABCDEF" for x in hexdigits):
            out.append(chr(int(value[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_marker(ifalias: str) -> Optional[dict[str, str]]:
    words = ifalias.split()
    if not words or words[0] != MARKER:
        return None
    out: dict[str, str] = {}
    for w in words[1:]:
        k, sep, v = w.partition("=")
        if sep:
            out[k] = _unescape(v)
    return out


def make_marker(**fields: str) -> str:
    """guestfail's ifalias: MARKER, then key=value words, values escaped.
    The last field is cut (never inside an escape or a character) if the
    whole would not fit the kernel's limit."""
    words = [MARKER]
    items = [(k, v) for k, v in fields.items() if v]
    for n, (k, v) in enumerate(items):
        tokens = _escaped(v)
        if n == len(items) - 1:
            room = IFALIAS_MAX - len(" ".join(words).encode()) - len(k) - 2
            while tokens and len("".join(tokens).encode()) > room:
                tokens.pop()
        words.append(f"{k}={''.join(tokens)}")
    return " ".join(words)


@dataclass(frozen=True)
class Snapshot:
    """All links at one moment, by ifindex."""

    links: dict[int, Link] = field(default_factory=dict)
    routes: tuple[tuple[int, Route], ...] = ()  # (oif, route)
    # links renamed while the snapshot was taken: their sysfs identity is
    # unknown, so nothing decides on them until the next observation
    unstable: tuple[int, ...] = ()

    def by_name(self, name: str) -> Optional[Link]:
        for link in self.links.values():
            if link.name == name or name in link.altnames:
                return link
        return None

    def get(self, ifindex: Optional[int]) -> Optional[Link]:
        return None if ifindex is None else self.links.get(ifindex)

    def slaves_of(self, master: int) -> list[Link]:
        return sorted((x for x in self.links.values() if x.master == master), key=lambda x: x.ifindex)

    def routes_via(self, ifindex: int) -> list[Route]:
        """Routes that send anything out of `ifindex` (multipath ones too)."""
        return [r for oif, r in self.routes if r.uses(ifindex, oif)]

    def names(self) -> set[str]:
        out = set()
        for link in self.links.values():
            out.add(link.name)
            out.update(link.altnames)
        return out
