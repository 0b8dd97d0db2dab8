from __future__ import annotations

import pytest

from lab import topology
from lab.topology import Backend, Nic, Port, Topology, TopologyError, device_props, qemu_args


def backends(topo: Topology) -> dict[str, Backend]:
    return {n.id: Backend(40000 + i, 50000 + i) for i, n in enumerate(topo.nics)}


def test_every_nic_is_a_udp_socket_on_loopback_and_nothing_else() -> None:
    topo = topology.basic()
    args = qemu_args(topo, backends(topo), "/x/qmp.sock", "/x/ctl.sock")
    netdevs = [args[i + 1] for i, a in enumerate(args) if a == "-netdev"]
    assert len(netdevs) == 3
    for nd in netdevs:
        assert nd.startswith("dgram,")
        assert "local.host=127.0.0.1" in nd and "remote.host=127.0.0.1" in nd
    joined = " ".join(args)
    assert "user" not in [nd.split(",")[0] for nd in netdevs]
    assert "hostfwd" not in joined and "-nic" not in args
    # the VF is not there at boot: its backend is, its device comes over QMP
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert not any("id=vf0" in d for d in devices)
    assert any(d.startswith("virtio-net-pci,") and "id=sb0" in d for d in devices)


def test_root_ports_sit_at_fixed_addresses() -> None:
    topo = topology.basic()
    args = qemu_args(topo, backends(topo), "/q", "/c")
    ports = [a for a in args if a.startswith("pcie-root-port")]
    assert ports[0] == "pcie-root-port,id=p1,chassis=1,slot=11,addr=0x10.0x0,multifunction=on"
    assert ports[1] == "pcie-root-port,id=p2,chassis=2,slot=5001,addr=0x10.0x1"


def test_native_hotplug_and_qemu_failover() -> None:
    topo = topology.basic(hotplug="native", qemu_failover=True)
    args = qemu_args(topo, backends(topo), "/q", "/c")
    assert "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off" in args
    assert device_props(topo, topo.nic("sb0"))["failover"] == "on"
    assert device_props(topo, topo.nic("vf0"))["failover_pair_id"] == "sb0"
    assert device_props(topo, topo.nic("vf0"), "p3", "02:00:00:00:00:42")["bus"] == "p3"


SB = Nic("a", "standby", "02:00:00:00:00:01", "p1")


@pytest.mark.parametrize(
    ("topo", "problem"),
    [
        (Topology((Port("p1", 1), Port("p1", 2)), ()), "duplicate ids"),
        (Topology((Port("p1", 1), Port("p2", 1)), ()), "share a slot"),
        (Topology((Port("p1", 1),), (Nic("a", "standby", "02:00:00:00:00:01", "p9"),)), "no port"),
        (Topology((Port("p1", 1),), (Nic("a", "standby", "02:00:00:00:00:0G", "p1"),)), "bad MAC"),
        (
            Topology(
                (Port("p1", 1),),
                (
                    Nic("a", "standby", "02:00:00:00:00:01", "p1"),
                    Nic("b", "other", "02:00:00:00:00:02", "p1"),
                ),
            ),
            "on port p1",
        ),
        (
            Topology((Port("p1", 1),), (Nic("a", "standby", "02:00:00:00:00:01", "p1", at_boot=False),)),
            "only primaries",
        ),
    ],
)
def test_inconsistent_topologies_are_refused(topo: Topology, problem: str) -> None:
    with pytest.raises(TopologyError, match=problem):
        topo.validate()


def test_a_switch_sits_on_a_root_port_with_its_downstream_ports() -> None:
    """The topology rule's lab: root ports keep their fixed addresses (the
    switch's downstream ports do not count among them)."""
    topo = topology.switched(extra_vf=True, vf_at_boot=True)
    args = qemu_args(topo, backends(topo), "/q", "/c")
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert "pcie-root-port,id=p1,chassis=1,slot=30,addr=0x10.0x0,multifunction=on" in devices
    assert "pcie-root-port,id=p5,chassis=2,slot=21,addr=0x10.0x1" in devices
    assert "x3130-upstream,id=sw0,bus=p1" in devices
    downstream = [d for d in devices if d.startswith("xio3130-downstream")]
    assert downstream == [
        f"xio3130-downstream,id=d{i},bus=sw0,chassis={99 + i},slot={30 + i}" for i in (1, 2, 3)
    ]
    assert [p.id for p in topo.root_ports()] == ["p1", "p5"]
    with pytest.raises(TopologyError, match="native hot-plug only"):
        Topology(topo.ports, topo.nics, switches=topo.switches).validate()
    with pytest.raises(TopologyError, match="no switch"):
        Topology((Port("p1", 1), Port("d1", 2, switch="sw9")), (), hotplug="native").validate()
