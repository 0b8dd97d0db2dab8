"""Observe: one snapshot of the guest's links from netlink, sysfs and udev.

`assemble()` is pure (a netlink dump plus readers in, a Snapshot out); the
daemon and `guestfail status` call `observe()` with the real sources, unit
tests call `assemble()` with recorded dumps and a fake sysfs tree.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from guestfail.core.model import Link, Snapshot
from guestfail.system.netlink import Dump, Netlink
from guestfail.system.rtnl import movable_route
from guestfail.system.sysfs import Sysfs
from guestfail.system.udev import Udev, UdevInfo

UdevReader = Callable[[str], UdevInfo]


def assemble(dump: Dump, sysfs: Sysfs, udev: Optional[UdevReader] = None) -> Snapshot:
    slots = sysfs.pci_slots()
    addrs: dict[int, list] = {}  # type: ignore[type-arg]
    for idx, a in dump.addresses:
        addrs.setdefault(idx, []).append(a)
    links: dict[int, Link] = {}
    unstable: list[int] = []
    for nl in dump.links:
        dev = sysfs.device_info(nl.name, nl.ifindex)
        if dev.stale:
            unstable.append(nl.ifindex)
        fields: dict[str, object] = {
            "driver": dev.driver,
            "bus": dev.bus,
            "pci_address": dev.pci_address,
            "slot": Sysfs.slot_for(dev.pci_address, slots) if dev.bus == "pci" else "",
            "bridges": dev.bridges,
            "vmbus_id": dev.vmbus_id,
            "standby_feature": dev.standby_feature,
            "addresses": tuple(addrs.get(nl.ifindex, ())),
        }
        if udev is not None and dev.driver:
            info = udev(nl.name)
            fields["udev_initialized"] = info.initialized
            fields["udev"] = info.properties
        links[nl.ifindex] = dataclasses.replace(nl, **fields)  # type: ignore[arg-type]
    routes = tuple(
        (oif, r)
        for oif, r in dump.routes
        if (oif in links or r.nexthops) and movable_route(r, addrs.get(oif, ()))
    )
    return Snapshot(links=links, routes=routes, unstable=tuple(unstable))


def observe(netlink: Netlink, sysfs: Sysfs, udev: Optional[Udev]) -> Snapshot:
    return assemble(netlink.dump(), sysfs, udev.info if udev is not None else None)
