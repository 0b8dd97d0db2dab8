"""Everything guestfail reads from or writes to sysfs, under one root.

The root is injectable (`Sysfs(tmp_path)`): unit tests build fake trees with
the same files and symlinks the kernel has.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from guestfail.core.model import VIRTIO_NET_F_STANDBY, Bridge

_PCI_FUNCTION = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True)
class DeviceInfo:
    driver: str = ""
    bus: str = ""  # subsystem of the netdev's parent device: pci, virtio, vmbus
    pci_address: str = ""
    vmbus_id: str = ""
    standby_feature: bool = False
    bridges: tuple[Bridge, ...] = ()  # the PCI bridges above the device, nearest first
    # the name belongs to another link now (renamed between the netlink dump
    # and this read): nothing here can be trusted for the link asked about
    stale: bool = False


class Sysfs:
    def __init__(self, root: Path = Path("/sys")) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ reads

    def _read(self, path: Path) -> Optional[str]:
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None

    def _link_target(self, path: Path) -> str:
        """Base name of a symlink's target ("" if there is none)."""
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return ""

    def device_info(self, ifname: str, ifindex: Optional[int] = None) -> DeviceInfo:
        """Driver and bus identity of a netdev's parent device; empty for
        virtual devices (no `device` link).  sysfs is read by name: with
        `ifindex`, a name that meanwhile belongs to another link (or to none)
        gives a `stale` answer instead of another device's identity."""
        net = self.root / "class" / "net" / ifname
        if ifindex is not None:
            found = self._read(net / "ifindex")
            if found is None and not net.exists():
                return DeviceInfo(stale=True)
            if found is not None and found != str(ifindex):
                return DeviceInfo(stale=True)
        dev = net / "device"
        if not dev.exists():
            return DeviceInfo()
        driver = self._link_target(dev / "driver")
        bus = self._link_target(dev / "subsystem")
        real = Path(os.path.realpath(dev))
        pci = vmbus = ""
        standby = False
        if bus == "pci":
            pci = real.name
        elif bus == "virtio":
            parent = real.parent
            if self._link_target(parent / "subsystem") == "pci":
                pci = parent.name
            features = self._read(dev / "features") or ""
            standby = len(features) > VIRTIO_NET_F_STANDBY and features[VIRTIO_NET_F_STANDBY] == "1"
        elif bus == "vmbus":
            vmbus = (self._read(dev / "device_id") or real.name).strip("{}").lower()
        return DeviceInfo(driver, bus, pci, vmbus, standby, self._bridges(real, pci) if pci else ())

    def _bridges(self, real: Path, function: str) -> tuple[Bridge, ...]:
        """The PCI bridges above a PCI function, nearest first: the PCI
        functions on its sysfs path before its own, each with its
        vendor:device ID."""
        parts = real.parts
        if function not in parts:
            return ()
        out = []
        for i, part in enumerate(parts[: parts.index(function)]):
            if _PCI_FUNCTION.match(part):
                d = Path(*parts[: i + 1])
                vendor = (self._read(d / "vendor") or "").lower().removeprefix("0x")
                device = (self._read(d / "device") or "").lower().removeprefix("0x")
                out.append(Bridge(part, f"{vendor}:{device}" if vendor and device else ""))
        return tuple(reversed(out))

    def slot_bridges(self) -> dict[str, tuple[str, ...]]:
        """PCI device address of each slot (0000:03:00) -> the addresses of
        the bridges above it, nearest (the slot's own port) first."""
        out: dict[str, tuple[str, ...]] = {}
        for address in self.pci_slots():
            bus = address.rsplit(":", 1)[0]
            port = Path(os.path.realpath(self.root / "class" / "pci_bus" / bus / "device"))
            chain = [p for p in port.parts if _PCI_FUNCTION.match(p)]
            if chain:
                out[address] = tuple(reversed(chain))
        return out

    def pci_slots(self) -> dict[str, str]:
        """PCI device address (domain:bus:device) -> slot name.  Hyper-V
        names a VF's slot by the serial of its netvsc device."""
        out: dict[str, str] = {}
        base = self.root / "bus" / "pci" / "slots"
        try:
            entries = sorted(os.listdir(base))
        except OSError:
            return out
        for slot in entries:
            addr = self._read(base / slot / "address")
            if addr:
                out[addr.lower()] = slot
        return out

    @staticmethod
    def slot_for(pci_address: str, slots: dict[str, str]) -> str:
        """The slot of a PCI function "0000:02:00.0" (slots map "0000:02:00")."""
        if not pci_address:
            return ""
        return slots.get(pci_address.rsplit(".", 1)[0], "")

    def member_counters(self, ifname: str) -> tuple[Optional[int], Optional[int]]:
        """(link speed in Mb/s, the bond's link-failure count) of a member;
        None where the kernel has no figure (no link, not a bond slave)."""
        net = self.root / "class" / "net" / ifname
        speed = self._read(net / "speed")
        failures = self._read(net / "bonding_slave" / "link_failure_count")
        s = int(speed) if speed is not None and speed.lstrip("-").isdigit() else None
        return (s if s is not None and s > 0 else None), (
            int(failures) if failures and failures.isdigit() else None
        )

    # ------------------------------------------------------------ writes

    def set_bonding_option(self, bond: str, option: str, value: str) -> None:
        """For bonding options that pyroute2 does not map (peer_notif_delay)."""
        path = self.root / "class" / "net" / bond / "bonding" / option
        with open(path, "w", encoding="ascii") as f:
            f.write(value)

    def trigger_change(self, ifname: str) -> bool:
        """Ask udev to process the device again ("change" uevent), so rules
        that depend on guestfail's claims see them.  False if it is gone."""
        try:
            with open(self.root / "class" / "net" / ifname / "uevent", "w", encoding="ascii") as f:
                f.write("change")
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True
