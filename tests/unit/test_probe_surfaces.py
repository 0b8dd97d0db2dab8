"""guestfail-probe's system surfaces at their boundary: a fake sysfs and
procfs tree (the files and symlinks the kernel has), test frames as bytes,
ethtool's reply, pci.ids text, and the journal's JSON."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

# at import, not in the test: Debian's pyroute2 0.7.2 runs uname(1) when it is
# first imported, and a unit test may not start processes
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from guestfail.core.errors import NotFound, SystemRefused, UsageError
from guestfail.probe import ethtool, packet
from guestfail.probe.facts import Netdev, Nic, PfLink, Snapshot, VfConfig, VfDevice, normalize_mac
from guestfail.probe.netlink import parse_pf_link, parse_vf_configs
from guestfail.probe.sysfs import PciSysfs, parse_pci_ids
from guestfail.system.rtnl import split_messages

from .conftest import DATA

PF_ADDR = "0000:01:00.0"


class FakePci:
    """An igb PF with VFs, as /sys shows it."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        for d in ("class/net", "bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups"):
            (self.sys / d).mkdir(parents=True)
        self.proc.mkdir()
        (self.sys / "bus/pci/drivers_probe").write_text("")
        self.dev_root = self.sys / "devices/pci0000:00/0000:00:10.0"

    def _driver(self, name: str) -> Path:
        d = self.sys / "bus/pci/drivers" / name
        d.mkdir(exist_ok=True)
        for f in ("bind", "unbind"):
            (d / f).touch()
        return d

    def device(self, addr: str, vendor: str, device: str, driver: str = "") -> Path:
        dev = self.dev_root / addr
        dev.mkdir(parents=True)
        os.symlink(dev, self.sys / "bus/pci/devices" / addr)
        os.symlink(self.sys / "bus/pci", dev / "subsystem")
        (dev / "vendor").write_text(f"0x{vendor}\n")
        (dev / "device").write_text(f"0x{device}\n")
        (dev / "subsystem_vendor").write_text("0x8086\n")
        (dev / "subsystem_device").write_text("0x0000\n")
        (dev / "driver_override").write_text("(null)\n")
        if driver:
            os.symlink(self._driver(driver), dev / "driver")
        return dev

    def netdev(self, dev: Path, name: str, mac: str, ifindex: int, up: bool = False) -> None:
        n = self.sys / "class/net" / name
        n.mkdir()
        os.symlink(dev, n / "device")
        (dev / "net").mkdir(exist_ok=True)
        (dev / "net" / name).mkdir()
        for f, v in (
            ("ifindex", ifindex),
            ("address", mac),
            ("mtu", 1500),
            ("flags", "0x1003" if up else "0x1002"),
        ):
            (n / f).write_text(f"{v}\n")
        (n / "carrier").write_text("1\n" if up else "0\n")

    def igb(self, numvfs: int = 2) -> Path:
        pf = self.device(PF_ADDR, "8086", "10c9", "igb")
        (pf / "sriov_totalvfs").write_text("7\n")
        (pf / "sriov_numvfs").write_text(f"{numvfs}\n")
        self.netdev(pf, "enp1s0", "02:00:00:00:01:01", 3)
        for i in range(numvfs):
            addr = f"0000:01:10.{2 * i}"
            vf = self.device(addr, "8086", "10ca", "igbvf" if i == 0 else "vfio-pci")
            os.symlink(vf, pf / f"virtfn{i}")
            os.symlink(pf, vf / "physfn")
            group = self.sys / "kernel/iommu_groups" / str(10 + i)
            group.mkdir()
            os.symlink(group, vf / "iommu_group")
            if i == 0:
                self.netdev(vf, "enp1s0v0", "9a:29:63:1c:a2:2d", 5)
        return pf

    def process(self, pid: int, *targets: str) -> None:
        fd = self.proc / str(pid) / "fd"
        fd.mkdir(parents=True)
        for i, t in enumerate(targets):
            os.symlink(t, fd / str(i))


@pytest.fixture
def fake(tmp_path: Path) -> FakePci:
    return FakePci(tmp_path)


