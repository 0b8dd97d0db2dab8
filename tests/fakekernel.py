"""rtnetlink as a Linux 6.1 guest kernel answers guestfail's requests, in
memory: the boundary the unit tests fake for the reconciler and the executor.

It answers the methods of `guestfail.netlink.Netlink` and keeps every request
in `requests`.  What it models is what guestfail's correctness depends on, as
the real kernel does it (tests/integration/test_fakekernel_contract.py runs
the same sequences against this machine's kernel in a namespace, for what
veth can show; bonds are the vm tier's):

* a link going down loses its IPv6 addresses and every route out of it; its
  IPv4 addresses stay;
* a link that is up cannot be renamed (EBUSY, before Linux 6.2); a name or
  altname in use cannot be taken (EEXIST), not even a link's own altname;
* bonding refuses to enslave a link that is up (EPERM) or has a master
  (EBUSY); it opens the slaves it takes (no addresses: IPv6 skips slaves),
  gives them its MTU and (fail_over_mac=none) its MAC, closes the slaves it
  releases and gives them their own MAC back; deleting a bond releases its
  slaves; an untrusted VF (`mac_locked`) refuses any MAC (EPERM), and so
  bonding refuses to enslave it with fail_over_mac=none;
* an active-backup bond keeps an active slave among the slaves that are up
  with carrier, prefers its primary, and refuses to make a slave without
  link active (EINVAL);
* a route needs its output link up (ENETDOWN) and, for an IPv4 gateway, an
  address on that link whose subnet holds it (ENETUNREACH), unless onlink.

`crash_after(n)` makes the n-th changing request (counting from now) raise
`Crashed` after it took effect, as if the process was killed right there.
"""

from __future__ import annotations

import errno
import ipaddress
import shutil
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail.core.model import IFF_LOWER_UP, IFF_MASTER, IFF_SLAVE, IFF_UP, Address, BondState, Link, Route
from guestfail.system.netlink import Dump, NetlinkFailure


class Crashed(BaseException):
    """The process 'died' here (a BaseException: no `except Exception` in
    guestfail catches it, as none survives a SIGKILL)."""


@dataclass
class FakeLink:
    ifindex: int
    name: str
    kind: str = ""
    mac: str = ""
    perm_mac: str = ""
    mtu: int = 1500
    up: bool = False
    carrier: bool = True  # the device's own carrier (the cable)
    master: Optional[int] = None
    altnames: list[str] = field(default_factory=list)
    ifalias: str = ""
    # bonds
    bond: Optional[dict[str, Any]] = None
    own_mac: str = ""  # a slave's MAC before the bond changed it
    redirect: Optional[int] = None  # guestfail's tc filter: unicast to this master
    # an untrusted VF: the host set its MAC, the guest may not change it (EPERM)
    mac_locked: bool = False


