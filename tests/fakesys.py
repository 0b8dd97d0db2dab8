"""Fake sysfs trees with the files and symlinks the kernel has, for unit tests.

Only the boundary is fake: guestfail's Sysfs reads these exactly as it reads
/sys (symlink targets, realpath, attribute files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

#: a chain of PCI bridges, root first: (address, "vendor:device" or "")
Bridges = tuple[tuple[str, str], ...]

STANDBY_FEATURES = "0" * 62 + "1" + "0" * 1  # bit 62 set


class FakeSys:
    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("class/net", "bus/pci/slots", "bus/pci/drivers", "bus/virtio/drivers", "bus/vmbus/drivers"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self._virtio = 0

    def _driver(self, bus: str, name: str) -> Path:
        p = self.root / "bus" / bus / "drivers" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def _dev(self, path: Path, bus: str, driver: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        os.symlink(self.root / "bus" / bus, path / "subsystem")
        if driver:
            os.symlink(self._driver(bus, driver), path / "driver")

    def _net(self, name: str, device: Optional[Path]) -> None:
        n = self.root / "class" / "net" / name
        n.mkdir(parents=True)
        if device is not None:
            os.symlink(device, n / "device")

    def _below(self, bridges: Optional[Bridges], default: str) -> Path:
        """The directory of the last bridge of a chain (root first), each
        bridge made with its vendor and device files (when it has an ID)."""
        d = self.root / "devices" / "pci0000:00"
        for address, ident in bridges if bridges is not None else ((default, ""),):
            d = d / address
            d.mkdir(parents=True, exist_ok=True)
            if ident:
                vendor, device = ident.split(":")
                (d / "vendor").write_text(f"0x{vendor}\n")
                (d / "device").write_text(f"0x{device}\n")
        return d

    def pci_nic(
        self, name: str, pci: str, driver: str, slot: Optional[str] = None, bridges: Optional[Bridges] = None
    ) -> None:
        """A PCI NIC behind `bridges` ((address, "vendor:device"), root
        first; one root port by default)."""
        dev = self._below(bridges, "0000:00:10.0") / pci
        self._dev(dev, "pci", driver)
        self._net(name, dev)
        if slot is not None:
            self.slot(slot, pci.rsplit(".", 1)[0], dev.parent)

    def slot(self, name: str, address: str, port: Path) -> None:
        """A hot-plug slot (0000:03:00) on the secondary bus of `port`."""
        s = self.root / "bus" / "pci" / "slots" / name
        s.mkdir(parents=True, exist_ok=True)
        (s / "address").write_text(address + "\n")
        bus = self.root / "class" / "pci_bus" / address.rsplit(":", 1)[0]
        bus.mkdir(parents=True, exist_ok=True)
        if not (bus / "device").exists():
            os.symlink(port, bus / "device")

    def virtio_nic(
        self,
        name: str,
        pci: str,
        standby: bool = False,
        also: tuple[str, ...] = (),
        bridges: Optional[Bridges] = None,
    ) -> None:
        """A virtio-net device; `also` names further netdevs on the same virtio
        device (net_failover's master and standby share it)."""
        pdev = self._below(bridges, "0000:00:11.0") / pci
        if not pdev.exists():
            self._dev(pdev, "pci", "virtio-pci")
        vdev = pdev / f"virtio{self._virtio}"
        self._virtio += 1
        self._dev(vdev, "virtio", "virtio_net")
        (vdev / "features").write_text((STANDBY_FEATURES if standby else "0" * 64) + "\n")
        for n in (name, *also):
            self._net(n, vdev)

    def vmbus_nic(self, name: str, guid: str) -> None:
        dev = self.root / "devices" / "LNXSYSTM:00" / "VMBUS:00" / guid
        self._dev(dev, "vmbus", "hv_netvsc")
        (dev / "device_id").write_text("{" + guid + "}\n")
        self._net(name, dev)

    def virtual(self, name: str) -> None:
        self._net(name, None)

    def bonding(self, name: str, **options: str) -> None:
        b = self.root / "class" / "net" / name / "bonding"
        b.mkdir(parents=True, exist_ok=True)
        for k, v in options.items():
            (b / k).write_text(v + "\n")