def test_nic_and_vfs_of_an_igb_pf(fake: FakePci) -> None:
    fake.igb()
    fake.process(4242, "/dev/null", "/dev/vfio/11")
    fake.process(99, "/dev/vfio/vfio")
    fake.process(4343, "/dev/vfio/noiommu-11")
    s = PciSysfs(fake.sys, fake.proc)
    nic = s.nic("enp1s0")
    assert (nic.address, nic.vendor, nic.device, nic.driver, nic.numvfs, nic.totalvfs) == (
        PF_ADDR,
        "8086",
        "10c9",
        "igb",
        2,
        7,
    )
    vf0, vf1 = s.vfs("enp1s0")
    assert (vf0.index, vf0.address, vf0.driver, vf0.driver_override) == (0, "0000:01:10.0", "igbvf", "")
    assert vf0.netdev == Netdev("enp1s0v0", 5, "9a:29:63:1c:a2:2d", 1500, False, False)
    assert (vf1.driver, vf1.netdev, vf1.vfio_users, vf1.iommu_group) == ("vfio-pci", None, (4242, 4343), "11")


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("eth9", NotFound, "no interface eth9"),
        ("enp1s0v0", UsageError, "enp1s0v0 is a VF; give its PF"),
    ],
)
def test_not_a_pf(fake: FakePci, name: str, error: type[Exception], text: str) -> None:
    fake.igb()
    with pytest.raises(error, match=text):
        PciSysfs(fake.sys, fake.proc).nic(name)


def test_a_nic_without_sr_iov(fake: FakePci) -> None:
    dev = fake.device("0000:02:00.0", "8086", "100e", "e1000")
    fake.netdev(dev, "eth0", "02:00:00:00:00:09", 2)
    with pytest.raises(UsageError, match="eth0 is not an SR-IOV physical function"):
        PciSysfs(fake.sys, fake.proc).nic("eth0")


def test_bind_uses_driver_override_and_puts_it_back(fake: FakePci) -> None:
    fake.igb()
    s = PciSysfs(fake.sys, fake.proc)
    vf = fake.sys / "bus/pci/devices/0000:01:10.2"
    writes: list[tuple[str, str]] = []
    real_write = s._write

    def record(path: Path, value: str, what: str) -> None:
        writes.append((str(path.relative_to(fake.sys)), value))
        real_write(path, value, what)
        if path.name == "drivers_probe":  # what the kernel does: the driver takes it
            os.symlink(fake._driver("igbvf"), vf / "driver")
        if path.name == "unbind":
            (vf / "driver").unlink()

    s._write = record  # type: ignore[method-assign]
    s.bind("0000:01:10.2", "igbvf")
    assert writes == [
        ("bus/pci/devices/0000:01:10.2/driver/unbind", "0000:01:10.2"),
        ("bus/pci/devices/0000:01:10.2/driver_override", "igbvf"),
        ("bus/pci/drivers_probe", "0000:01:10.2"),
        ("bus/pci/devices/0000:01:10.2/driver_override", "\n"),
    ]


def test_a_driver_that_does_not_take_the_vf_is_an_error(fake: FakePci) -> None:
    fake.igb()
    (fake.sys / "bus/pci/devices/0000:01:10.2/driver").unlink()
    with pytest.raises(
        SystemRefused, match=r"bind 0000:01:10.2 to igbvf: the driver did not take it \(bound: none\)"
    ):
        PciSysfs(fake.sys, fake.proc).bind("0000:01:10.2", "igbvf")


def test_switchdev_is_seen_by_its_representors(fake: FakePci) -> None:
    fake.igb()
    net = fake.sys / "class/net"
    (net / "enp1s0/phys_switch_id").write_text("abcd\n")
    for name, port in (("rep0", "pf0vf0"), ("uplink", "p0")):
        (net / name).mkdir()
        (net / name / "phys_switch_id").write_text("abcd\n")
        (net / name / "phys_port_name").write_text(port + "\n")
    assert PciSysfs(fake.sys, fake.proc).switchdev("enp1s0") == "VF representors rep0 (pf0vf0)"


def test_pci_ids() -> None:
    text = [
        "# comment",
        "8086  Intel Corporation",
        "\t10c9  82576 Gigabit Network Connection",
        "\t\t8086 a03c  Ethernet Server Adapter",
        "\t10ca  82576 Virtual Function",
        "8088  Beijing Wangxun",
        "\t10c9  not this one",
    ]
    assert parse_pci_ids(text, "8086", "10C9") == "Intel Corporation 82576 Gigabit Network Connection"
    assert parse_pci_ids(text, "8086", "ffff") == "Intel Corporation"
    assert parse_pci_ids(text, "1af4", "1000") == ""


# ---------------------------------------------------------------- frames


