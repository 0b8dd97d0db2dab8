"""Fake sysfs trees with the files and symlinks the kernel has, for unit tests.

Only the boundary is fake: guestfail's Sysfs reads these exactly as it reads
/sys (symlink targets, realpath, attribute files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

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

    def pci_nic(self, name: str, pci: str, driver: str, slot: Optional[str] = None) -> None:
        rp = "0000:00:10.0"
        dev = self.root / "devices" / "pci0000:00" / rp / pci
        self._dev(dev, "pci", driver)
        self._net(name, dev)
        if slot is not None:
            s = self.root / "bus" / "pci" / "slots" / slot
            s.mkdir(parents=True, exist_ok=True)
            (s / "address").write_text(pci.rsplit(".", 1)[0] + "\n")

    def virtio_nic(self, name: str, pci: str, standby: bool = False, also: tuple[str, ...] = ()) -> None:
        """A virtio-net device; `also` names further netdevs on the same virtio
        device (net_failover's master and standby share it)."""
        pdev = self.root / "devices" / "pci0000:00" / "0000:00:11.0" / pci
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
