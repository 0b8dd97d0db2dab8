"""The topology rule: a standby and a primary behind one PCI bridge are a
pair, on fake sysfs trees shaped like the lab's PCIe switch (a root port, a
switch's upstream port with its own ID, downstream ports with slots); what
the reconciler then builds on the in-memory kernel when the VF's MAC differs
(set where the VF allows it, else fail_over_mac=active)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from guestfail.core.config import Config, Selector, parse
from guestfail.core.errors import ConfigError
from guestfail.core.match import MatchResult, claims, match
from guestfail.core.model import Bridge, Link, Snapshot
from guestfail.core.plan import plan_pair, spec_for
from guestfail.core.records import MAC_FOLLOWS, MAC_SET, PairRecord
from guestfail.core.steps import Enslave, SetMac
from guestfail.core.undo import plan_release
from guestfail.system.netlink import Dump
from guestfail.system.observe import assemble
from guestfail.system.sysfs import Sysfs
from tests.fakesys import FakeSys

from .test_reconcile import World

SBY = "02:00:00:00:00:11"
VF = "02:00:00:00:00:22"
VF2 = "02:00:00:00:00:33"
RP = ("0000:00:12.0", "1b36:000c")  # a root port
USP = ("0000:01:00.0", "104c:8232")  # the switch's upstream port: the marked bridge
DSP = {n: (f"0000:02:0{n}.0", "104c:8233") for n in (1, 2, 3)}  # its downstream ports
SWITCH = f'[[topology]]\nbridge = {{ id = "{USP[1]}" }}\n'


def behind(port: int) -> tuple[tuple[str, str], ...]:
    return (RP, USP, DSP[port])


def nic(ifindex: int, name: str, mac: str) -> Link:
    return Link(ifindex=ifindex, name=name, mac=mac, perm_mac=mac)


class Guest:
    """A fake sysfs tree and the links netlink would report."""

    def __init__(self, tmp_path: Path) -> None:
        self.fs = FakeSys(tmp_path)
        self.sysfs = Sysfs(tmp_path)
        self.links: list[Link] = []

    def standby(self, name: str, mac: str, port: int, pci: str = "0000:03:00.0") -> None:
        self.fs.virtio_nic(name, pci, bridges=behind(port))
        self.links.append(nic(len(self.links) + 1, name, mac))

    def vf(self, name: str, mac: str, port: int, slot: str = "") -> None:
        pci = f"0000:0{port + 2}:00.0"
        self.fs.pci_nic(name, pci, "vmxnet3", slot=slot or None, bridges=behind(port))
        self.links.append(nic(len(self.links) + 1, name, mac))

    def elsewhere(self, name: str, mac: str) -> None:
        """A NIC on a root port of its own."""
        self.fs.pci_nic(name, "0000:09:00.0", "vmxnet3", bridges=(("0000:00:13.0", "1b36:000c"),))
        self.links.append(nic(len(self.links) + 1, name, mac))

    def snap(self) -> Snapshot:
        return assemble(Dump(self.links, [], []), self.sysfs)

    def match(self, config: str = "") -> tuple[Snapshot, MatchResult]:
        snap = self.snap()
        return snap, match(parse(config or '[agent]\nmatch = ["topology"]\n'), snap)


def pairs(snap: Snapshot, r: MatchResult) -> list[tuple[str, str, str]]:
    def name(i: int | None) -> str:
        link = snap.get(i)
        return link.name if link is not None else "-"

    return [(name(p.standby), name(p.primary), p.rule) for p in r.pairings]


def refused(snap: Snapshot, r: MatchResult) -> list[tuple[list[str], str]]:
    return [([snap.links[i].name for i in x.links], x.reason) for x in r.refusals]


# ------------------------------------------------------------------ sysfs


def test_sysfs_reads_the_bridges_above_a_nic_nearest_first(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2, slot="32")
    snap = g.snap()
    sby, vf = snap.by_name("ens1"), snap.by_name("ens32")
    assert sby is not None and vf is not None
    assert sby.bridges == (Bridge(*DSP[1]), Bridge(*USP), Bridge(*RP))
    assert vf.bridges == (Bridge(*DSP[2]), Bridge(*USP), Bridge(*RP))
    assert g.sysfs.slot_bridges() == {"0000:04:00": (DSP[2][0], USP[0], RP[0])}


# ------------------------------------------------------------------ matching


def test_a_standby_and_a_vf_behind_one_switch_pair_with_different_macs(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    snap, r = g.match()
    assert pairs(snap, r) == [("ens1", "ens32", "topology")]
    (p,) = r.pairings
    assert p.reason == f"ens1 and ens32 sit behind bridge {USP[0]} ({USP[1]}); MACs differ ({VF} vs {SBY})"
    assert p.set_mac and not p.require_same_mac
    assert not r.refusals and r.bridges == [USP[0]]


def test_bridges_named_by_id_or_address_and_no_others(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    for sel in (f'id = "{USP[1]}"', f'pci = "{USP[0]}"'):
        snap, r = g.match(f'[agent]\nmatch = ["topology"]\n[[topology]]\nbridge = {{ {sel} }}\n')
        assert pairs(snap, r) == [("ens1", "ens32", "topology")], sel
        assert USP[0] in r.pairings[0].reason
    # a bridge with another ID: the switch is nobody's mark
    snap, r = g.match('[agent]\nmatch = ["topology"]\n[[topology]]\nbridge = { id = "1b36:000a" }\n')
    assert pairs(snap, r) == []
    assert [(snap.links[u.link].name, u.reason) for u in r.unpaired if u.role == "primary"] == [
        ("ens32", "no rule matches it")
    ]


def test_nics_on_root_ports_of_their_own_are_no_topology_pair(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.elsewhere("ens9", VF)
    snap, r = g.match()
    assert pairs(snap, r) == [] and not r.refusals


def test_three_nics_behind_one_bridge_are_refused_with_the_reason(tmp_path: Path) -> None:
    """... and the standby stays the bridge's: a NIC elsewhere with its MAC
    is not paired with it by a later rule."""
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    g.vf("ens33", VF2, 3)
    g.elsewhere("ens9", SBY)
    snap, r = g.match('[agent]\nmatch = ["topology", "mac"]\n')
    assert pairs(snap, r) == []
    assert refused(snap, r) == [
        (
            ["ens1", "ens32", "ens33"],
            f"bridge {USP[0]} ({USP[1]}) has 1 standbys and 2 primaries behind it (ens1, ens32, ens33): "
            "which two belong together is not clear",
        ),
        (["ens9"], f"ens1 is reserved by the topology rule (behind bridge {USP[0]} ({USP[1]}))"),
    ]


def test_a_built_topology_pair_stays_when_a_third_nic_arrives(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    g.vf("ens33", VF2, 3)
    master = Link(ifindex=9, name="ens1m", kind="bond", ifalias="guestfail:1 key=pci-0000:03:00.0")
    g.links = [
        Link(ifindex=1, name="ens1", mac=SBY, perm_mac=SBY, master=9),
        Link(ifindex=2, name="ens32", mac=SBY, perm_mac=VF, master=9),
        nic(3, "ens33", VF2),
    ]
    snap = assemble(Dump([*g.links, master], [], []), g.sysfs)
    r = match(parse('[agent]\nmatch = ["topology"]\n'), snap)
    assert pairs(snap, r) == [("ens1", "ens32", "topology")]
    assert refused(snap, r) == [(["ens33"], f"bridge {USP[0]} ({USP[1]}) already pairs ens1 with ens32")]


def test_rule_order_decides_which_nic_takes_the_standby(tmp_path: Path) -> None:
    """A third NIC elsewhere carries the standby's MAC: with topology first it
    is not taken (the standby is the bridge's), with mac first it is."""
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    g.elsewhere("ens9", SBY)
    snap, r = g.match('[agent]\nmatch = ["topology", "mac"]\n')
    assert pairs(snap, r) == [("ens1", "ens32", "topology")]
    assert refused(snap, r) == [(["ens9"], "ens1 is already paired with ens32 by topology")]

    snap, r = g.match('[agent]\nmatch = ["mac", "topology"]\n')
    assert pairs(snap, r) == [("ens1", "ens9", "mac")]
    assert refused(snap, r) == [(["ens32"], "ens1 is already paired with ens9 by mac")]


def test_a_marked_bridge_reserves_its_standby_before_the_vf_comes(tmp_path: Path) -> None:
    """The VF is not plugged yet: the MAC twin elsewhere still may not take
    the standby, and the bridge's free slots are claimed for udev."""
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.elsewhere("ens9", SBY)
    g.fs.slot("33", "0000:05:00", tmp_path / "devices" / "pci0000:00" / RP[0] / USP[0] / DSP[3][0])
    cfg = parse('[agent]\nmatch = ["topology", "mac"]\nmaster_policy = "from-start"\n' + SWITCH)
    snap = g.snap()
    r = match(cfg, snap)
    assert pairs(snap, r) == [("ens1", "-", "topology")]
    assert not r.pairings[0].require_same_mac  # its bond gets fail_over_mac=active
    assert refused(snap, r) == [
        (["ens9"], f"ens1 is reserved by the topology rule (behind bridge {USP[0]} ({USP[1]}))")
    ]
    got = claims(cfg, snap, r, g.sysfs.pci_slots(), g.sysfs.slot_bridges())
    assert {f"pci-0000:05:00.{fn}" for fn in range(8)} <= got


# ------------------------------------------------------------------ config


def test_config_reads_the_bridges() -> None:
    cfg = parse(
        '[agent]\nmatch = ["topology", "mac"]\n'
        '[[topology]]\nbridge = { id = "104C:8232" }\n[[topology]]\nbridge = { pci = "0000:00:1C.0" }\n'
    )
    assert cfg.rules == ("topology", "mac")
    assert cfg.bridges == (Selector("id", "104c:8232"), Selector("pci", "0000:00:1c.0"))
    assert Config().rules == ("serial", "mac")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[[topology]]\nbridge = { id = "1b36" }',
            "topology[0].bridge.id: '1b36' is not a PCI vendor:device ID",
        ),
        ("[[topology]]\nbridge = { slot = 3 }", "topology[0].bridge.slot: unknown key"),
        ("[[topology]]\n", "topology[0].bridge: is required"),
        (
            '[agent]\nmatch = ["topology"]\n[[topology]]\nbridge = { id = "1b36:000a" }\n'
            '[[topology]]\nbridge = { id = "1b36:000a" }',
            "topology[1].bridge: same bridge as topology[0]",
        ),
        ('[agent]\nmatch = ["topolgy"]', "agent.match[0]: must be one of serial, mac, topology"),
    ],
)
def test_bad_topology_config_names_the_culprit(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert problem in str(e.value)


# ------------------------------------------------------------------ plan


def test_the_plan_gives_the_vf_the_standbys_mac_before_it_joins(tmp_path: Path) -> None:
    g = Guest(tmp_path)
    g.standby("ens1", SBY, 1)
    g.vf("ens32", VF, 2)
    snap, r = g.match()
    cfg = parse('[agent]\nmatch = ["topology"]\n')
    spec = spec_for(cfg, r.pairings[0], snap)
    assert spec.fail_over_mac == "active" and spec.mac == SBY
    steps = plan_pair(cfg, spec, snap).steps
    vf = snap.by_name("ens32")
    assert vf is not None
    i = steps.index(SetMac(vf.ifindex, SBY))
    assert steps[i + 1] == Enslave(vf.ifindex, steps[i + 1].master)  # type: ignore[union-attr]
    # a VF that refused is not asked again: the pair goes on without it
    again = plan_pair(cfg, spec, snap, mac_refused=frozenset({vf.ifindex})).steps
    assert not [s for s in again if isinstance(s, SetMac)]


# ------------------------------------------------------------------ on the in-memory kernel


def topology_world(tmp_path: Path, locked: bool) -> World:
    w = World(tmp_path, 'match = ["topology"]\n')
    w.fs.virtio_nic("ens11", "0000:03:00.0", bridges=behind(1))
    w.k.add("ens11", mac=SBY)
    w.fs.pci_nic("ens32", "0000:04:00.0", "iavf", bridges=behind(2))
    vf = w.k.add("ens32", mac=VF)
    w.k.links[vf].mac_locked = locked
    return w


def record(w: World) -> PairRecord:
    out = w.run()
    assert out.verified and not out.errors, out.errors
    (p,) = out.result.pairings
    rec = PairRecord(p.key)
    rec.observe(p, out.snap, out.snap.by_name("ens11"))
    return rec


def test_a_vf_that_allows_it_gets_the_standbys_mac(tmp_path: Path) -> None:
    w = topology_world(tmp_path, locked=False)
    rec = record(w)
    assert (rec.rule, rec.mac) == ("topology", MAC_SET)
    assert w.link("ens11npf").mac == SBY
    master = w.link("ens11")
    assert master.mac == SBY and master.bond["fail_over_mac"] == 1
    assert master.bond["active_slave"] == w.link("ens11npf").ifindex
    assert rec.to_json()["mac"] == "set"


def test_an_untrusted_vf_is_paired_anyway_with_fail_over_mac_active(tmp_path: Path) -> None:
    w = topology_world(tmp_path, locked=True)
    rec = record(w)  # verified: the refused MAC is not asked for again and again
    assert (rec.rule, rec.mac) == ("topology", MAC_FOLLOWS)
    assert w.link("ens11npf").mac == VF
    master = w.link("ens11")
    assert master.bond["fail_over_mac"] == 1
    assert w.slaves("ens11") == {"ens11nsby", "ens11npf"}
    assert not [r for r in w.k.requests if r.startswith("set the MAC")]


def test_release_gives_the_vf_its_own_mac_back(tmp_path: Path) -> None:
    w = topology_world(tmp_path, locked=False)
    assert w.run().verified
    snap = assemble(w.k.dump(), Sysfs(tmp_path / "sys"))
    m = snap.by_name("ens11")
    vf = snap.by_name("ens11npf")
    assert m is not None and vf is not None and vf.mac == SBY
    assert SetMac(vf.ifindex, VF) in plan_release(m, snap)


def test_a_vf_plugged_into_the_bridges_free_slot_pairs_and_is_signalled(tmp_path: Path) -> None:
    """The daemon with a marked switch: the standby waits alone behind it;
    a VF with another MAC plugged into a free slot is paired by topology,
    given the standby's MAC, and the Paired signal says by which rule."""
    from guestfail.system.linkevents import LinkEvent

    from .test_daemon import daemon, reconciled

    w = World(tmp_path, 'match = ["topology", "mac"]\n' + SWITCH)
    w.fs.virtio_nic("ens11", "0000:03:00.0", bridges=behind(1))
    w.k.add("ens11", mac=SBY)
    port = tmp_path / "sys" / "devices" / "pci0000:00" / RP[0] / USP[0] / DSP[3][0]
    w.fs.slot("33", "0000:05:00", port)  # the free slot
    seen: list[tuple[str, dict[str, object]]] = []

    async def go() -> None:
        async with daemon(w) as d:
            d.subscribe(lambda name, payload: seen.append((name, payload)))
            assert d.status()["pairs"] == []
            # udev marks whatever comes into the free slot unmanaged at once
            assert (w.state / "claims" / "pci-0000:05:00.0").exists()
            n = d.reconciling.runs
            w.fs.pci_nic("ens33", "0000:05:00.0", "iavf", slot="33", bridges=behind(3))
            vf = w.k.add("ens33", mac=VF)
            link = w.k.get_link(vf)
            assert link is not None
            d.on_link_event(LinkEvent(True, link, 1))  # udev's "add" in the real daemon
            d.request_reconcile("udev add ens33")
            await reconciled(d, n)
            (pair,) = d.status()["pairs"]
            assert (pair["rule"], pair["mac"], pair["primary"], pair["slot"]) == (
                "topology",
                "set",
                "ens11npf",
                "33",
            )
            assert w.link("ens11npf").mac == SBY

    asyncio.run(go())
    paired = [p for name, p in seen if name == "Paired"]
    assert paired and paired[-1]["rule"] == "topology" and paired[-1]["primary"] == "ens11npf"
    assert "behind bridge 0000:01:00.0 (104c:8232)" in str(paired[-1]["reason"])