class FakeKernel:
    def __init__(self, *, rename_up_ok: bool = False, sysfs: Optional[Path] = None) -> None:
        """`sysfs`: a fake sysfs tree (tests/fakesys.py) the kernel keeps in
        step: class/net/<name> follows renames, creations and deletions."""
        self.sysfs = sysfs
        self.links: dict[int, FakeLink] = {}
        self.addr_table: list[tuple[int, Address]] = []
        self.routes: list[tuple[int, Route]] = []
        self.requests: list[str] = []
        self.rename_up_ok = rename_up_ok
        self._next = 1
        self._crash_in: Optional[int] = None
        self.fail: dict[str, int] = {}  # request verb -> errno, once
        # slaves whose link the bond's miimon has not seen come back yet
        self.mii_lag: set[int] = set()
        # request verb -> called (in the requesting thread) before it takes effect
        self.before: dict[str, Callable[[], None]] = {}

    # ------------------------------------------------------------ test setup

    def add(self, name: str, *, mac: str = "", kind: str = "", up: bool = True, **kw: Any) -> int:
        """A device appears (its sysfs entry, if any, is the test's to make
        first, as the driver's probe makes it)."""
        idx = self._next
        self._next += 1
        perm = mac if not kind else ""
        self.links[idx] = FakeLink(idx, name, kind=kind, mac=mac, perm_mac=perm, up=up, **kw)
        self._sys_created(name, idx)
        return idx

    def remove(self, ifindex: int) -> None:
        """The device is gone (hot-unplug)."""
        self._delete(ifindex)

    # sysfs, kept in step
    def _sys(self, name: str) -> Optional[Path]:
        return self.sysfs / "class" / "net" / name if self.sysfs is not None else None

    def _sys_created(self, name: str, ifindex: int, bond: bool = False) -> None:
        d = self._sys(name)
        if d is None:
            return
        d.mkdir(parents=True, exist_ok=True)
        (d / "ifindex").write_text(f"{ifindex}\n")
        if bond:
            (d / "bonding").mkdir(exist_ok=True)

    def _sys_renamed(self, old: str, new: str) -> None:
        a, b = self._sys(old), self._sys(new)
        if a is not None and b is not None and a.exists():
            a.rename(b)

    def _sys_deleted(self, name: str) -> None:
        d = self._sys(name)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)

    def set_carrier(self, ifindex: int, carrier: bool) -> None:
        self.links[ifindex].carrier = carrier
        for m in self._masters():
            self._reselect(m)

    def crash_after(self, n: Optional[int]) -> None:
        self._crash_in = n

    # ------------------------------------------------------------ helpers

    def _masters(self) -> list[int]:
        return [i for i, x in self.links.items() if x.bond is not None]

    def _by_name(self, name: str) -> Optional[FakeLink]:
        for x in self.links.values():
            if x.name == name or name in x.altnames:
                return x
        return None

    def _get(self, ifindex: int, what: str) -> FakeLink:
        x = self.links.get(ifindex)
        if x is None:
            raise NetlinkFailure(what, errno.ENODEV)
        return x

    def _change(self, what: str) -> None:
        """Called once a changing request took effect."""
        self.requests.append(what)
        if self._crash_in is not None:
            self._crash_in -= 1
            if self._crash_in <= 0:
                self._crash_in = None
                raise Crashed(what)

    def _maybe_fail(self, verb: str, what: str) -> None:
        code = self.fail.pop(verb, None)
        if code is not None:
            raise NetlinkFailure(what, code)

    def _slaves(self, master: int) -> list[FakeLink]:
        return sorted((x for x in self.links.values() if x.master == master), key=lambda x: x.ifindex)

    def _usable(self, x: FakeLink) -> bool:
        return x.up and x.carrier and x.ifindex not in self.mii_lag

    def mii_sees(self, ifindex: int) -> None:
        """The bond's miimon notices the slave's link (and reselects)."""
        self.mii_lag.discard(ifindex)
        for m in self._masters():
            self._reselect(m)

    def _reselect(self, master: int) -> None:
        b = self.links[master].bond
        assert b is not None
        slaves = self._slaves(master)
        usable = [s.ifindex for s in slaves if self._usable(s)]
        active = b["active_slave"]
        primary = b["primary"]
        if primary in usable and b["primary_reselect"] == 0:
            b["active_slave"] = primary
        elif active not in usable:
            b["active_slave"] = usable[0] if usable else None

    def _link_down(self, x: FakeLink) -> None:
        """What NETDEV_DOWN takes from a link."""
        x.up = False
        self.addr_table = [(i, a) for i, a in self.addr_table if not (i == x.ifindex and a.family == 10)]
        self.routes = [(o, r) for o, r in self.routes if not r.uses(x.ifindex, o)]
        if x.master is not None and x.master in self.links:
            self._reselect(x.master)

    def _delete(self, ifindex: int) -> None:
        x = self.links.get(ifindex)
        if x is None:
            return
        if x.bond is not None:
            for s in self._slaves(ifindex):
                self._release(s)
        if x.up:
            self._link_down(x)
        master = x.master
        del self.links[ifindex]
        self._sys_deleted(x.name)
        self.addr_table = [(i, a) for i, a in self.addr_table if i != ifindex]
        if master is not None and master in self.links:
            self._reselect(master)

    def _release(self, s: FakeLink) -> None:
        master = s.master
        s.master = None
        s.redirect = None
        if s.own_mac:
            s.mac, s.own_mac = s.own_mac, ""
        self._link_down(s)
        if master is not None and master in self.links:
            self._reselect(master)

    # ------------------------------------------------------------ reading

    def _link(self, x: FakeLink) -> Link:
        flags = IFF_UP if x.up else 0
        carrier = x.carrier
        if x.bond is not None:
            flags |= IFF_MASTER
            carrier = any(self._usable(s) for s in self._slaves(x.ifindex))
        if x.master is not None:
            flags |= IFF_SLAVE
        if x.up and carrier:
            flags |= IFF_LOWER_UP
        bond = None
        if x.bond is not None:
            b = x.bond
            bond = BondState(
                mode=1,
                active_slave=b["active_slave"],
                primary=b["primary"],
                miimon=b["miimon"],
                fail_over_mac=b["fail_over_mac"],
                primary_reselect=b["primary_reselect"],
                all_slaves_active=b["all_slaves_active"],
                num_peer_notif=b["num_peer_notif"],
            )
        master = self.links.get(x.master) if x.master is not None else None
        return Link(
            ifindex=x.ifindex,
            name=x.name,
            kind=x.kind,
            mac=x.mac,
            perm_mac=x.perm_mac,
            mtu=x.mtu,
            flags=flags,
            operstate="up" if flags & IFF_LOWER_UP else "down",
            carrier=carrier,
            master=x.master,
            slave_kind=master.kind if master is not None else "",
            slave_state=(
                ""
                if master is None or master.bond is None
                else ("active" if master.bond["active_slave"] == x.ifindex else "backup")
            ),
            altnames=tuple(x.altnames),
            ifalias=x.ifalias,
            is_vlan=x.kind == "vlan",
            bond=bond,
        )

    def dump(self) -> Dump:
        return Dump(
            [self._link(x) for x in sorted(self.links.values(), key=lambda x: x.ifindex)],
            list(self.addr_table),
            list(self.routes),
        )

    def get_link(self, ifindex: int) -> Optional[Link]:
        x = self.links.get(ifindex)
        return self._link(x) if x is not None else None

    def addresses(self, ifindex: int) -> list[Address]:
        return [a for i, a in self.addr_table if i == ifindex]

    def holder_of(self, name: str) -> Optional[Link]:
        x = self._by_name(name)
        return self._link(x) if x is not None else None

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ links

    def set(self, ifindex: int, what: str, **attrs: Any) -> None:
        x = self._get(ifindex, what)
        for key, value in attrs.items():
            if key == "mtu":
                x.mtu = int(value)
            elif key == "ifalias":
                x.ifalias = str(value)
            elif key == "address":
                if x.mac_locked:
                    raise NetlinkFailure(what, errno.EPERM)
                x.mac, x.own_mac = str(value), ""
            else:  # pragma: no cover - a request this fake does not know
                raise AssertionError(f"FakeKernel.set: {key}")
        self._change(what)

    def set_name(self, ifindex: int, old: str, name: str) -> None:
        what = f"rename {old} to {name}"
        x = self._get(ifindex, what)
        self._maybe_fail("rename", what)
        if x.name == name:
            return
        if x.up and not self.rename_up_ok:
            raise NetlinkFailure(what, errno.EBUSY)
        if self._by_name(name) is not None:
            raise NetlinkFailure(what, errno.EEXIST)
        self._sys_renamed(x.name, name)
        x.name = name
        self._change(what)

    def set_state(self, ifindex: int, name: str, up: bool) -> None:
        what = f"set {name} {'up' if up else 'down'}"
        x = self._get(ifindex, what)
        self._maybe_fail("up" if up else "down", what)
        if up and not x.up:
            x.up = True
            if x.master is not None:
                self._reselect(x.master)
            if x.bond is not None:
                self._reselect(ifindex)
        elif not up and x.up:
            self._link_down(x)
        self._change(what)

    def set_master(self, ifindex: int, name: str, master: int, master_name: str) -> None:
        what = f"enslave {name} to {master_name}" if master else f"release {name}"
        x = self._get(ifindex, what)
        self._maybe_fail("enslave" if master else "release", what)
        if not master:
            if x.master is not None:
                self._release(x)
            self._change(what)
            return
        m = self._get(master, what)
        if m.bond is None:
            raise NetlinkFailure(what, errno.EOPNOTSUPP)
        if x.master == master:
            self._change(what)
            return
        if x.master is not None:
            raise NetlinkFailure(what, errno.EBUSY)
        if x.up:
            raise NetlinkFailure(what, errno.EPERM)  # "Device can not be enslaved while up"
        x.master = master
        x.mtu = m.mtu
        if m.bond["fail_over_mac"] == 0 and x.mac != m.mac:
            if x.mac_locked:  # bonding: "Error -1 calling set_mac_address"
                raise NetlinkFailure(what, errno.EPERM)
            x.own_mac, x.mac = x.mac, m.mac
        x.up = True  # the bond opens its slave; IPv6 configures no slave
        self._reselect(master)
        self._change(what)

    def add_altname(self, ifindex: int, name: str, altname: str) -> None:
        what = f"add altname {altname} to {name}"
        x = self._get(ifindex, what)
        if self._by_name(altname) is not None:
            raise NetlinkFailure(what, errno.EEXIST)
        x.altnames.append(altname)
        self._change(what)

    def del_altname(self, ifindex: int, name: str, altname: str) -> None:
        what = f"remove altname {altname} from {name}"
        x = self._get(ifindex, what)
        if altname not in x.altnames:
            raise NetlinkFailure(what, errno.ENOENT)
        x.altnames.remove(altname)
        self._change(what)

    def delete_link(self, ifindex: int, name: str) -> None:
        what = f"delete {name}"
        self._get(ifindex, what)
        self._delete(ifindex)
        self._change(what)

    # ------------------------------------------------------------ bonds

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
        return self._create(
            name,
            kind="bond",
            mac=mac,
            mtu=mtu,
            bond={
                "active_slave": None,
                "primary": None,
                "miimon": miimon,
                "fail_over_mac": fail_over_mac,
                "primary_reselect": 0,
                "all_slaves_active": all_slaves_active,
                "num_peer_notif": num_peer_notif,
            },
        )

    def create_team(self, name: str, mac: str, mtu: int) -> int:
        return self._create(name, kind="team", mac=mac, mtu=mtu)

    def _create(self, name: str, *, kind: str, **fields: Any) -> int:
        what = f"create {kind} {name}"
        self._maybe_fail("create", what)
        if self._by_name(name) is not None:
            raise NetlinkFailure(what, errno.EEXIST)
        idx = self._next
        self._next += 1
        self.links[idx] = FakeLink(idx, name, kind=kind, up=False, **fields)
        self._sys_created(name, idx, bond=kind == "bond")
        self._change(what)
        return idx

    def set_bond(self, ifindex: int, what: str, **bond_attrs: Any) -> None:
        hook = self.before.get("set_bond")
        if hook is not None:
            hook()
        self._maybe_fail("set_bond", what)
        x = self._get(ifindex, what)
        assert x.bond is not None
        for key, value in bond_attrs.items():
            if key == "bond_active_slave":
                s = self.links.get(value)
                if s is None or s.master != ifindex or not self._usable(s):
                    raise NetlinkFailure(what, errno.EINVAL)
                x.bond["active_slave"] = value
            elif key == "bond_primary":
                x.bond["primary"] = value or None
                self._reselect(ifindex)
            else:  # pragma: no cover
                raise AssertionError(f"FakeKernel.set_bond: {key}")
        self._change(what)

    # ------------------------------------------------------------ tc

    def redirect_unicast(self, member: int, member_name: str, master: int, master_name: str) -> None:
        what = f"redirect unicast from {member_name} to {master_name}"
        self._get(member, what).redirect = master
        self._change(what)

    def clear_redirect(self, member: int, member_name: str) -> None:
        x = self.links.get(member)
        if x is not None and x.redirect is not None:
            x.redirect = None
            self._change(f"remove guestfail's tc filter from {member_name}")

    # ------------------------------------------------------------ addresses, routes

    def add_address(self, ifindex: int, name: str, a: Address) -> None:
        what = f"add {a.address}/{a.prefixlen} to {name}"
        self._get(ifindex, what)
        self._maybe_fail("addr", what)
        if any(i == ifindex and x.key == a.key for i, x in self.addr_table):
            return
        self.addr_table.append((ifindex, replace(a, label=a.label or (name if a.family == 2 else ""))))
        self._change(what)

    def del_address(self, ifindex: int, name: str, a: Address) -> None:
        before = len(self.addr_table)
        self.addr_table = [(i, x) for i, x in self.addr_table if not (i == ifindex and x.key == a.key)]
        if len(self.addr_table) != before:
            self._change(f"remove {a.address}/{a.prefixlen} from {name}")

    def _reachable(self, oif: int, gateway: str, family: int) -> bool:
        if family != socket.AF_INET:
            return True
        gw = ipaddress.ip_address(gateway)
        # a connected route: an address's prefix route (unless it was added
        # with IFA_F_NOPREFIXROUTE), or a link route
        return any(
            i == oif
            and a.family == family
            and not a.flags & 0x200
            and gw in ipaddress.ip_network(f"{a.address}/{a.prefixlen}", False)
            for i, a in self.addr_table
        ) or any(
            o == oif
            and r.family == family
            and not r.gateway
            and r.dst
            and gw in ipaddress.ip_network(f"{r.dst}/{r.dst_len}", False)
            for o, r in self.routes
        )

    def add_route(self, oif: int, name: str, r: Route) -> None:
        what = f"add route {r.dst or 'default'} via {name}"
        for hop in r.nexthops or ():
            x = self._get(hop.oif, what)
            if not x.up:
                raise NetlinkFailure(what, errno.ENETDOWN)
            if hop.gateway and not self._reachable(hop.oif, hop.gateway, r.family):
                raise NetlinkFailure(what, errno.ENETUNREACH)
        if not r.nexthops:
            x = self._get(oif, what)
            if not x.up:
                raise NetlinkFailure(what, errno.ENETDOWN)
            if r.gateway and not r.flags & 4 and not self._reachable(oif, r.gateway, r.family):
                raise NetlinkFailure(what, errno.ENETUNREACH)
        same = [(o, x) for o, x in self.routes if x.key == r.key]
        if same and not r.nexthops:
            return  # EEXIST, which guestfail takes as done
        self.routes = [(o, x) for o, x in self.routes if x.key != r.key]
        self.routes.append((0 if r.nexthops else oif, r))
        self._change(what)

    def del_route(self, oif: int, name: str, r: Route) -> None:
        before = len(self.routes)
        self.routes = [(o, x) for o, x in self.routes if not (x.key == r.key and x.uses(oif, o))]
        if len(self.routes) != before:
            self._change(f"remove route {r.dst or 'default'} via {name}")
