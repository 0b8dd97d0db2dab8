"""guestfail-probe against a real driver: a "host" guest with QEMU 10's `igb`
(an emulated Intel 82576 with SR-IOV) under Linux's own igb and igbvf
drivers, VFs made through sriov_numvfs.

One guest for every scenario (a TCG boot costs a minute): QEMU 10 comes
from Debian 13's packages (lab/qemu10.py, built once with lab/rootfs.py).
The sender is a second NIC of the guest (virtio-net); the lab's peer is the
wire between it and the igb port (it hands every frame from one to the
other), so the test frames come in from outside the NIC, as from a switch.

Every scenario compares `ip -d link` (the PF's VF list included) and the
VFs' sysfs (driver, driver_override) before and after the probe.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import qemu10
from lab.sriov_model import differences
from lab.topology import Nic, Port, Topology
from lab.vm import Lab

REPO = Path(__file__).resolve().parents[2]
IGB_MAC = "02:00:00:00:01:01"
TX_MAC = "02:00:00:00:01:02"
NUMVFS = 2


def topology() -> Topology:
    return Topology(
        ports=(Port("p1", 11), Port("p2", 12)),
        nics=(Nic("pf", "other", IGB_MAC, "p1", model="igb"), Nic("tx", "other", TX_MAC, "p2")),
    )


class Host:
    """The guest as a hypervisor host: its igb PF, its sender NIC."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pf = lab.ifname("pf")
        self.tx = lab.ifname("tx")

    def probe(self, *args: str, timeout: float = 300) -> Any:
        argv = [sys.executable, "-m", "guestfail.probe", "--pf", self.pf, "--sender", self.tx, *args]
        return self.lab.run(*argv, check=False, timeout=timeout)

    def state(self) -> dict[str, Any]:
        """`ip -d link` without ifindexes (a rebound VF's netdev is a new
        one), and each VF's driver and driver_override."""
        links = json.loads(self.lab.run("ip", "-d", "-j", "link", "show").out)
        for link in links:
            link.pop("ifindex", None)
            link.pop("link_index", None)
            # igbvf gives a new netdev a random permanent MAC (documented in
            # guestfail-probe(8)); its MAC proper is compared
            link.pop("permaddr", None)
        script = (
            f"cd /sys/class/net/{self.pf}/device && echo numvfs=$(cat sriov_numvfs) && "
            'for v in virtfn*; do echo "$v $(basename "$(readlink $v)") '
            'driver=$(basename "$(readlink $v/driver)") override=$(cat $v/driver_override)"; done'
        )
        sysfs = self.lab.run("sh", "-c", script).out.splitlines()
        return {"links": links, "sysfs": sysfs}


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    wrapper = qemu10.wrapper()  # builds Debian 13's QEMU the first time (about a minute)
    with Lab(topology(), name="probe-igb", qemu_bin=str(wrapper)) as lab:

        def wire(path: str, _parsed: Any, raw: bytes) -> None:
            lab.peer.send_frame("pf" if path == "tx" else "tx", raw)

        lab.peer.on_frame(wire)
        h = Host(lab)
        lab.run("ip", "link", "set", h.tx, "up")
        lab.wait_net([{"link": h.tx, "attr": "operstate", "eq": "up"}], what=f"{h.tx} up")
        lab.run("sh", "-c", f"echo {NUMVFS} > /sys/class/net/{h.pf}/device/sriov_numvfs")
        lab.run("udevadm", "settle", "--timeout=60", timeout=90)
        yield h


def test_igb_is_late_the_pf_keeps_the_frames_and_all_is_restored(host: Host) -> None:
    """The emulated 82576 delivers a MAC that is in the PF's and a VF's
    receive-address entries to both pools (QEMU's igb_receive_assign ORs
    the pools of every matching entry), so the PF keeps getting the frames
    in every state: late, never steered away.  The verdict then reaches the
    PF's netdev as a udev property through the generated hwdb file."""
    before = host.state()
    r = host.probe("--vf", "0", "--report", host.lab.guest_path("igb.json"))
    assert r.rc == 0, r.err
    doc = json.loads((host.lab.workdir / "igb.json").read_text())
    print(r.out, f"(the probe took {doc['seconds']} s in the guest)")
    assert doc["nic"]["driver"] == "igb" and (doc["nic"]["vendor"], doc["nic"]["device"]) == ("8086", "10c9")
    assert doc["vf"]["driver_before"] == "igbvf" and doc["vf"]["driver_in_c"] == "igbvf"
    assert doc["verdict"]["kind"] == "late" and doc["verdict"]["steered_at"] == ""
    states = {s["state"]: (s["pf"], s["vf"]) for s in doc["states"]}
    assert states == {"A": (50, None), "B": (50, None), "C": (50, None), "D": (50, 50)}
    assert differences(before, host.state()) == []

    # the verdict carried to the host's NIC: a udev property from the hwdb
    hwdb = host.lab.run(
        sys.executable, "-m", "guestfail.probe", "--udev-hwdb", host.lab.guest_path("igb.json")
    )
    assert "pci:v00008086d000010C9" in hwdb.out
    host.lab.write_file("/etc/udev/hwdb.d/70-guestfail-probe.hwdb", hwdb.out)
    host.lab.run("systemd-hwdb", "update", "--strict")
    host.lab.run("udevadm", "control", "--reload")
    host.lab.run("udevadm", "trigger", "--settle", "--action=change", f"/sys/class/net/{host.pf}", timeout=90)
    props = host.lab.run("udevadm", "info", "--query=property", f"/sys/class/net/{host.pf}").out
    assert "GUESTFAIL_VF_MAC_FILTER=late" in props.splitlines(), props


