"""rtnetlink messages as guestfail's model (pure): `parse_link`,
`parse_addr`, `parse_route` turn pyroute2's decoded messages into
guestfail.core.model objects; `split_messages` cuts a datagram into
messages.  Unit tests replay recorded dumps through them."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Any, Optional

from guestfail.core.model import ARPHRD_ETHER, IFA_F_NOPREFIXROUTE, Address, BondState, Link, NextHop, Route

NLMSG_HDR = struct.Struct("=LHHLL")
#: route protocols guestfail moves with the addresses (not the kernel's own)
_KERNEL_PROTO = 2
_LOCAL_TABLE = 255
#: IFA_CACHEINFO's "forever"
FOREVER = 0xFFFFFFFF
#: rtm_flags a route keeps when it moves: RTNH_F_ONLINK (the kernel's own
#: RTM_F_* bits in a dump are not request flags)
RTNH_F_ONLINK = 0x4
ROUTE_FLAGS_KEPT = RTNH_F_ONLINK


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


def movable_route(route: Route, addresses: Optional[Iterable[Address]] = None) -> bool:
    """Routes that follow addresses to the master: not the kernel's own
    (prefix and local routes are recreated with the addresses).

    `addresses`: those of the route's link, when known.  A route of
    protocol "kernel" is the kernel's own only if one of them makes it: an
    address with that prefix, added without IFA_F_NOPREFIXROUTE.
    NetworkManager adds its addresses with that flag and the prefix routes
    itself, with protocol "kernel" and its own metric: those move, or the
    gateway behind them is unreachable where the addresses went."""
    if route.table == _LOCAL_TABLE or route.type != 1:
        return False
    if route.protocol != _KERNEL_PROTO:
        return True
    if addresses is None:
        return False
    return not any(_makes_prefix_route(a, route) for a in addresses)


def _makes_prefix_route(a: Address, route: Route) -> bool:
    if a.family != route.family or a.flags & IFA_F_NOPREFIXROUTE or a.prefixlen != route.dst_len:
        return False
    net = ipaddress.ip_network(f"{a.peer or a.address}/{a.prefixlen}", strict=False)
    return bool(route.dst) and ipaddress.ip_address(route.dst) == net.network_address


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
