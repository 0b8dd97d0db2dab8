"""What the probe knows about a PF, its VFs and the sender: frozen data.

The system surfaces fill these in; `decide` and `report` read only them.
A `Snapshot` also travels as JSON (the journal a killed probe leaves for
`--restore`), so every field is a plain value.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

ZERO_MAC = "00:00:00:00:00:00"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

#: IFLA_VF_LINK_STATE values
LINK_STATE_NAMES = {0: "auto", 1: "enable", 2: "disable"}


def normalize_mac(mac: str) -> str:
    """A MAC in any case, with - or :, as "02:00:5e:..."; ValueError otherwise."""
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise ValueError(f"not a MAC address: {mac!r}")
    return m


def is_unicast(mac: str) -> bool:
    return not int(mac[:2], 16) & 1


@dataclass(frozen=True)
class VfConfig:
    """A VF's settings as the PF reports them (IFLA_VFINFO_LIST)."""

    index: int
    mac: str = ZERO_MAC
    vlan: int = 0
    qos: int = 0
    spoofchk: Optional[bool] = None
    trust: Optional[bool] = None
    link_state: Optional[int] = None


@dataclass(frozen=True)
class Netdev:
    """A network interface as far as the probe restores it."""

    name: str
    ifindex: int
    mac: str
    mtu: int
    up: bool
    carrier: bool = False


@dataclass(frozen=True)
class VfDevice:
    """A VF as a device: its PCI function, driver and host netdev."""

    index: int
    address: str  # PCI address, e.g. 0000:01:10.0
    driver: str = ""  # "" = no driver bound
    driver_override: str = ""  # "" = none
    vendor: str = ""  # "8086"
    device: str = ""  # "10ca"
    netdev: Optional[Netdev] = None
    #: pids holding the VF's vfio device open (assigned to a running VM)
    vfio_users: tuple[int, ...] = ()
    iommu_group: str = ""


@dataclass(frozen=True)
class Nic:
    """The PF's hardware identity, for the report and the udev hwdb."""

    address: str = ""  # PCI address of the PF
    vendor: str = ""
    device: str = ""
    subsystem_vendor: str = ""
    subsystem_device: str = ""
    model: str = ""  # from pci.ids, or what the control says
    driver: str = ""
    driver_version: str = ""
    firmware: str = ""
    numvfs: int = 0
    totalvfs: int = 0
    #: why the eswitch is not in legacy mode ("" if it is, or unknown)
    switchdev: str = ""


@dataclass(frozen=True)
class PfLink:
    """The PF's netdev as netlink shows it."""

    name: str
    ifindex: int
    mac: str
    up: bool
    carrier: bool
    promiscuity: int = 0
    master: str = ""  # name of the master device, if any
    master_kind: str = ""  # bridge, openvswitch, bond, ...
    kind: str = ""  # the PF's own link kind ("" for hardware)


@dataclass(frozen=True)
class Sender:
    """Where the test frames come from."""

    name: str
    netns: str = ""  # "" = the probe's own
    mac: str = ""
    up: bool = False
    running: bool = False


@dataclass(frozen=True)
class Snapshot:
    """Everything the probe may change, and what it needs to decide."""

    pf: PfLink
    nic: Nic
    vfs: tuple[VfDevice, ...] = ()
    configs: tuple[VfConfig, ...] = ()
    kernel: str = ""
    #: the probe's own VLAN devices present on the PF (left by an earlier run)
    probe_links: tuple[str, ...] = field(default_factory=tuple)

    def vf(self, index: int) -> Optional[VfDevice]:
        for v in self.vfs:
            if v.index == index:
                return v
        return None

    def config(self, index: int) -> Optional[VfConfig]:
        for c in self.configs:
            if c.index == index:
                return c
        return None

    # ------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Snapshot:
        def vf(d: dict[str, Any]) -> VfDevice:
            nd = d.get("netdev")
            return VfDevice(
                **{
                    **d,
                    "netdev": Netdev(**nd) if nd else None,
                    "vfio_users": tuple(d.get("vfio_users", ())),
                }
            )

        return cls(
            pf=PfLink(**doc["pf"]),
            nic=Nic(**doc["nic"]),
            vfs=tuple(vf(v) for v in doc.get("vfs", ())),
            configs=tuple(VfConfig(**c) for c in doc.get("configs", ())),
            kernel=str(doc.get("kernel", "")),
            probe_links=tuple(doc.get("probe_links", ())),
        )
