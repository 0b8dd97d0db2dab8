"""rtnetlink: the only module that talks to the kernel's link layer.

* `parse_link`, `parse_addr`, `parse_route`: pyroute2 messages -> model
  objects (pure; unit tests replay recorded dumps through them).
* `Netlink`: dumps and changes, through pyroute2's `IPRoute` (0.6.4 as in
  Ubuntu 22.04, 0.7.2 as in Debian 12, and 0.9.x).  pyroute2 0.9's synchronous IPRoute runs its own
  event loop and must not be used inside a running one, so the daemon calls
  these methods from one worker thread (`guestfail.daemon`).
* `LinkMonitor`: link events from a plain non-blocking netlink socket the
  daemon's event loop watches; messages are decoded with pyroute2's parser.
  A full socket buffer (ENOBUFS) means events were lost: the batch says so,
  after the events read before it, and the daemon resyncs.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from guestfail.core.errors import SystemRefused
from guestfail.core.model import ARPHRD_ETHER, Address, BondState, Link, NextHop, Route

log = logging.getLogger(__name__)
T = TypeVar("T")

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_DELADDR = 21
RTM_DELROUTE = 25
RTM_DELQDISC = 37
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
RTMGRP_LINK = 0x1
NLMSG_HDR = struct.Struct("=LHHLL")
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

BOND_MODE_ACTIVE_BACKUP = 1
# tc: the ingress hook of a clsact qdisc, and guestfail's filter on a member
CLSACT_INGRESS = 0xFFFFFFF2
ETH_P_ALL = 0x0003
GF_FILTER_PRIO = 49
GF_FILTER_HANDLE = 0x6766
# an ematch: the first byte of the destination MAC has the group bit clear
UNICAST_DST = {
    "kind": "cmp",
    "layer": "link",
    "opnd": "eq",
    "align": "u8",
    "offset": 0,
    "mask": 0x01,
    "value": 0,
}
BOND_PRI_RESELECT_ALWAYS = 0

#: route protocols guestfail moves with the addresses (not the kernel's own)
_KERNEL_PROTO = 2
_LOCAL_TABLE = 255
#: IFA_CACHEINFO's "forever"
FOREVER = 0xFFFFFFFF
#: rtm_flags a route keeps when it moves: RTNH_F_ONLINK (the kernel's own
#: RTM_F_* bits in a dump are not request flags)
RTNH_F_ONLINK = 0x4
ROUTE_FLAGS_KEPT = RTNH_F_ONLINK
#: IFA_F_NODAD | IFA_F_HOMEADDRESS | IFA_F_MANAGETEMPADDR | IFA_F_NOPREFIXROUTE
#: | IFA_F_MCAUTOJOIN: what an address was added with; IFA_F_PERMANENT is
#: implied by a request without lifetimes
ADDRESS_FLAGS_SETTABLE = 0x02 | 0x10 | 0x100 | 0x200 | 0x400


class NetlinkFailure(SystemRefused):
    """The kernel refused a request."""

    def __init__(self, what: str, code: int) -> None:
        self.what = what
        self.code = code
        name = errno.errorcode.get(code, str(code))
        super().__init__(f"{what}: {os.strerror(code)} ({name})")


# ------------------------------------------------------------------ parsing


def _attr(msg: Any, name: str) -> Any:
    try:
        return msg.get_attr(name)
    except (AttributeError, KeyError, TypeError):
        return None


def _linkinfo(msg: Any) -> tuple[str, str, Any, Any]:
    info = _attr(msg, "IFLA_LINKINFO")
    if info is None:
        return "", "", None, None
    return (
        _attr(info, "IFLA_INFO_KIND") or "",
        _attr(info, "IFLA_INFO_SLAVE_KIND") or "",
        _attr(info, "IFLA_INFO_DATA"),
        _attr(info, "IFLA_INFO_SLAVE_DATA"),
    )


def _bond_state(data: Any) -> Optional[BondState]:
    if data is None:
        return None

    def get(name: str, default: int = 0) -> int:
        v = _attr(data, name)
        return int(v) if v is not None else default

    active = _attr(data, "IFLA_BOND_ACTIVE_SLAVE")
    primary = _attr(data, "IFLA_BOND_PRIMARY")
    return BondState(
        mode=get("IFLA_BOND_MODE"),
        active_slave=int(active) if active else None,
        primary=int(primary) if primary else None,
        miimon=get("IFLA_BOND_MIIMON"),
        fail_over_mac=get("IFLA_BOND_FAIL_OVER_MAC"),
        primary_reselect=get("IFLA_BOND_PRIMARY_RESELECT"),
        all_slaves_active=get("IFLA_BOND_ALL_SLAVES_ACTIVE"),
        num_peer_notif=get("IFLA_BOND_NUM_PEER_NOTIF", 1),
    )


def parse_link(msg: Any) -> Link:
    """An RTM_NEWLINK message as a Link with the netlink fields filled in."""
    kind, slave_kind, data, slave_data = _linkinfo(msg)
    props = _attr(msg, "IFLA_PROP_LIST")
    altnames: tuple[str, ...] = ()
    if props is not None:
        try:
            altnames = tuple(str(a) for a in props.get_attrs("IFLA_ALT_IFNAME"))
        except (AttributeError, KeyError, TypeError):
            altnames = ()
    slave_state = ""
    if slave_kind == "bond" and slave_data is not None:
        st = _attr(slave_data, "IFLA_BOND_SLAVE_STATE")
        if st is not None:
            slave_state = "active" if int(st) == 0 else "backup"
    master = _attr(msg, "IFLA_MASTER")
    carrier = _attr(msg, "IFLA_CARRIER")
    flags = int(msg["flags"])
    return Link(
        ifindex=int(msg["index"]),
        name=str(_attr(msg, "IFLA_IFNAME") or ""),
        kind=str(kind),
        link_type=int(msg["ifi_type"]) if msg["ifi_type"] is not None else ARPHRD_ETHER,
        mac=str(_attr(msg, "IFLA_ADDRESS") or "").lower(),
        perm_mac=str(_attr(msg, "IFLA_PERM_ADDRESS") or "").lower(),
        mtu=int(_attr(msg, "IFLA_MTU") or 0),
        flags=flags,
        operstate=str(_attr(msg, "IFLA_OPERSTATE") or "unknown").lower(),
        carrier=bool(carrier) if carrier is not None else bool(flags & 0x10000),
        master=int(master) if master else None,
        slave_kind=str(slave_kind),
        slave_state=slave_state,
        altnames=altnames,
        ifalias=str(_attr(msg, "IFLA_IFALIAS") or ""),
        is_vlan=kind == "vlan",
        bond=_bond_state(data) if kind == "bond" else None,
    )


def parse_addr(msg: Any) -> tuple[int, Address]:
    cache = _attr(msg, "IFA_CACHEINFO")
    valid = pref = None
    if cache is not None:
        v = int(cache["ifa_valid"])
        p = int(cache["ifa_preferred"])
        valid = None if v == FOREVER else v
        pref = None if p == FOREVER else p
    flags = _attr(msg, "IFA_FLAGS")
    family = int(msg["family"])
    local = _attr(msg, "IFA_LOCAL") if family == socket.AF_INET else None
    address = _attr(msg, "IFA_ADDRESS")
    peer = str(address) if local is not None and address is not None and address != local else ""
    return int(msg["index"]), Address(
        family=family,
        address=str(local or address),
        prefixlen=int(msg["prefixlen"]),
        scope=int(msg["scope"]),
        flags=int(flags) if flags is not None else int(msg["flags"]),
        valid_lft=valid,
        preferred_lft=pref,
        label=str(_attr(msg, "IFA_LABEL") or ""),
        broadcast=str(_attr(msg, "IFA_BROADCAST") or ""),
        peer=peer,
    )


def _metrics(msg: Any) -> tuple[tuple[str, int], ...]:
    m = _attr(msg, "RTA_METRICS")
    if m is None:
        return ()
    out = []
    for name, value in m.get("attrs", []):
        if name.startswith("RTAX_") and isinstance(value, int):
            out.append((name[5:].lower(), int(value)))
    return tuple(sorted(out))


def _nexthops(msg: Any) -> tuple[NextHop, ...]:
    mp = _attr(msg, "RTA_MULTIPATH")
    if not mp:
        return ()
    return tuple(
        NextHop(
            oif=int(h["oif"]),
            gateway=str(_attr(h, "RTA_GATEWAY") or ""),
            hops=int(h["hops"]),
            flags=int(h["flags"]),
        )
        for h in mp
    )


def parse_route(msg: Any) -> Optional[tuple[int, Route]]:
    """A route and its output interface (0 for a multipath route, whose
    paths carry their own); None for routes with neither."""
    oif = _attr(msg, "RTA_OIF")
    hops = _nexthops(msg)
    if oif is None and not hops:
        return None
    table = _attr(msg, "RTA_TABLE") or msg["table"]
    pref = _attr(msg, "RTA_PREF")
    return int(oif or 0), Route(
        family=int(msg["family"]),
        dst=str(_attr(msg, "RTA_DST") or ""),
        dst_len=int(msg["dst_len"]),
        gateway=str(_attr(msg, "RTA_GATEWAY") or ""),
        table=int(table),
        priority=int(_attr(msg, "RTA_PRIORITY") or 0),
        protocol=int(msg["proto"]),
        scope=int(msg["scope"]),
        type=int(msg["type"]),
        prefsrc=str(_attr(msg, "RTA_PREFSRC") or ""),
        flags=int(msg["flags"]) & ROUTE_FLAGS_KEPT,
        metrics=_metrics(msg),
        pref=int(pref) if pref is not None else None,
        nexthops=hops,
    )


def movable_route(route: Route) -> bool:
    """Routes that follow addresses to the master: not the kernel's own
    (prefix and local routes are recreated with the addresses)."""
    return route.protocol != _KERNEL_PROTO and route.table != _LOCAL_TABLE and route.type == 1


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class Dump:
    links: list[Link]
    addresses: list[tuple[int, Address]]
    routes: list[tuple[int, Route]]


class Rtnl(Protocol):
    """The rtnetlink requests guestfail makes (what `Netlink` does against
    the kernel; unit tests give an in-memory kernel with the same methods)."""

    def dump(self) -> Dump: ...
    def get_link(self, ifindex: int) -> Optional[Link]: ...
    def addresses(self, ifindex: int) -> list[Address]: ...
    def lookup(self, name: str) -> Optional[int]: ...
    def holder_of(self, name: str) -> Optional[Link]: ...
    def close(self) -> None: ...
    def set(self, ifindex: int, what: str, **attrs: Any) -> None: ...
    def set_name(self, ifindex: int, old: str, name: str) -> None: ...
    def set_state(self, ifindex: int, name: str, up: bool) -> None: ...
    def set_master(self, ifindex: int, name: str, master: int, master_name: str) -> None: ...
    def set_ifalias(self, ifindex: int, name: str, alias: str) -> None: ...
    def add_altname(self, ifindex: int, name: str, altname: str) -> None: ...
    def del_altname(self, ifindex: int, name: str, altname: str) -> None: ...
    def delete_link(self, ifindex: int, name: str) -> None: ...
    def create_bond(
        self,
        name: str,
        mac: str,
        mtu: int,
        *,
        miimon: int,
        fail_over_mac: int,
        num_peer_notif: int,
        all_slaves_active: int,
    ) -> int: ...
    def set_bond(self, ifindex: int, what: str, **bond_attrs: Any) -> None: ...
    def redirect_unicast(self, member: int, member_name: str, master: int, master_name: str) -> None: ...
    def clear_redirect(self, member: int, member_name: str) -> None: ...
    def add_address(self, ifindex: int, name: str, a: Address) -> None: ...
    def del_address(self, ifindex: int, name: str, a: Address) -> None: ...
    def add_route(self, oif: int, name: str, r: Route) -> None: ...
    def del_route(self, oif: int, name: str, r: Route) -> None: ...


class Netlink:
    """Synchronous rtnetlink requests.  Not thread-safe: one thread uses it."""

    def __init__(self) -> None:
        self._ipr: Any = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    @property
    def _pyroute2_06(self) -> bool:
        return type(self.ipr).__module__.startswith("pr2modules.")

    def _del(self, msg_type: int) -> Any:
        """The "del" command.  pyroute2 0.6 sends deletions with
        NLM_F_CREATE|NLM_F_EXCL, which newer kernels refuse (EOPNOTSUPP; this
        host's 6.18 does); there a (type, flags) pair, which its link(),
        addr(), route() and tc() accept, sends the plain request later
        pyroute2 sends."""
        if self._pyroute2_06:
            return (msg_type, NLM_F_REQUEST | NLM_F_ACK)
        return "del"

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _do(self, what: str, fn: Callable[[], T]) -> T:
        from pyroute2 import (
            NetlinkError,
        )  # (pyroute2 0.6 has two NetlinkError classes: this is the one raised)

        try:
            return fn()
        except NetlinkError as e:
            raise NetlinkFailure(what, int(e.code)) from None

    def dump(self) -> Dump:
        links = [parse_link(m) for m in self._do("dump links", lambda: list(self.ipr.get_links()))]
        addrs = [parse_addr(m) for m in self._do("dump addresses", lambda: list(self.ipr.get_addr()))]
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._do("dump routes", lambda f=family: list(self.ipr.get_routes(family=f))):  # type: ignore[misc]
                r = parse_route(m)
                if r is not None:
                    routes.append(r)
        return Dump(links, addrs, routes)

    def get_link(self, ifindex: int) -> Optional[Link]:
        from pyroute2 import (
            NetlinkError,
        )  # (pyroute2 0.6 has two NetlinkError classes: this is the one raised)

        try:
            msgs = list(self.ipr.get_links(ifindex))
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise NetlinkFailure(f"read link {ifindex}", int(e.code)) from None
        return parse_link(msgs[0]) if msgs else None

    def addresses(self, ifindex: int) -> list[Address]:
        """The addresses on one link now."""
        msgs = self._do(f"read the addresses of {ifindex}", lambda: list(self.ipr.get_addr(index=ifindex)))
        return [a for i, a in (parse_addr(m) for m in msgs) if i == ifindex]

    def lookup(self, name: str) -> Optional[int]:
        found = self._do(f"look up {name}", lambda: self.ipr.link_lookup(ifname=name))
        return int(found[0]) if found else None

    # links
    def set(self, ifindex: int, what: str, **attrs: Any) -> None:
        self._do(what, lambda: self.ipr.link("set", index=ifindex, **attrs))

    def set_name(self, ifindex: int, old: str, name: str) -> None:
        self.set(ifindex, f"rename {old} to {name}", ifname=name)

    def set_state(self, ifindex: int, name: str, up: bool) -> None:
        self.set(ifindex, f"set {name} {'up' if up else 'down'}", state="up" if up else "down")

    def set_master(self, ifindex: int, name: str, master: int, master_name: str) -> None:
        what = f"enslave {name} to {master_name}" if master else f"release {name}"
        self.set(ifindex, what, master=master)

    def set_ifalias(self, ifindex: int, name: str, alias: str) -> None:
        self.set(ifindex, f"set the alias of {name}", ifalias=alias)

    def add_altname(self, ifindex: int, name: str, altname: str) -> None:
        self._do(
            f"add altname {altname} to {name}",
            lambda: self.ipr.link("property_add", index=ifindex, altname=altname),
        )

    def del_altname(self, ifindex: int, name: str, altname: str) -> None:
        self._do(
            f"remove altname {altname} from {name}",
            lambda: self.ipr.link("property_del", index=ifindex, altname=altname),
        )

    def holder_of(self, name: str) -> Optional[Link]:
        """The link that has `name` as its name or one of its altnames."""
        for m in self._do("dump links", lambda: list(self.ipr.get_links())):
            link = parse_link(m)
            if link.name == name or name in link.altnames:
                return link
        return None

    def delete_link(self, ifindex: int, name: str) -> None:
        self._do(f"delete {name}", lambda: self.ipr.link(self._del(RTM_DELLINK), index=ifindex))

    # bonds
    def create_bond(
        self,
        name: str,
        mac: str,
        mtu: int,
        *,
        miimon: int,
        fail_over_mac: int,
        num_peer_notif: int,
        all_slaves_active: int,
    ) -> int:
        self._do(
            f"create bond {name}",
            lambda: self.ipr.link(
                "add",
                ifname=name,
                kind="bond",
                address=mac,
                mtu=mtu,
                bond_mode=BOND_MODE_ACTIVE_BACKUP,
                bond_miimon=miimon,
                bond_fail_over_mac=fail_over_mac,
                bond_primary_reselect=BOND_PRI_RESELECT_ALWAYS,
                bond_num_peer_notif=num_peer_notif,
                bond_all_slaves_active=all_slaves_active,
            ),
        )
        idx = self.lookup(name)
        if idx is None:
            raise NetlinkFailure(f"create bond {name}", errno.ENODEV)
        return idx

    def set_bond(self, ifindex: int, what: str, **bond_attrs: Any) -> None:
        self._do(what, lambda: self.ipr.link("set", index=ifindex, kind="bond", **bond_attrs))

    # ingress from either path
    def redirect_unicast(self, member: int, member_name: str, master: int, master_name: str) -> None:
        """Unicast frames that arrive on `member` go straight to the master's
        ingress, whichever member is active: the host may send on either path
        (an early MAC filter update, a switch not yet announced), and the
        bond or team would drop what arrives on the inactive one.  Broadcast
        and multicast keep the normal path, so they arrive once (on the
        active member).  A clsact qdisc and one basic filter; idempotent."""
        what = f"redirect unicast from {member_name} to {master_name}"
        self._do(what, lambda: self.ipr.tc("replace", "clsact", member))
        self._do(
            what,
            lambda: self.ipr.tc(
                "replace-filter",
                "basic",
                member,
                handle=GF_FILTER_HANDLE,
                parent=CLSACT_INGRESS,
                protocol=ETH_P_ALL,
                prio=GF_FILTER_PRIO,
                classid=0x10001,
                match=[UNICAST_DST],
                action={"kind": "mirred", "direction": "ingress", "action": "redirect", "ifindex": master},
            ),
        )

    def clear_redirect(self, member: int, member_name: str) -> None:
        try:
            self._do(
                f"remove guestfail's tc filter from {member_name}",
                lambda: self.ipr.tc(self._del(RTM_DELQDISC), "clsact", member),
            )
        except NetlinkFailure as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise

    # addresses and routes
    def add_address(self, ifindex: int, name: str, a: Address) -> None:
        """Put `a` on the link as it was: flags, lifetimes, broadcast, peer,
        label.  Already there: no error."""
        kw: dict[str, Any] = {"index": ifindex, "family": a.family, "prefixlen": a.prefixlen}
        if a.family == socket.AF_INET:
            kw["local"] = a.address
            kw["address"] = a.peer or a.address
            if a.broadcast:
                kw["broadcast"] = a.broadcast
            if a.label:
                kw["label"] = a.label
        else:
            kw["address"] = a.address
        # IFA_F_* bits a request may carry (the rest are the kernel's state:
        # tentative, deprecated, dadfailed...)
        request_flags = a.flags & ADDRESS_FLAGS_SETTABLE
        if request_flags:
            kw["flags"] = request_flags
        if a.valid_lft is not None or a.preferred_lft is not None:
            valid = a.valid_lft if a.valid_lft is not None else FOREVER
            pref = a.preferred_lft if a.preferred_lft is not None else FOREVER
            # pyroute2 0.7 reads the lifetimes from this dict, 0.9 from the
            # request's own keys: give both
            kw["preferred"] = pref
            kw["valid"] = valid
            if not self._pyroute2_06:  # 0.6 reads these keys; this dict beside them is EINVAL there
                kw["cacheinfo"] = {"preferred": pref, "valid": valid, "cstamp": 0, "tstamp": 0}
        try:
            self._do(f"add {a.address}/{a.prefixlen} to {name}", lambda: self.ipr.addr("add", **kw))
        except NetlinkFailure as e:
            if e.code != errno.EEXIST:
                raise

    def del_address(self, ifindex: int, name: str, a: Address) -> None:
        kw: dict[str, Any] = {"index": ifindex, "family": a.family, "prefixlen": a.prefixlen}
        if a.family == socket.AF_INET:
            kw["local"] = a.address
            kw["address"] = a.peer or a.address
        else:
            kw["address"] = a.address
        try:
            self._do(
                f"remove {a.address}/{a.prefixlen} from {name}",
                lambda: self.ipr.addr(self._del(RTM_DELADDR), **kw),
            )
        except NetlinkFailure as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH):
                raise

    def del_route(self, oif: int, name: str, r: Route) -> None:
        """Remove `r` as it goes out of `oif`; already gone: no error."""
        kw: dict[str, Any] = {"family": r.family, "dst_len": r.dst_len, "table": r.table}
        if r.dst:
            kw["dst"] = r.dst
        if r.priority:
            kw["priority"] = r.priority
        if not r.nexthops:
            kw["oif"] = oif
            if r.gateway:
                kw["gateway"] = r.gateway
        try:
            self._do(
                f"remove route {r.dst or 'default'} via {name}",
                lambda: self.ipr.route(self._del(RTM_DELROUTE), **kw),
            )
        except NetlinkFailure as e:
            if e.code not in (errno.ESRCH, errno.ENODEV, errno.ENOENT):
                raise

    def add_route(self, oif: int, name: str, r: Route) -> None:
        """Add `r` out of `oif` (a multipath route keeps its own paths: the
        caller moves them, see Route.moved).  Already there: no error."""
        kw: dict[str, Any] = {
            "family": r.family,
            "dst_len": r.dst_len,
            "table": r.table,
            "proto": r.protocol,
            "scope": r.scope,
            "type": r.type,
        }
        if r.nexthops:
            hops = []
            for h in r.nexthops:
                hop: dict[str, Any] = {"oif": h.oif, "hops": h.hops}
                if h.gateway:
                    hop["gateway"] = h.gateway
                if h.flags & ROUTE_FLAGS_KEPT:
                    hop["flags"] = h.flags & ROUTE_FLAGS_KEPT
                hops.append(hop)
            kw["multipath"] = hops
        else:
            kw["oif"] = oif
            if r.gateway:
                kw["gateway"] = r.gateway
        if r.dst:
            kw["dst"] = r.dst
        if r.priority:
            kw["priority"] = r.priority
        if r.prefsrc:
            kw["prefsrc"] = r.prefsrc
        if r.flags & ROUTE_FLAGS_KEPT:
            kw["flags"] = r.flags & ROUTE_FLAGS_KEPT
        if r.metrics:
            kw["metrics"] = dict(r.metrics)
        if r.pref is not None:
            kw["pref"] = r.pref
        # a multipath route that lost a path (the standby went down) is still
        # there with the other paths: replace it with all of them
        command = "replace" if r.nexthops else "add"
        try:
            self._do(f"add route {r.dst or 'default'} via {name}", lambda: self.ipr.route(command, **kw))
        except NetlinkFailure as e:
            if e.code != errno.EEXIST:
                raise


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class LinkEvent:
    deleted: bool
    link: Link
    t_ns: int  # when the daemon read it (CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Batch:
    """What one read gave: the events, in order, and whether the kernel
    dropped some after them (then a resync must follow; the events read
    before the overrun are still good and are handled first)."""

    events: list[LinkEvent]
    lost: str = ""


class LinkMonitor:
    """Link events on a non-blocking netlink socket (RTMGRP_LINK)."""

    def __init__(self, rcvbuf: int = 4 << 20) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 0)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self, now_ns: Callable[[], int]) -> Batch:
        """Every event queued now; `lost` says when the kernel dropped some."""
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

        out: list[LinkEvent] = []
        lost = ""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return Batch(out, lost)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # the kernel reports the overrun once, then gives what it
                    # did queue: read on
                    lost = "netlink socket overrun"
                    continue
                raise
            t = now_ns()
            for typ, chunk in split_messages(data):
                if typ in (RTM_NEWLINK, RTM_DELLINK):
                    msg = ifinfmsg(chunk)
                    msg.decode()
                    out.append(LinkEvent(typ == RTM_DELLINK, parse_link(msg), t))
                elif typ == NLMSG_OVERRUN:
                    lost = "netlink overrun message"


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length, typ, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
        if length < NLMSG_HDR.size or off + length > len(data):
            break
        out.append((typ, data[off : off + length]))
        off += (length + 3) & ~3
    return out
