"""rtnetlink: the module that changes the kernel's links, addresses and
routes (link events: guestfail.system.linkevents).

* `parse_link`, `parse_addr`, `parse_route` (from guestfail.system.rtnl):
  pyroute2 messages -> model objects (pure; unit tests replay recorded dumps
  through them).
* `Netlink`: dumps, reads and the switch path's requests through a small
  socket of its own (guestfail.system.nlsock), other changes through
  pyroute2's `IPRoute` (0.6.4 as in Ubuntu 22.04, 0.7.2 as in Debian 12, and
  0.9.x), imported only when one is made.  pyroute2 0.9's synchronous IPRoute runs its own
  event loop and must not be used inside a running one, so the daemon calls
  these methods from worker threads (`guestfail.agent.daemon`).

Link events come from `guestfail.system.linkevents`; the messages' parsing
is `guestfail.system.rtnl`'s.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from guestfail.core.errors import SystemRefused
from guestfail.core.model import Address, Link, Route
from guestfail.system.nlsock import NlError, NlSocket, lean_pyroute2, pyroute2_06
from guestfail.system.rtnl import (
    FOREVER,
    ROUTE_FLAGS_KEPT,
    parse_addr,
    parse_link,
    parse_route,
)

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
    def holder_of(self, name: str) -> Optional[Link]: ...
    def close(self) -> None: ...
    def set(self, ifindex: int, what: str, **attrs: Any) -> None: ...
    def set_name(self, ifindex: int, old: str, name: str) -> None: ...
    def set_state(self, ifindex: int, name: str, up: bool) -> None: ...
    def set_master(self, ifindex: int, name: str, master: int, master_name: str) -> None: ...
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
    def create_team(self, name: str, mac: str, mtu: int) -> int: ...
    def set_bond(self, ifindex: int, what: str, **bond_attrs: Any) -> None: ...
    def redirect_unicast(self, member: int, member_name: str, master: int, master_name: str) -> None: ...
    def clear_redirect(self, member: int, member_name: str) -> None: ...
    def add_address(self, ifindex: int, name: str, a: Address) -> None: ...
    def del_address(self, ifindex: int, name: str, a: Address) -> None: ...
    def add_route(self, oif: int, name: str, r: Route) -> None: ...
    def del_route(self, oif: int, name: str, r: Route) -> None: ...


PYROUTE2_06 = pyroute2_06()


def ifindex_of(nl: Rtnl, name: str) -> Optional[int]:
    """The ifindex of the link called `name` (not an altname)."""
    link = nl.holder_of(name)
    return link.ifindex if link is not None and link.name == name else None


def _delete(ipr: Any, msg_type: int) -> Any:
    """The "del" command.  pyroute2 0.6 sends deletions with
    NLM_F_CREATE|NLM_F_EXCL, which newer kernels refuse (EOPNOTSUPP; this
    host's 6.18 does); there a (type, flags) pair, which its link(),
    addr(), route() and tc() accept, sends the plain request later
    pyroute2 sends."""
    if PYROUTE2_06:
        return (msg_type, NLM_F_REQUEST | NLM_F_ACK)
    return "del"


def _ignoring(codes: set[int], call: Callable[[], object]) -> None:
    """call(), where the kernel answering one of `codes` means "already so"."""
    try:
        call()
    except NetlinkFailure as e:
        if e.code not in codes:
            raise


def _address_keys(ifindex: int, a: Address) -> dict[str, Any]:
    """What names an address in a request (IPv4: local and peer)."""
    kw: dict[str, Any] = {"index": ifindex, "family": a.family, "prefixlen": a.prefixlen}
    if a.family == socket.AF_INET:
        kw["local"] = a.address
        kw["address"] = a.peer or a.address
    else:
        kw["address"] = a.address
    return kw


class Netlink:
    """Synchronous rtnetlink requests.  Not thread-safe: one thread uses it."""

    def __init__(self) -> None:
        self._ipr: Any = None
        self._nl: Optional[NlSocket] = None

    @property
    def ipr(self) -> Any:
        """pyroute2's IPRoute, for the requests NlSocket does not make."""
        if self._ipr is None:
            if PYROUTE2_06:
                from pyroute2 import IPRoute  # its package is a map onto pr2modules
            else:
                lean_pyroute2()
                from pyroute2.iproute.linux import IPRoute

            self._ipr = IPRoute()
        return self._ipr

    @property
    def nl(self) -> NlSocket:
        if self._nl is None:
            self._nl = NlSocket()
        return self._nl

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _do(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except NlError as e:
            raise NetlinkFailure(what, e.errno or errno.EIO) from None
        except OSError:
            raise
        except Exception as e:  # pyroute2's NetlinkError (not imported unless IPRoute is)
            code = getattr(e, "code", None)
            if isinstance(code, int) and type(e).__name__ == "NetlinkError":
                raise NetlinkFailure(what, code) from None
            raise

    def dump(self) -> Dump:
        links = [parse_link(m) for m in self._do("dump links", lambda: self.nl.dump("link"))]
        addrs = [parse_addr(m) for m in self._do("dump addresses", lambda: self.nl.dump("addr"))]
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._do("dump routes", lambda f=family: self.nl.dump("route", f)):  # type: ignore[misc]
                r = parse_route(m)
                if r is not None:
                    routes.append(r)
        return Dump(links, addrs, routes)

    def get_link(self, ifindex: int) -> Optional[Link]:
        msg = self._do(f"read link {ifindex}", lambda: self.nl.get_link(ifindex))
        return parse_link(msg) if msg is not None else None

    def addresses(self, ifindex: int) -> list[Address]:
        """The addresses on one link now."""
        msgs = self._do(f"read the addresses of {ifindex}", lambda: self.nl.dump("addr"))
        return [a for i, a in (parse_addr(m) for m in msgs) if i == ifindex]

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
        links = self._do(f"look up {name}", lambda: self.nl.dump("link"))
        return next((x for x in map(parse_link, links) if x.name == name or name in x.altnames), None)

    def delete_link(self, ifindex: int, name: str) -> None:
        self._do(f"delete {name}", lambda: self.ipr.link(_delete(self.ipr, RTM_DELLINK), index=ifindex))

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
        idx = ifindex_of(self, name)
        if idx is None:
            raise NetlinkFailure(f"create bond {name}", errno.ENODEV)
        return idx

    def create_team(self, name: str, mac: str, mtu: int) -> int:
        """A team device with the MAC and MTU it is born with (its teamd
        takes it over)."""
        self._do(f"create team {name}", lambda: self.nl.create_link(name, "team", mac, mtu))
        idx = ifindex_of(self, name)
        if idx is None:
            raise NetlinkFailure(f"create team {name}", errno.ENODEV)
        return idx

    def set_bond(self, ifindex: int, what: str, **bond_attrs: Any) -> None:
        """bond_active_slave / bond_primary: the switch path's requests,
        without IPRoute."""
        self._do(what, lambda: self.nl.set_bond(ifindex, **bond_attrs))

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
                lambda: self.ipr.tc(_delete(self.ipr, RTM_DELQDISC), "clsact", member),
            )
        except NetlinkFailure as e:
            if e.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise

    # addresses and routes
    def add_address(self, ifindex: int, name: str, a: Address) -> None:
        """Put `a` on the link as it was: flags, lifetimes, broadcast, peer,
        label.  Already there: no error."""
        kw = _address_keys(ifindex, a)
        if a.family == socket.AF_INET:
            if a.broadcast:
                kw["broadcast"] = a.broadcast
            if a.label:
                kw["label"] = a.label
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
            if not PYROUTE2_06:  # 0.6 reads these keys; this dict beside them is EINVAL there
                kw["cacheinfo"] = {"preferred": pref, "valid": valid, "cstamp": 0, "tstamp": 0}
        what = f"add {a.address}/{a.prefixlen} to {name}"
        _ignoring({errno.EEXIST}, lambda: self._do(what, lambda: self.ipr.addr("add", **kw)))

    def del_address(self, ifindex: int, name: str, a: Address) -> None:
        kw = _address_keys(ifindex, a)
        what = f"remove {a.address}/{a.prefixlen} from {name}"
        _ignoring(
            {errno.EADDRNOTAVAIL, errno.ENODEV, errno.ESRCH},
            lambda: self._do(what, lambda: self.ipr.addr(_delete(self.ipr, RTM_DELADDR), **kw)),
        )

    def del_route(self, oif: int, name: str, r: Route) -> None:
        """Remove `r` as it goes out of `oif`; already gone: no error."""
        # RT_SCOPE_NOWHERE: any scope (pyroute2 sends universe unless told,
        # and the kernel then does not find a link-scope route: ESRCH)
        kw: dict[str, Any] = {"family": r.family, "dst_len": r.dst_len, "table": r.table, "scope": 255}
        if r.dst:
            kw["dst"] = r.dst
        if r.priority:
            kw["priority"] = r.priority
        if not r.nexthops:
            kw["oif"] = oif
            if r.gateway:
                kw["gateway"] = r.gateway
        what = f"remove route {r.dst or 'default'} via {name}"
        _ignoring(
            {errno.ESRCH, errno.ENODEV, errno.ENOENT},
            lambda: self._do(what, lambda: self.ipr.route(_delete(self.ipr, RTM_DELROUTE), **kw)),
        )

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
        what = f"add route {r.dst or 'default'} via {name}"
        _ignoring({errno.EEXIST}, lambda: self._do(what, lambda: self.ipr.route(command, **kw)))
