"""A lab topology described in data, and the QEMU arguments it becomes.

Pure: nothing here starts a process or opens a socket.  The lab (`lab.vm`)
allocates the loopback ports and hands them in as `Backends`.

Every NIC has its own `-netdev dgram` backend on 127.0.0.1, so the lab's peer
knows which path (standby, VF, other) every frame took.  Hot-pluggable NICs get
their backend at boot and their device later, over QMP.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

Role = Literal["standby", "primary", "other"]
Hotplug = Literal["acpi", "native"]

# vmxnet3 stands in for a VF by default: it has MSI-X and QEMU raises its link
# interrupt on set_link at once, so carrier loss reaches the guest within
# milliseconds.  The e1000 (GUESTFAIL_LAB_VF_MODEL=e1000) is the slow-carrier
# model: its driver's 2 s watchdog notices a link change anywhere from a few ms
# to ~2 s later and it uses legacy INTx; with e1000e set_link never reaches the
# guest at all (measured here, see ../shared/notes/vm-lab-recipe.md).
VF_MODELS = ("vmxnet3", "e1000")
DEFAULT_PRIMARY_MODEL = os.environ.get("GUESTFAIL_LAB_VF_MODEL", "vmxnet3")
STANDBY_MODEL = "virtio-net-pci"

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,15}$")


class TopologyError(ValueError):
    """The topology description is inconsistent."""


@dataclass(frozen=True)
class Port:
    """A PCIe root port; `slot` is the physical slot number (the VF serial
    under native hot-plug).  With `switch`, a downstream port of that
    PCIe switch instead (found in the guest by its slot: native hot-plug)."""

    id: str
    slot: int
    switch: str = ""


@dataclass(frozen=True)
class Switch:
    """A PCIe switch on a root port: QEMU's x3130-upstream (a TI XIO3130,
    PCI ID 104c:8232), whose downstream ports (xio3130-downstream, 104c:8233)
    are the Ports that name it.  What sits behind it sits behind one bridge."""

    id: str
    port: str  # the root port it is plugged into


#: the PCI vendor:device ID of QEMU's PCIe switch upstream port
SWITCH_ID = "104c:8232"


@dataclass(frozen=True)
class Nic:
    id: str
    role: Role
    mac: str
    port: str
    model: str = ""
    at_boot: bool = True

    @property
    def qemu_model(self) -> str:
        if self.model:
            return self.model
        return DEFAULT_PRIMARY_MODEL if self.role == "primary" else STANDBY_MODEL


@dataclass(frozen=True)
class Topology:
    ports: tuple[Port, ...]
    nics: tuple[Nic, ...]
    hotplug: Hotplug = "acpi"
    # QEMU's own failover: standbys get failover=on, primaries failover_pair_id.
    qemu_failover: bool = False
    switches: tuple[Switch, ...] = ()
    memory: str = "1G"
    cpus: int = 2
    extra_qemu_args: tuple[str, ...] = field(default_factory=tuple)

    def nic(self, nic_id: str) -> Nic:
        for n in self.nics:
            if n.id == nic_id:
                return n
        raise TopologyError(f"no NIC {nic_id!r} in the topology")

    def port(self, port_id: str) -> Port:
        for p in self.ports:
            if p.id == port_id:
                return p
        raise TopologyError(f"no port {port_id!r} in the topology")

    def root_ports(self) -> list[Port]:
        return [p for p in self.ports if not p.switch]

    def standbys(self) -> list[Nic]:
        return [n for n in self.nics if n.role == "standby"]

    def validate(self) -> None:
        ids = [p.id for p in self.ports] + [n.id for n in self.nics]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise TopologyError(f"duplicate ids: {sorted(dup)}")
        slots = [p.slot for p in self.ports]
        if len(set(slots)) != len(slots):
            raise TopologyError("two ports share a slot number")
        for p in self.ports:
            if not _ID_RE.match(p.id) or not 0 < p.slot < 8192:
                raise TopologyError(f"bad port {p}")
            if p.switch and p.switch not in {sw.id for sw in self.switches}:
                raise TopologyError(f"port {p.id}: no switch {p.switch!r}")
        for sw in self.switches:
            if not _ID_RE.match(sw.id) or self.port(sw.port).switch:
                raise TopologyError(f"bad switch {sw}")
        if self.switches and self.hotplug != "native":
            raise TopologyError("a switch's ports are found by their slot: native hot-plug only")
        used: dict[str, str] = {}
        for n in self.nics:
            if not _ID_RE.match(n.id):
                raise TopologyError(f"bad NIC id {n.id!r}")
            if not _MAC_RE.match(n.mac):
                raise TopologyError(f"NIC {n.id}: bad MAC {n.mac!r} (lowercase aa:bb:..)")
            self.port(n.port)
            if n.at_boot:
                if n.port in used:
                    raise TopologyError(f"NICs {used[n.port]} and {n.id} on port {n.port}")
                used[n.port] = n.id
            if n.role != "primary" and not n.at_boot:
                raise TopologyError(f"NIC {n.id}: only primaries can be hot-plugged")
        if self.qemu_failover and len(self.standbys()) != 1:
            raise TopologyError("qemu_failover needs exactly one standby")


@dataclass(frozen=True)
class Backend:
    """The two loopback UDP ports of one NIC's dgram backend."""

    qemu_port: int  # QEMU binds this (local)
    peer_port: int  # the peer binds this (remote)


