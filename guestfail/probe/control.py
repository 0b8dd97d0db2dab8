"""The NIC's SR-IOV control plane, as the probe uses it: one small interface.

`KernelControl` is the real one: the PF's PCI device and VFs from sysfs, the
VFs' settings over rtnetlink, driver binding through sysfs.  The lab's
software model (lab/sriov_model.py) implements the same interface on veth,
bridge and macvlan devices in network namespaces, so the whole probe runs
against it unchanged.

`snapshot()` adds what is the same for both (the PF's link, the probe's own
VLAN devices, the kernel release) to what the control reports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace
from typing import Callable, Optional, Protocol

from guestfail.probe import ethtool
from guestfail.probe.facts import Netdev, Nic, Snapshot, VfConfig, VfDevice
from guestfail.probe.netlink import Links
from guestfail.probe.sysfs import PciSysfs


class Control(Protocol):
    def nic(self, pf: str) -> Nic: ...

    def vfs(self, pf: str) -> tuple[VfDevice, ...]: ...

    def configs(self, pf: str, pf_ifindex: int) -> tuple[VfConfig, ...]: ...

    def set_vf(
        self, pf: str, pf_ifindex: int, index: int, mac: str, vlan: Optional[int], qos: int
    ) -> None: ...

    def unbind(self, vf: VfDevice) -> None: ...

    def bind(self, vf: VfDevice, driver: str) -> None: ...

    def netdev(self, name: str) -> Optional[Netdev]: ...

    def settle(self) -> None:
        """Wait until the device manager (udev) is done with new devices."""


ControlFactory = Callable[[Links], Control]


class KernelControl:
    """SR-IOV as the kernel offers it: sysfs and rtnetlink."""

    def __init__(self, links: Links, sysfs: Optional[PciSysfs] = None) -> None:
        self.links = links
        self.sysfs = sysfs or PciSysfs()

    def nic(self, pf: str) -> Nic:
        nic = self.sysfs.nic(pf)
        info = ethtool.drvinfo(pf)
        return replace(
            nic, driver=info.driver or nic.driver, driver_version=info.version, firmware=info.firmware
        )

    def vfs(self, pf: str) -> tuple[VfDevice, ...]:
        return self.sysfs.vfs(pf)

    def configs(self, pf: str, pf_ifindex: int) -> tuple[VfConfig, ...]:
        return self.links.vf_configs(pf_ifindex)

    def set_vf(self, pf: str, pf_ifindex: int, index: int, mac: str, vlan: Optional[int], qos: int) -> None:
        self.links.set_vf(pf_ifindex, pf, index, mac, vlan, qos)

    def unbind(self, vf: VfDevice) -> None:
        self.sysfs.unbind(vf.address)

    def bind(self, vf: VfDevice, driver: str) -> None:
        self.sysfs.bind(vf.address, driver)

    def netdev(self, name: str) -> Optional[Netdev]:
        return self.sysfs.netdev(name)

    def settle(self) -> None:
        udev_settle()


def udev_settle(timeout: int = 30) -> None:
    """`udevadm settle` if udevd runs here (renames of new netdevs are done)."""
    udevadm = shutil.which("udevadm")
    if udevadm and os.path.exists("/run/udev/control"):
        subprocess.run([udevadm, "settle", f"--timeout={timeout}"], check=False, capture_output=True)


def kernel_release() -> str:
    return os.uname().release


def snapshot(control: Control, links: Links, pf: str) -> Snapshot:
    link = links.pf_link(pf)
    nic = control.nic(pf)
    return Snapshot(
        pf=link,
        nic=nic,
        vfs=control.vfs(pf),
        configs=control.configs(pf, link.ifindex),
        kernel=kernel_release(),
        probe_links=links.probe_links(link.ifindex),
    )
