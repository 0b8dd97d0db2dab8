"""sysfs and procfs for the probe: the PF's PCI device and its VFs, driver
binding, the netdevs of VFs, representors of a switchdev eswitch, and who
holds a VF's vfio device open.

Both roots are injectable (`PciSysfs(sys_root, proc_root)`), so unit tests
build fake trees with the files and symlinks the kernel has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from guestfail.core.errors import NotFound, SystemRefused, UsageError
from guestfail.probe.facts import Netdev, Nic, VfDevice

IFF_UP = 0x1
PCI_IDS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids")
_REPRESENTOR = re.compile(r"^pf\d+vf(\d+)$")


def parse_pci_ids(lines: Iterable[str], vendor: str, device: str) -> str:
    """ "Vendor Device" from pci.ids text ("" if unknown)."""
    vendor, device = vendor.lower(), device.lower()
    vname = ""
    for line in lines:
        if not line or line.startswith("#"):
            continue
        if not line.startswith("\t"):
            if vname:  # past our vendor's block
                break
            if line[:4].lower() == vendor and line[4:6] == "  ":
                vname = line[6:].strip()
            continue
        if vname and not line.startswith("\t\t") and line[1:5].lower() == device:
            return f"{vname} {line[5:].strip()}"
    return vname


class PciSysfs:
    def __init__(self, root: Path = Path("/sys"), proc: Path = Path("/proc")) -> None:
        self.root = Path(root)
        self.proc = Path(proc)

    # ------------------------------------------------------------ reads

    @staticmethod
    def _read(path: Path) -> Optional[str]:
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return None

    @staticmethod
    def _target(path: Path) -> str:
        try:
            return os.path.basename(os.readlink(path))
        except OSError:
            return ""

    def _hex_id(self, path: Path) -> str:
        v = self._read(path) or ""
        return v[2:].lower() if v.startswith("0x") else v.lower()

    def pci_dir(self, address: str) -> Path:
        return self.root / "bus" / "pci" / "devices" / address

    def pf_address(self, pf: str) -> str:
        """The PCI address of an SR-IOV PF's netdev; refuses anything else."""
        dev = self.root / "class" / "net" / pf / "device"
        if not (self.root / "class" / "net" / pf).exists():
            raise NotFound(f"no interface {pf}")
        if not dev.exists() or self._target(dev / "subsystem") != "pci":
            raise UsageError(f"{pf} is not a PCI network device")
        if (dev / "physfn").exists():
            raise UsageError(f"{pf} is a VF; give its PF (the device with sriov_numvfs)")
        if not (dev / "sriov_totalvfs").exists():
            raise UsageError(f"{pf} is not an SR-IOV physical function (its device has no sriov_totalvfs)")
        return Path(os.path.realpath(dev)).name

    def nic(self, pf: str) -> Nic:
        addr = self.pf_address(pf)
        dev = self.pci_dir(addr)
        vendor, device = self._hex_id(dev / "vendor"), self._hex_id(dev / "device")
        return Nic(
            address=addr,
            vendor=vendor,
            device=device,
            subsystem_vendor=self._hex_id(dev / "subsystem_vendor"),
            subsystem_device=self._hex_id(dev / "subsystem_device"),
            model=self.pci_model(vendor, device),
            driver=self._target(dev / "driver"),
            numvfs=int(self._read(dev / "sriov_numvfs") or 0),
            totalvfs=int(self._read(dev / "sriov_totalvfs") or 0),
            switchdev=self.switchdev(pf),
        )

    def pci_model(self, vendor: str, device: str) -> str:
        for path in PCI_IDS:
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    return parse_pci_ids((line.rstrip("\n") for line in f), vendor, device)
            except OSError:
                continue
        return ""

    def netdev(self, name: str) -> Optional[Netdev]:
        base = self.root / "class" / "net" / name
        ifindex = self._read(base / "ifindex")
        if ifindex is None:
            return None
        flags = int(self._read(base / "flags") or "0", 16)
        return Netdev(
            name=name,
            ifindex=int(ifindex),
            mac=(self._read(base / "address") or "").lower(),
            mtu=int(self._read(base / "mtu") or 0),
            up=bool(flags & IFF_UP),
            carrier=(self._read(base / "carrier") == "1"),
        )

    def vfs(self, pf: str) -> tuple[VfDevice, ...]:
        dev = self.pci_dir(self.pf_address(pf))
        out = []
        for entry in sorted(os.listdir(dev)):
            m = re.match(r"^virtfn(\d+)$", entry)
            if not m:
                continue
            addr = self._target(dev / entry)
            out.append(self.vf_device(int(m.group(1)), addr))
        return tuple(sorted(out, key=lambda v: v.index))

    def vf_device(self, index: int, address: str) -> VfDevice:
        vdev = self.pci_dir(address)
        driver = self._target(vdev / "driver")
        override = self._read(vdev / "driver_override") or ""
        netdev = None
        try:
            names = sorted(os.listdir(vdev / "net"))
        except OSError:
            names = []
        if names:
            netdev = self.netdev(names[0])
        group = self._target(vdev / "iommu_group")
        users: tuple[int, ...] = ()
        if driver == "vfio-pci":
            users = self.vfio_users(vdev, group)
        return VfDevice(
            index=index,
            address=address,
            driver=driver,
            driver_override="" if override == "(null)" else override,
            vendor=self._hex_id(vdev / "vendor"),
            device=self._hex_id(vdev / "device"),
            netdev=netdev,
            vfio_users=users,
            iommu_group=group,
        )

    def vfio_users(self, vdev: Path, group: str) -> tuple[int, ...]:
        """Pids with the VF's vfio group or vfio device file open."""
        paths = set()
        if group:
            paths.add(f"/dev/vfio/{group}")
            paths.add(f"/dev/vfio/noiommu-{group}")  # vfio's unsafe no-IOMMU mode
        try:
            for cdev in os.listdir(vdev / "vfio-dev"):
                paths.add(f"/dev/vfio/devices/{cdev}")
        except OSError:
            pass
        pids = []
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return ()
        for pid in entries:
            if not pid.isdigit():
                continue
            fd_dir = self.proc / pid / "fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd_dir / fd)
                except OSError:
                    continue
                if target in paths:
                    pids.append(int(pid))
                    break
        return tuple(sorted(pids))

    def switchdev(self, pf: str) -> str:
        """Representor netdevs sharing the PF's switch id ("pf0vf3"): the
        eswitch is in switchdev mode.  "" if there are none."""
        base = self.root / "class" / "net"
        switch_id = self._read(base / pf / "phys_switch_id")
        if not switch_id:
            return ""
        reps = []
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return ""
        for name in names:
            if name == pf or self._read(base / name / "phys_switch_id") != switch_id:
                continue
            port = self._read(base / name / "phys_port_name") or ""
            if _REPRESENTOR.match(port):
                reps.append(f"{name} ({port})")
        return f"VF representors {', '.join(reps)}" if reps else ""

    # ------------------------------------------------------------ writes

    def _write(self, path: Path, value: str, what: str) -> None:
        try:
            with open(path, "w", encoding="ascii") as f:
                f.write(value)
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            raise SystemRefused(f"{what}: {e.strerror} ({name}, writing {path})") from e

    def unbind(self, address: str) -> None:
        vdev = self.pci_dir(address)
        driver = self._target(vdev / "driver")
        if not driver:
            return
        self._write(vdev / "driver" / "unbind", address, f"unbind {address} from {driver}")

    def bind(self, address: str, driver: str) -> None:
        """Bind to `driver` ("" = whatever the kernel picks) through
        driver_override and drivers_probe; driver_override is put back as it
        was."""
        vdev = self.pci_dir(address)
        self.unbind(address)
        old = self._read(vdev / "driver_override") or ""
        old = "" if old == "(null)" else old
        if driver:
            self._write(vdev / "driver_override", driver, f"set {address}'s driver_override to {driver}")
        try:
            # drivers_probe fails when no driver takes the device; that is
            # read back from the driver link, like any other outcome
            with contextlib.suppress(SystemRefused):
                self._write(
                    self.root / "bus" / "pci" / "drivers_probe", address, f"probe drivers for {address}"
                )
        finally:
            if driver:
                self._write(vdev / "driver_override", old or "\n", f"restore {address}'s driver_override")
        bound = self._target(vdev / "driver")
        if driver and bound != driver:
            raise SystemRefused(
                f"bind {address} to {driver}: the driver did not take it (bound: {bound or 'none'})"
            )
