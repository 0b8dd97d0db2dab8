"""rtnetlink for the probe: the PF's link, its VFs' settings
(IFLA_VFINFO_LIST, IFLA_VF_MAC, IFLA_VF_VLAN), link state, the probe's VLAN
device, and link events to wait on.

Parsing (`parse_pf_link`, `parse_vf_configs`) is pure and takes pyroute2
messages; `Links` talks to the kernel through pyroute2's `IPRoute` (0.7.2 as
in Debian 12, and 0.9.x); `LinkEvents` is a plain netlink socket subscribed
to link changes, so a wait wakes up on the kernel's event instead of polling.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import Any, Callable, Optional

from guestfail.core.errors import NotFound, SystemRefused
from guestfail.probe.decide import VLAN_PREFIX
from guestfail.probe.facts import ZERO_MAC, PfLink, VfConfig

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTMGRP_LINK = 0x1
#: RTEXT_FILTER_VF: ask for IFLA_VFINFO_LIST in RTM_GETLINK
RTEXT_FILTER_VF = 0x1


def _attrs(msg: Any, name: str) -> list[Any]:
    return [v for k, v in msg.get("attrs", []) if k == name]


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    found = _attrs(msg, name)
    return found[0] if found else default


def link_kind(msg: Any) -> str:
    info = _attr(msg, "IFLA_LINKINFO")
    if not info:
        return ""
    return str(_attr(info, "IFLA_INFO_KIND", "") or "")


def parse_pf_link(msg: Any, master: Any = None) -> PfLink:
    """A PF's RTM_NEWLINK (and its master's, if it has one) -> PfLink."""
    flags = int(msg.get("flags", 0))
    return PfLink(
        name=str(_attr(msg, "IFLA_IFNAME", "")),
        ifindex=int(msg.get("index", 0)),
        mac=str(_attr(msg, "IFLA_ADDRESS", "") or "").lower(),
        up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        promiscuity=int(_attr(msg, "IFLA_PROMISCUITY", 0) or 0),
        master=str(_attr(master, "IFLA_IFNAME", "")) if master is not None else "",
        master_kind=link_kind(master) if master is not None else "",
        kind=link_kind(msg),
    )


def parse_vf_configs(msg: Any) -> tuple[VfConfig, ...]:
    """IFLA_VFINFO_LIST of an RTM_NEWLINK -> one VfConfig per VF."""
    vflist = _attr(msg, "IFLA_VFINFO_LIST")
    out: list[VfConfig] = []
    if not vflist:
        return ()
    for info in _attrs(vflist, "IFLA_VF_INFO"):
        mac = _attr(info, "IFLA_VF_MAC")
        if mac is None:
            continue
        index = int(mac["vf"])
        vlan = _attr(info, "IFLA_VF_VLAN") or {}
        spoof = _attr(info, "IFLA_VF_SPOOFCHK")
        trust = _attr(info, "IFLA_VF_TRUST")
        state = _attr(info, "IFLA_VF_LINK_STATE")
        out.append(
            VfConfig(
                index=index,
                mac=str(mac["mac"]).lower() or ZERO_MAC,
                vlan=int(vlan.get("vlan", 0)),
                qos=int(vlan.get("qos", 0)),
                # the kernel reports -1 (as u32) where a driver does not say
                spoofchk=None if spoof is None or spoof["spoofchk"] > 1 else bool(spoof["spoofchk"]),
                trust=None if trust is None or trust["trust"] > 1 else bool(trust["trust"]),
                link_state=None if state is None else int(state["link_state"]),
            )
        )
    return tuple(sorted(out, key=lambda c: c.index))


def _refused(what: str, exc: Exception) -> SystemRefused:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return SystemRefused(f"{what}: {os.strerror(code)} ({errno.errorcode.get(code, code)})")
    return SystemRefused(f"{what}: {exc}")


def _no_such_link(e: Exception) -> bool:
    """pyroute2's NetlinkError (not imported unless IPRoute is) for a link
    that is not there; anything else is the caller's to see."""
    return type(e).__name__ == "NetlinkError" and getattr(e, "code", None) == errno.ENODEV


