"""guestfail-probe's pure decisions: refusals, the steps of a run, the steps
that restore, and the verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest

from guestfail.core.errors import NotFound, UsageError
from guestfail.probe import decide
from guestfail.probe.decide import Count, Options, Step
from guestfail.probe.errors import InUse
from guestfail.probe.facts import ZERO_MAC, Netdev, Nic, PfLink, Sender, Snapshot, VfConfig, VfDevice

TEST_MAC = "02:00:00:00:cc:01"


def vfdev(i: int, driver: str = "", netdev: Netdev | None = None, users: tuple[int, ...] = ()) -> VfDevice:
    return VfDevice(i, f"0000:01:10.{2 * i}", driver=driver, netdev=netdev, vfio_users=users)


def nd(name: str = "enp1s0v0", mac: str = "9a:29:63:1c:a2:2d", up: bool = False, ifindex: int = 5) -> Netdev:
    return Netdev(name, ifindex, mac, 1500, up)


def snap(
    *vfs: VfDevice,
    configs: tuple[VfConfig, ...] = (),
    pf_up: bool = False,
    promiscuity: int = 0,
    master: str = "",
    switchdev: str = "",
    probe_links: tuple[str, ...] = (),
) -> Snapshot:
    vfs = vfs or (vfdev(0, "igbvf", nd()), vfdev(1, "igbvf", nd("enp1s0v1", "2a:f1:96:c3:12:78", ifindex=6)))
    return Snapshot(
        pf=PfLink(
            "enp1s0", 3, "02:00:00:00:01:01", pf_up, pf_up, promiscuity, master, "bridge" if master else ""
        ),
        nic=Nic(
            "0000:01:00.0", "8086", "10c9", driver="igb", numvfs=len(vfs), totalvfs=7, switchdev=switchdev
        ),
        vfs=vfs,
        configs=configs or tuple(VfConfig(v.index) for v in vfs),
        kernel="6.1.0-56-amd64",
        probe_links=probe_links,
    )


def opts(**kw: object) -> Options:
    base = {"pf": "enp1s0", "vf": 0, "mac": TEST_MAC, "sender": "enp2s0"}
    base.update(kw)
    return Options(**base)  # type: ignore[arg-type]


SENDER = Sender("enp2s0", "", "02:00:00:00:01:02", up=True, running=True)


# ---------------------------------------------------------------- check


def test_a_plain_setup_is_measurable() -> None:
    assert decide.check(snap(), opts(), SENDER) == []


@pytest.mark.parametrize(
    ("s", "o", "sender", "error", "text"),
    [
        (snap(vfdev(0)), opts(vf=3), SENDER, NotFound, "enp1s0 has 1 VFs (0-0): there is no VF 3"),
        (replace(snap(), nic=Nic(numvfs=0)), opts(), SENDER, UsageError, "has no VFs enabled"),
        (snap(), opts(mac="01:00:5e:00:00:01"), SENDER, UsageError, "must be a unicast address"),
        (snap(), opts(mac="02:00:00:00:01:01"), SENDER, UsageError, "is enp1s0's own MAC"),
        (snap(), opts(mac="9a:29:63:1c:a2:2d"), SENDER, UsageError, "is enp1s0v0's MAC"),
        (snap(), opts(mac="02:00:00:00:01:02"), SENDER, UsageError, "is the sender's own MAC"),
        (snap(), opts(vlan=5000), SENDER, UsageError, "--vlan 5000"),
        (
            snap(configs=(VfConfig(0, vlan=7), VfConfig(1))),
            opts(),
            SENDER,
            UsageError,
            "VF 0 has VLAN 7: give --vlan 7",
        ),
        (snap(), opts(), replace(SENDER, name="enp1s0"), UsageError, "--sender enp1s0 is the PF"),
        (snap(), opts(), replace(SENDER, name="enp1s0v0"), UsageError, "is the VF under test"),
        (snap(), opts(), replace(SENDER, running=False), UsageError, "sender enp2s0 is up without carrier"),
        (
            snap(probe_links=("gfprobe.100",)),
            opts(),
            SENDER,
            InUse,
            "gfprobe.100 exists on enp1s0: another guestfail-probe runs",
        ),
    ],
)
def test_refusals_name_the_culprit(
    s: Snapshot, o: Options, sender: Sender, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=None) as e:
        decide.check(s, o, sender)
    assert text in str(e.value)


def test_a_vf_assigned_to_a_running_vm_is_refused_even_with_force() -> None:
    s = snap(vfdev(0, "vfio-pci", users=(4242,)), vfdev(1))
    for force in (False, True):
        with pytest.raises(InUse, match=r"VF 0 \(0000:01:10.0\) is assigned to a running VM .*pid 4242"):
            decide.check(s, opts(force=force), SENDER)


def test_other_vfs_in_use_and_an_up_vf_need_force() -> None:
    busy = snap(vfdev(0), vfdev(1, "vfio-pci", users=(7,)))
    with pytest.raises(InUse, match=r"has VFs assigned to running VMs: VF 1 \(pid 7\)"):
        decide.check(busy, opts(), SENDER)
    assert decide.check(busy, opts(force=True), SENDER) == []
    up = snap(vfdev(0, "igbvf", nd(up=True)), vfdev(1))
    with pytest.raises(InUse, match="VF 0's netdev enp1s0v0 is up"):
        decide.check(up, opts(), SENDER)
    assert decide.check(up, opts(force=True), SENDER) == []


def test_what_makes_a_measurement_inconclusive() -> None:
    reasons = decide.check(snap(promiscuity=1, master="br0", switchdev="VF representors x"), opts(), SENDER)
    assert len(reasons) == 3
    assert reasons[0].startswith("enp1s0 is a port of bridge br0")
    assert reasons[1].startswith("enp1s0 is promiscuous (promiscuity 1")
    assert "switchdev mode (VF representors x)" in reasons[2]


# ---------------------------------------------------------------- steps


def actions(steps: list[Step]) -> list[str]:
    return [s.action if s.action != "measure" else s.state for s in steps]


def test_steps_for_a_vf_bound_to_its_host_driver_with_the_pf_down() -> None:
    steps = decide.probe_steps(snap(), opts(vlan=100))
    assert actions(steps) == [
        "pf_up",
        "vlan_add",
        "listen",
        "unbind",
        "A",
        "set_vf",
        "B",
        "bind",
        "C",
        "vf_up",
        "D",
    ]
    listen = steps[2]
    assert listen.name == "gfprobe.100"
    set_vf = steps[5]
    assert (set_vf.mac, set_vf.vlan, set_vf.qos) == (TEST_MAC, 100, 0)
    assert steps[7].driver == "igbvf"


def test_steps_for_a_vf_left_to_vfio_and_an_up_pf() -> None:
    s = snap(vfdev(0, "vfio-pci"), vfdev(1), pf_up=True)
    steps = decide.probe_steps(s, opts())
    assert actions(steps) == ["listen", "A", "set_vf", "B", "bind", "C", "vf_up", "D"]
    assert steps[2].vlan is None  # the VF's VLAN stays as it is
    bind = steps[4]
    assert bind.driver == "" and "the driver the kernel picks (unbinding vfio-pci)" in bind.text
    assert decide.probe_steps(s, opts(vf_driver="igbvf"))[4].driver == "igbvf"


# ---------------------------------------------------------------- restoring


def test_nothing_to_restore_when_nothing_differs() -> None:
    s = snap()
    assert decide.restore_steps(s, s, 0) == []


def test_restore_from_state_d_rebinds_with_the_pf_as_it_was() -> None:
    orig = snap()
    now = replace(
        orig,
        pf=replace(orig.pf, up=True, carrier=True),
        vfs=(vfdev(0, "igbvf", nd(mac=TEST_MAC, up=True, ifindex=9)), orig.vfs[1]),
        configs=(VfConfig(0, TEST_MAC, vlan=100), VfConfig(1)),
        probe_links=("gfprobe.100",),
    )
    steps = decide.restore_steps(orig, now, 0)
    assert [s.action for s in steps] == ["vlan_del", "unbind", "set_vf", "pf", "bind"]
    assert (steps[2].mac, steps[2].vlan) == (ZERO_MAC, 0)
    assert steps[3].up is False and steps[4].driver == "igbvf"
    # after the bind: the new netdev gets the old one's MAC back
    after = replace(orig, vfs=(vfdev(0, "igbvf", nd(mac="92:87:12:5d:cc:06", ifindex=10)), orig.vfs[1]))
    steps = decide.restore_steps(orig, after, 0, first_pass=False)
    assert [(s.action, s.mac) for s in steps] == [("netdev", "9a:29:63:1c:a2:2d")]


def test_restore_after_a_stop_in_state_a_only_rebinds() -> None:
    orig = snap()
    now = replace(orig, vfs=(vfdev(0), orig.vfs[1]))
    assert [s.action for s in decide.restore_steps(orig, now, 0)] == ["bind"]


def test_a_vf_without_driver_gets_its_settings_back_and_stays_without() -> None:
    orig = snap(vfdev(0), vfdev(1), configs=(VfConfig(0, "02:11:22:33:44:55", vlan=3, qos=2), VfConfig(1)))
    now = replace(
        orig,
        vfs=(vfdev(0, "igbvf", nd(mac=TEST_MAC)), orig.vfs[1]),
        configs=(VfConfig(0, TEST_MAC), VfConfig(1)),
    )
    steps = decide.restore_steps(orig, now, 0)
    assert [s.action for s in steps] == ["unbind", "set_vf"]
    assert (steps[1].mac, steps[1].vlan, steps[1].qos) == ("02:11:22:33:44:55", 3, 2)


def test_a_mac_the_vf_driver_chose_is_cleared_then_given_to_the_netdev() -> None:
    """igb: IFLA_VF_MAC pins a MAC (the VF may not change it any more); a MAC
    the VF's driver chose comes back through the VF's netdev instead."""
    chosen = "9a:29:63:1c:a2:2d"
    orig = snap(vfdev(0, "igbvf", nd(mac=chosen)), vfdev(1), configs=(VfConfig(0, chosen), VfConfig(1)))
    assert decide.driver_chose_mac(orig.vfs[0], orig.configs[0])
    now = replace(orig, vfs=(vfdev(0), orig.vfs[1]), configs=(VfConfig(0, TEST_MAC), VfConfig(1)))
    first = decide.restore_steps(orig, now, 0)
    assert [(s.action, s.mac) for s in first if s.action == "set_vf"] == [("set_vf", ZERO_MAC)]
    later = decide.restore_steps(orig, now, 0, first_pass=False)
    assert [(s.action, s.mac) for s in later if s.action == "set_vf"] == [("set_vf", chosen)]


def test_restore_renames_and_brings_up_an_up_vf_netdev_last() -> None:
    orig = snap(vfdev(0, "igbvf", nd(up=True)), vfdev(1))
    now = replace(
        orig, vfs=(vfdev(0, "igbvf", Netdev("eth0", 12, "9a:29:63:1c:a2:2d", 9000, False)), orig.vfs[1])
    )
    steps = decide.restore_steps(orig, now, 0)
    assert [(s.action, s.name, s.mtu, s.up) for s in steps] == [
        ("netdev", "enp1s0v0", 0, None),
        ("netdev", "", 1500, None),
        ("netdev", "", 0, True),
    ]


# ---------------------------------------------------------------- verdict


def c(state: str, pf: int, vf: int | None = None, sent: int = 50) -> Count:
    return Count(state, sent, pf, vf)


@pytest.mark.parametrize(
    ("counts", "kind", "steered", "text"),
    [
        ([c("A", 50), c("B", 0), c("C", 0), c("D", 0, 50)], "early", "B", "the PF got none of the 50"),
        ([c("A", 50), c("B", 50), c("C", 0), c("D", 0, 50)], "late", "C", "once its driver was bound"),
        ([c("A", 50), c("B", 49), c("C", 50), c("D", 0, 50)], "late", "D", "once it was up"),
        (
            [c("A", 50), c("B", 50), c("C", 50), c("D", 50, 50)],
            "late",
            "",
            "kept getting them in every state",
        ),
        ([c("A", 50), c("B", 50)], "late", "", "kept getting them"),
        ([c("A", 0), c("B", 0)], "inconclusive", "", "the sender does not reach the PF"),
        ([c("A", 30), c("B", 0)], "inconclusive", "", "only 30 of 50"),
        ([c("A", 50), c("B", 20)], "inconclusive", "", "run again with a longer --settle"),
        ([c("A", 50)], "inconclusive", "", "before states A and B were measured"),
    ],
)
def test_verdict(counts: list[Count], kind: str, steered: str, text: str) -> None:
    v = decide.verdict(counts)
    assert (v.kind, v.steered_at) == (kind, steered)
    assert text in v.reason


def test_reasons_found_before_make_it_inconclusive() -> None:
    v = decide.verdict([c("A", 50), c("B", 0)], ("enp1s0 is promiscuous",))
    assert (v.kind, v.reason) == ("inconclusive", "enp1s0 is promiscuous")


def test_level() -> None:
    assert [decide.level(n, 50) for n in (None, 0, 1, 44, 45, 50)] == [
        "-",
        "none",
        "some",
        "some",
        "all",
        "all",
    ]


def test_a_mac_the_vf_driver_told_the_pf_later_is_not_a_change() -> None:
    """igb: VFs whose driver started while the PF could not hear it show
    00:00:00:00:00:00; started again with the PF up, the driver tells the PF
    its MAC.  Unset by an administrator before and after, the same netdev
    MAC: restored, with a note."""
    mine = "9a:29:63:1c:a2:2d"
    orig = snap(vfdev(0, "igbvf", nd(mac=mine)), vfdev(1), pf_up=True)
    now = replace(
        orig,
        vfs=(vfdev(0, "igbvf", nd(mac=mine, ifindex=12)), orig.vfs[1]),
        configs=(VfConfig(0, mine), VfConfig(1)),
    )
    assert decide.restore_steps(orig, now, 0) == []
    (note,) = decide.restore_notes(orig, now, 0)
    assert "shows VF 0's MAC as 9a:29:63:1c:a2:2d, where it showed 00:00:00:00:00:00" in note
    # another MAC on the netdev, or another driver: a difference to put back
    other = replace(
        now,
        vfs=(vfdev(0, "igbvf", nd(mac=TEST_MAC)), orig.vfs[1]),
        configs=(VfConfig(0, TEST_MAC), VfConfig(1)),
    )
    assert [s.action for s in decide.restore_steps(orig, other, 0)] == ["unbind", "set_vf", "bind"]
    assert decide.restore_notes(orig, other, 0) == []