def test_test_frames_round_trip_with_and_without_a_tag() -> None:
    run = bytes(range(8))
    plain = packet.build_frame("02:00:00:00:cc:01", "02:00:00:00:01:02", run, "B", 7)
    assert len(plain) == 60 and plain[12:14] == b"\x88\xb5"
    assert packet.parse_frame(plain) == packet.TestFrame("02:00:00:00:cc:01", run, "B", 7)
    tagged = packet.build_frame("02:00:00:00:cc:01", "02:00:00:00:01:02", run, "D", 9, vlan=100, qos=5)
    assert tagged[12:16] == struct.pack("!HH", 0x8100, (5 << 13) | 100)
    assert packet.parse_frame(tagged) == packet.TestFrame("02:00:00:00:cc:01", run, "D", 9)
    assert packet.parse_frame(plain[:20]) is None
    assert packet.parse_frame(plain.replace(b"GFPROBE1", b"XXXXXXXX")) is None
    arp = bytes(12) + b"\x08\x06" + bytes(46)
    assert packet.parse_frame(arp) is None


def _run_bpf(prog: tuple[tuple[int, int, int, int], ...], frame: bytes) -> int:
    """The classic BPF subset the filter uses (ldh abs, jeq k, ret k)."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x28:
            acc = struct.unpack_from("!H", frame, k)[0] if k + 2 <= len(frame) else 0
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"opcode {code:#x}")


def test_the_socket_filter_takes_test_frames_only() -> None:
    run = bytes(8)
    plain = packet.build_frame("02:00:00:00:cc:01", "02:00:00:00:01:02", run, "A", 1)
    tagged = packet.build_frame("02:00:00:00:cc:01", "02:00:00:00:01:02", run, "A", 1, vlan=3)
    ipv4 = bytes(12) + b"\x08\x00" + bytes(46)
    vlan_ipv4 = bytes(12) + b"\x81\x00\x00\x03\x08\x00" + bytes(42)
    assert [_run_bpf(packet.BPF_TEST_FRAMES, f) > 0 for f in (plain, tagged, ipv4, vlan_ipv4)] == [
        True,
        True,
        False,
        False,
    ]


def test_ethtool_drvinfo_reply() -> None:
    raw = ethtool._DRVINFO.pack(
        3, b"igb", b"6.1.0-56-amd64", b"2.1.0", b"0000:01:00.0", b"", b"", 0, 0, 0, 0, 0
    )
    assert ethtool.parse_drvinfo(raw) == ethtool.DrvInfo("igb", "6.1.0-56-amd64", "2.1.0", "0000:01:00.0")


def test_macs() -> None:
    assert normalize_mac("02-00-5E-00-00-0A") == "02:00:5e:00:00:0a"
    with pytest.raises(ValueError, match="not a MAC address"):
        normalize_mac("02:00:5e")


def test_a_snapshot_survives_the_journal() -> None:
    s = Snapshot(
        pf=PfLink("enp1s0", 3, "02:00:00:00:01:01", False, False),
        nic=Nic("0000:01:00.0", "8086", "10c9", numvfs=2),
        vfs=(
            VfDevice(
                0, "0000:01:10.0", "igbvf", netdev=Netdev("enp1s0v0", 5, "9a:29:63:1c:a2:2d", 1500, False)
            ),
            VfDevice(1, "0000:01:10.2", "vfio-pci", "vfio-pci", vfio_users=(3,)),
        ),
        configs=(VfConfig(0), VfConfig(1, "02:11:22:33:44:55", 7, 1, True, False, 0)),
        kernel="6.1.0-56-amd64",
    )
    import json

    assert Snapshot.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_the_vf_list_of_a_real_igb_pf() -> None:
    """RTM_NEWLINK of an igb PF with IFLA_VFINFO_LIST, recorded in the igb lab
    (tests/data/record_probe_dumps.py): VF 0 with a MAC and VLAN 100 set over
    netlink, VF 1 with the MAC its driver chose."""
    ((typ, chunk),) = split_messages((DATA / "igb-pf.link.bin").read_bytes())
    assert typ == 16
    msg = ifinfmsg(chunk)
    msg.decode()
    assert parse_pf_link(msg) == PfLink("enp1s0", 3, "02:00:00:00:01:01", True, True, 0)
    assert parse_vf_configs(msg) == (
        VfConfig(0, "02:00:00:00:cc:01", 100, 0, spoofchk=True, trust=False, link_state=0),
        VfConfig(1, "2a:f1:96:c3:12:78", 0, 0, spoofchk=True, trust=False, link_state=0),
    )