def test_igb_with_a_vlan(host: Host) -> None:
    """--vlan: the VF gets a port VLAN (IFLA_VF_VLAN), the PF a VLAN device
    (the guest kernel has 8021q), the frames carry the tag; VLAN 0 again after."""
    before = host.state()
    r = host.probe("--vf", "1", "--vlan", "100", "--json")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    assert doc["verdict"]["kind"] == "late"
    assert [s["pf"] for s in doc["states"]] == [50, 50, 50, 50]
    assert differences(before, host.state()) == []


def test_igb_with_debians_python_and_pyroute2(host: Host) -> None:
    """The VF settings over netlink with Debian 12's pyroute2 0.7.2 as well
    (the package runs on the distribution's libraries)."""
    before = host.state()
    argv = ["/usr/bin/python3", "-m", "guestfail.probe", "--pf", host.pf, "--sender", host.tx]
    r = host.lab.run(*argv, "--vf", "1", "--json", env={"PYTHONPATH": str(REPO)}, check=False, timeout=300)
    assert r.rc == 0, r.err
    assert json.loads(r.out)["verdict"]["kind"] == "late"
    assert differences(before, host.state()) == []


def test_igb_sigterm_mid_probe_restores(host: Host) -> None:
    before = host.state()
    argv = [sys.executable, "-m", "guestfail.probe", "--pf", host.pf, "--vf", "0", "--sender", host.tx]
    host.lab.spawn("probe-term", [*argv, "--frames", "2000"])
    host.lab.wait_file(host.lab.guest_path("probe-term.log"), contains="C: VF driver bound", timeout=120)
    host.lab.signal("probe-term", "SIGTERM")
    assert host.lab.wait_proc("probe-term", timeout=120) == 143, host.lab.log_tail("probe-term")
    assert "stopped by SIGTERM" in host.lab.log_tail("probe-term", 60)
    assert differences(before, host.state()) == []


def test_igb_from_another_vf_through_the_nics_own_switch(host: Host) -> None:
    """The sender is VF 1 of the same PF (a VM next door): its frames to the
    test MAC are switched inside the NIC (the 82576's VM-to-VM loopback),
    never reach the wire, and still land on the PF in every state."""
    lab = host.lab
    # as on a host: the PF up (its reset done: it has a link) first, then its
    # VFs (their drivers then tell the PF the MACs they chose)
    lab.run("ip", "link", "set", host.pf, "up")
    lab.wait_net([{"link": host.pf, "attr": "operstate", "eq": "up"}], timeout=60, what=f"{host.pf} up")
    numvfs = f"/sys/class/net/{host.pf}/device/sriov_numvfs"
    lab.run("sh", "-c", f"echo 0 > {numvfs} && echo {NUMVFS} > {numvfs}")
    lab.run("udevadm", "settle", "--timeout=60", timeout=90)
    vf1 = lab.run("ls", f"/sys/class/net/{host.pf}/device/virtfn1/net").out.split()[0]
    lab.run("ip", "link", "set", vf1, "up")
    try:
        # operstate follows the carrier a moment later (linkwatch): wait for it
        up = [{"link": n, "attr": "operstate", "eq": "up"} for n in (host.pf, vf1)]
        lab.wait_net(up, timeout=60, what=f"{host.pf} and {vf1} up")
        before = host.state()
        on_wire: list[str] = []
        stop = lab.peer.on_frame(lambda path, p, raw: on_wire.append(p.dst_mac) if path == "pf" else None)
        r = lab.run(
            sys.executable,
            "-m",
            "guestfail.probe",
            "--pf",
            host.pf,
            "--vf",
            "0",
            "--sender",
            vf1,
            "--json",
            check=False,
            timeout=300,
        )
        assert r.rc == 0, r.err
        doc = json.loads(r.out)
        assert doc["verdict"]["kind"] == "late", doc["verdict"]
        assert [s["pf"] for s in doc["states"]] == [50, 50, 50, 50]
        stop()
        assert on_wire.count(doc["test"]["mac"]) == 0, "test frames went out on the wire"
        # VFs made right after the PF came up: igbvf could not tell the PF its
        # MAC (the list showed 00:00:00:00:00:00); started again, it does.  The
        # probe says so in a note, and that is the only difference.
        vf0_mac = lab.run(
            "sh", "-c", f"cat /sys/class/net/{host.pf}/device/virtfn0/net/*/address"
        ).out.strip()
        told = f".links[{host.pf}].vfinfo_list[0].address: '00:00:00:00:00:00' -> '{vf0_mac}'"
        diffs = differences(before, host.state())
        if doc["restore_notes"]:
            assert "its driver (igbvf) told the PF the MAC it uses" in doc["restore_notes"][0]
            assert diffs == [told]
        else:
            assert diffs == []
    finally:
        lab.run("ip", "link", "set", vf1, "down")
        lab.run("ip", "link", "set", host.pf, "down")