def netdev_arg(nic: Nic, backend: Backend) -> str:
    return (
        f"dgram,id=nd-{nic.id},"
        f"local.type=inet,local.host=127.0.0.1,local.port={backend.qemu_port},"
        f"remote.type=inet,remote.host=127.0.0.1,remote.port={backend.peer_port}"
    )


def device_props(topo: Topology, nic: Nic, port: Optional[str] = None, mac: str = "") -> dict[str, object]:
    """The properties of a NIC device, for `-device` or QMP `device_add`."""
    props: dict[str, object] = {
        "driver": nic.qemu_model,
        "id": nic.id,
        "bus": port or nic.port,
        "netdev": f"nd-{nic.id}",
        "mac": mac or nic.mac,
    }
    if topo.qemu_failover:
        if nic.role == "standby":
            props["failover"] = "on"
        elif nic.role == "primary":
            props["failover_pair_id"] = topo.standbys()[0].id
            # no option ROM: QEMU sends the RAM block list before it unplugs
            # the primary (wait-unplug), and a destination without the VF
            # refuses the migration over the ROM's block
            props["romfile"] = ""
    return props


def _props_arg(props: dict[str, object]) -> str:
    driver = props["driver"]
    rest = ",".join(f"{k}={v}" for k, v in props.items() if k != "driver")
    return f"{driver},{rest}"


def root_port_address(index: int) -> tuple[int, int]:
    """PCI device and function of the index-th root port on pcie.0: fixed, so the
    lab can tell which guest netdev sits behind which port.  0x10 and up is clear
    of the devices virtme-run adds (auto-assigned from 0x02)."""
    return 0x10 + index // 8, index % 8


def root_port_arg(index: int, port: Port) -> str:
    dev, fn = root_port_address(index)
    mf = ",multifunction=on" if fn == 0 else ""
    return f"pcie-root-port,id={port.id},chassis={index + 1},slot={port.slot},addr=0x{dev:x}.0x{fn:x}{mf}"


def qemu_args(
    topo: Topology,
    backends: dict[str, Backend],
    qmp_path: str,
    ctl_path: str,
) -> list[str]:
    """Everything the lab adds to the QEMU command line (virtme-run adds the
    kernel, the root file system and the console)."""
    topo.validate()
    args: list[str] = []
    if topo.hotplug == "native":
        # pciehp then names slots by their number (/sys/bus/pci/slots/<slot>),
        # which is how Hyper-V exposes a VF's serial.
        args += ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]
    for i, p in enumerate(topo.root_ports()):
        args += ["-device", root_port_arg(i, p)]
    for sw in topo.switches:
        args += ["-device", f"x3130-upstream,id={sw.id},bus={sw.port}"]
    for i, p in enumerate(x for x in topo.ports if x.switch):
        # chassis numbers of their own: (chassis, slot) is unique per machine
        args += ["-device", f"xio3130-downstream,id={p.id},bus={p.switch},chassis={100 + i},slot={p.slot}"]
    for n in topo.nics:
        args += ["-netdev", netdev_arg(n, backends[n.id])]
    for n in topo.nics:
        if n.at_boot:
            args += ["-device", _props_arg(device_props(topo, n))]
    # QEMU connects to sockets the lab already listens on: no waiting for a
    # socket file to appear.
    args += ["-chardev", f"socket,id=labqmp,path={qmp_path}", "-mon", "chardev=labqmp,mode=control"]
    args += [
        "-device",
        "virtio-serial-pci,id=labser",
        "-chardev",
        f"socket,id=labctl,path={ctl_path}",
        "-device",
        "virtserialport,bus=labser.0,name=lab.ctl,chardev=labctl",
    ]
    args += list(topo.extra_qemu_args)
    return args