class Links:
    """The probe's rtnetlink requests (one IPRoute socket)."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute

        self.ipr = IPRoute()

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, ifindex: int, vfs: bool = False) -> Any:
        kw: dict[str, Any] = {"index": ifindex}
        if vfs:
            kw["ext_mask"] = RTEXT_FILTER_VF
        return self.ipr.link("get", **kw)[0]

    def ifindex(self, name: str) -> Optional[int]:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def name(self, ifindex: int) -> Optional[str]:
        """The link's name; None when there is no such link (ENODEV)."""
        try:
            return str(_attr(self._get(ifindex), "IFLA_IFNAME"))
        except Exception as e:
            if not _no_such_link(e):
                raise
            return None

    def pf_link(self, name: str) -> PfLink:
        idx = self.ifindex(name)
        if idx is None:
            raise NotFound(f"no interface {name}")
        msg = self._get(idx)
        master = None
        master_idx = _attr(msg, "IFLA_MASTER")
        if master_idx:
            try:
                master = self._get(int(master_idx))
            except Exception as e:
                if not _no_such_link(e):
                    raise
                master = None
        return parse_pf_link(msg, master)

    def vf_configs(self, ifindex: int) -> tuple[VfConfig, ...]:
        return parse_vf_configs(self._get(ifindex, vfs=True))

    def probe_links(self, pf_ifindex: int) -> tuple[str, ...]:
        """The probe's own VLAN devices on this PF."""
        out = []
        for msg in self.ipr.get_links():
            name = str(_attr(msg, "IFLA_IFNAME", ""))
            if name.startswith(VLAN_PREFIX) and _attr(msg, "IFLA_LINK") == pf_ifindex:
                out.append(name)
        return tuple(sorted(out))

    # ------------------------------------------------------------ changes

    def set_vf(self, ifindex: int, pf: str, index: int, mac: str, vlan: Optional[int], qos: int) -> None:
        spec: dict[str, Any] = {"vf": index, "mac": mac}
        if vlan is not None:
            spec["vlan"] = {"vlan": vlan, "qos": qos}
        try:
            self.ipr.link("set", index=ifindex, vf=spec)
        except Exception as e:
            what = f"set VF {index} of {pf} to MAC {mac}" + ("" if vlan is None else f" VLAN {vlan}")
            raise _refused(what, e) from e

    def set_up(self, ifindex: int, name: str, up: bool) -> None:
        try:
            self.ipr.link("set", index=ifindex, state="up" if up else "down")
        except Exception as e:
            raise _refused(f"set {name} {'up' if up else 'down'}", e) from e

    def set_address(self, ifindex: int, name: str, mac: str) -> None:
        try:
            self.ipr.link("set", index=ifindex, address=mac)
        except Exception as e:
            raise _refused(f"set {name}'s MAC to {mac}", e) from e

    def set_mtu(self, ifindex: int, name: str, mtu: int) -> None:
        try:
            self.ipr.link("set", index=ifindex, mtu=mtu)
        except Exception as e:
            raise _refused(f"set {name}'s MTU to {mtu}", e) from e

    def rename(self, ifindex: int, old: str, new: str) -> None:
        try:
            self.ipr.link("set", index=ifindex, ifname=new)
        except Exception as e:
            raise _refused(f"rename {old} to {new}", e) from e

    def add_vlan(self, parent: int, pf: str, name: str, vid: int) -> int:
        try:
            self.ipr.link("add", ifname=name, kind="vlan", link=parent, vlan_id=vid)
        except Exception as e:
            code = getattr(e, "code", None)
            if code == errno.EOPNOTSUPP:
                raise SystemRefused(
                    f"cannot create VLAN device {name} on {pf}: this kernel has no 802.1Q support "
                    "(the 8021q module)"
                ) from e
            raise _refused(f"create VLAN device {name} on {pf}", e) from e
        idx = self.ifindex(name)
        if idx is None:
            raise SystemRefused(f"VLAN device {name} vanished right after it was created")
        return idx

    def delete(self, ifindex: int, name: str) -> None:
        try:
            self.ipr.link("del", index=ifindex)
        except Exception as e:
            if getattr(e, "code", None) == errno.ENODEV:
                return
            raise _refused(f"delete {name}", e) from e


class LinkEvents:
    """Link events from the kernel, to wait on a condition without polling.
    Open it before the change whose effect you wait for."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_LINK))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LinkEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> None:
        while True:
            try:
                if not self.sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError as e:  # ENOBUFS: events were lost; the condition is read again anyway
                if e.errno != errno.ENOBUFS:
                    raise

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        """True once cond() holds (checked now and after every link event),
        False if it still does not after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if cond():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.sock], [], [], left)
            if ready:
                self._drain()
