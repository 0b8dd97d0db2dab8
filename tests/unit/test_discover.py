"""Observe from recorded netlink dumps plus a fake sysfs tree shaped like the
lab guest's, then decide on the result."""

from __future__ import annotations

from pathlib import Path

from guestfail.core.config import Config
from guestfail.core.match import match
from guestfail.system.observe import assemble
from guestfail.system.sysfs import Sysfs
from guestfail.system.udev import UdevInfo

from ..fakesys import FakeSys
from .test_netlink_parse import load_dump


def guest_sys(tmp_path: Path, *, failover: bool = False) -> Sysfs:
    fs = FakeSys(tmp_path)
    fs.virtual("lo")
    if failover:
        fs.virtio_nic("enp1s0", "0000:01:00.0", standby=True, also=("enp1s0nsby",))
        fs.pci_nic("enp2s0", "0000:02:00.0", "e1000")
    else:
        fs.virtio_nic("enp1s0nsby", "0000:01:00.0")
        fs.pci_nic("enp1s0npf", "0000:02:00.0", "e1000", slot="5001")
        fs.virtual("enp1s0")
        fs.bonding("enp1s0", active_slave="enp1s0npf")
    fs.virtio_nic("enp4s0", "0000:04:00.0")
    return Sysfs(tmp_path)


def test_assemble_paired_guest(tmp_path: Path) -> None:
    snap = assemble(load_dump("paired"), guest_sys(tmp_path))
    sby, pf, bond, other = (snap.by_name(n) for n in ("enp1s0nsby", "enp1s0npf", "enp1s0", "enp4s0"))
    assert sby and pf and bond and other
    assert (sby.driver, sby.bus, sby.pci_address, sby.standby_feature) == (
        "virtio_net",
        "virtio",
        "0000:01:00.0",
        False,
    )
    assert (pf.driver, pf.bus, pf.pci_address, pf.slot) == ("e1000", "pci", "0000:02:00.0", "5001")
    assert bond.driver == "" and bond.kind == "bond"
    assert snap.by_name("enp2s0") is pf  # its old name is an altname
    assert [a.address for a in bond.addresses if a.family == 2] == ["192.0.2.2"]

    result = match(Config(), snap)
    assert [(p.standby, p.primary, p.rule, p.key) for p in result.pairings] == [
        (sby.ifindex, pf.ifindex, "mac", "pci-0000:01:00.0")
    ]
    assert [(u.link, u.role) for u in result.unpaired] == [(other.ifindex, "standby")]


def test_assemble_uses_udev_when_given(tmp_path: Path) -> None:
    def udev(name: str) -> UdevInfo:
        return UdevInfo(name != "enp1s0npf", (("ID_NET_DRIVER", "x"),))

    snap = assemble(load_dump("paired"), guest_sys(tmp_path), udev)
    pf = snap.by_name("enp1s0npf")
    assert pf is not None and not pf.udev_initialized and pf.udev_prop("ID_NET_DRIVER") == "x"
    # virtual devices are not asked
    bond = snap.by_name("enp1s0")
    assert bond is not None and bond.udev == ()


def test_net_failover_guest_is_kernel_managed(tmp_path: Path) -> None:
    snap = assemble(load_dump("net-failover"), guest_sys(tmp_path, failover=True))
    master = snap.by_name("enp1s0")
    assert master is not None and master.standby_feature
    result = match(Config(), snap)
    assert result.pairings == []
    assert [
        (k.kind, snap.links[k.master].name, sorted(snap.links[m].name for m in k.members))
        for k in result.kernel_managed
    ] == [("net_failover", "enp1s0", ["enp1s0nsby", "enp2s0"])]
    assert [snap.links[u.link].name for u in result.unpaired] == ["enp4s0"]


def test_sysfs_vmbus_and_missing_devices(tmp_path: Path) -> None:
    fs = FakeSys(tmp_path)
    fs.vmbus_nic("eth0", "f8615163-df3e-46c5-913f-f2d2f965ed0e")
    sysfs = Sysfs(tmp_path)
    info = sysfs.device_info("eth0")
    assert (info.driver, info.bus, info.vmbus_id) == (
        "hv_netvsc",
        "vmbus",
        "f8615163-df3e-46c5-913f-f2d2f965ed0e",
    )
    assert sysfs.device_info("gone").driver == ""
    assert not sysfs.trigger_change("gone")
    assert Sysfs(tmp_path / "nothing").pci_slots() == {}


def test_a_link_renamed_between_the_dump_and_sysfs_is_not_decided_on(tmp_path: Path) -> None:
    """Issue 16 #14: sysfs is read by name after the netlink dump.  If the
    name meanwhile belongs to another device, that device's identity must
    not be taken for the link's: the link is marked unstable and nothing
    decides on it until the next observation."""
    dump = load_dump("paired")
    sys = guest_sys(tmp_path)
    idx = {x.name: x.ifindex for x in dump.links}
    # the name the dump gave the standby now belongs to the VF (and the VF's
    # old name to nobody): a swap that happened after the dump
    (tmp_path / "class/net/enp1s0nsby/ifindex").write_text(f"{idx['enp1s0npf']}\n")
    (tmp_path / "class/net/enp1s0npf/ifindex").write_text("999\n")
    snap = assemble(dump, sys)
    assert set(snap.unstable) == {idx["enp1s0nsby"], idx["enp1s0npf"]}
    result = match(Config(), snap)
    assert result.pairings == []
    assert {i for i, why in result.ignored if "renamed while it was read" in why} == set(snap.unstable)
    # read again with the names settled: decided as before
    (tmp_path / "class/net/enp1s0nsby/ifindex").write_text(f"{idx['enp1s0nsby']}\n")
    (tmp_path / "class/net/enp1s0npf/ifindex").write_text(f"{idx['enp1s0npf']}\n")
    assert len(match(Config(), assemble(dump, sys)).pairings) == 1