# Ready-made topologies used by the tests and the demo.  MACs are locally
# administered (02:...) so they can never collide with a real vendor's.
SBY_MAC = "02:00:00:00:00:11"
OTHER_MAC = "02:00:00:00:00:99"
VF_MAC = "02:00:00:00:00:22"  # a VF the topology rule pairs: not the standby's MAC
VF2_MAC = "02:00:00:00:00:33"


def basic(
    *,
    vf_at_boot: bool = False,
    hotplug: Hotplug = "acpi",
    qemu_failover: bool = False,
    vf_model: str = "",
    with_other: bool = True,
) -> Topology:
    """One standby, one VF with the standby's MAC, a spare port for re-plugging
    elsewhere, and (by default) a third NIC that is no one's pair."""
    nics = [
        Nic("sb0", "standby", SBY_MAC, "p1"),
        Nic("vf0", "primary", SBY_MAC, "p2", model=vf_model, at_boot=vf_at_boot),
    ]
    if with_other:
        nics.append(Nic("x0", "other", OTHER_MAC, "p4"))
    return Topology(
        ports=(Port("p1", 11), Port("p2", 5001), Port("p3", 5002), Port("p4", 21)),
        nics=tuple(nics),
        hotplug=hotplug,
        qemu_failover=qemu_failover,
    )


def serial_pair(*, hotplug: Hotplug = "native") -> Topology:
    """Two standbys with the same MAC and a VF with that MAC in slot 5001: the
    MAC alone is ambiguous, only the config's serial ties the VF to one of them
    (as Hyper-V's serial does)."""
    return Topology(
        ports=(Port("p1", 11), Port("p2", 12), Port("p3", 5001), Port("p4", 21)),
        nics=(
            Nic("sb0", "standby", SBY_MAC, "p1"),
            Nic("sb1", "standby", SBY_MAC, "p2"),
            Nic("vf0", "primary", SBY_MAC, "p3", at_boot=False),
            Nic("x0", "other", OTHER_MAC, "p4"),
        ),
        hotplug=hotplug,
    )


def switched(*, vf_at_boot: bool = False, extra_vf: bool = False) -> Topology:
    """The topology rule's lab: a PCIe switch (its own PCI ID, as the design
    notes' "special device ID") with the standby behind one downstream port
    and two free ones; the VF (another MAC than the standby's) goes into
    one of them, a second VF (`extra_vf`) into the other; a third NIC with
    the standby's MAC sits on a root port of its own.

    The VF that is given the standby's MAC is an e1000: QEMU's vmxnet3
    puts its receive filter back to its own MAC whenever the driver
    activates it (vmxnet3_activate_device calls vmxnet3_reset_mac), so a
    MAC given while the VF is down, as bonding and guestfail do before
    bringing a member up, would be the kernel's idea only and every frame
    to it dropped; a real VF, and QEMU's e1000, keep it."""
    nics = [
        Nic("sb0", "standby", SBY_MAC, "d1"),
        Nic("vf0", "primary", VF_MAC, "d2", model="e1000", at_boot=vf_at_boot),
        Nic("x0", "other", SBY_MAC, "p5", model="vmxnet3"),
    ]
    if extra_vf:
        nics.append(Nic("vf1", "primary", VF2_MAC, "d3", at_boot=vf_at_boot))
    return Topology(
        ports=(
            Port("p1", 30),
            Port("p5", 21),
            Port("d1", 31, switch="sw0"),
            Port("d2", 32, switch="sw0"),
            Port("d3", 33, switch="sw0"),
        ),
        switches=(Switch("sw0", "p1"),),
        nics=tuple(nics),
        hotplug="native",
    )
