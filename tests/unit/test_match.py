from __future__ import annotations

from guestfail.core.config import Config, parse
from guestfail.core.match import Pairing, claims, match, slot_serial, standby_key
from guestfail.core.model import BondState, Link, Snapshot, make_marker, parse_marker

from .conftest import link, vf, virtio

M1 = "02:00:00:00:00:11"
M2 = "02:00:00:00:00:22"


def snap(*links: Link) -> Snapshot:
    return Snapshot(links={x.ifindex: x for x in links})


def pairs(result: object) -> list[tuple[int, int | None, str]]:
    return [(p.standby, p.primary, p.rule) for p in result.pairings]  # type: ignore[attr-defined]


def test_mac_rule_pairs_equal_permanent_macs() -> None:
    r = match(Config(), snap(virtio(2, "ens11", M1), vf(3, "ens5001", M1), virtio(4, "ens21", M2)))
    assert pairs(r) == [(2, 3, "mac")]
    assert r.pairings[0].reason == f"permanent MAC {M1} is the same"
    assert [(u.link, u.role) for u in r.unpaired] == [(4, "standby")]
    assert not r.refusals


def test_current_mac_changes_do_not_matter() -> None:
    v = vf(3, "ens5001", M1)
    moved = Link(**{**v.__dict__, "mac": "02:99:99:99:99:99"})
    assert pairs(match(Config(), snap(virtio(2, "ens11", M1), moved))) == [(2, 3, "mac")]


def test_two_primaries_for_one_mac_are_refused() -> None:
    r = match(Config(), snap(virtio(2, "ens11", M1), vf(3, "a", M1), vf(4, "b", M1)))
    assert pairs(r) == []
    assert len(r.refusals) == 1
    assert r.refusals[0].links == (3, 4)
    assert "belongs to 2 primaries (a, b)" in r.refusals[0].reason


def test_two_standbys_for_one_mac_are_refused() -> None:
    r = match(Config(), snap(virtio(2, "s1", M1), virtio(3, "s2", M1), vf(4, "v", M1)))
    assert pairs(r) == []
    assert r.refusals[0].links == (4,)
    assert "belongs to 2 standbys (s1, s2)" in r.refusals[0].reason


def test_serial_disambiguates_standbys_sharing_a_mac() -> None:
    cfg = parse('[[standby]]\nmatch = { name = "s2" }\nserial = 5001')
    r = match(cfg, snap(virtio(2, "s1", M1), virtio(3, "s2", M1), vf(4, "v", M1, slot="5001")))
    assert pairs(r) == [(3, 4, "serial")]
    assert r.pairings[0].reason == "slot 5001 is the serial of s2 and the MACs agree"
    assert not r.refusals


def test_serial_reads_the_slot_as_a_number() -> None:
    cfg = parse('[[standby]]\nmatch = { name = "s1" }\nserial = 5001')
    assert pairs(match(cfg, snap(virtio(2, "s1", M1), vf(4, "v", M1, slot="05001")))) == [(2, 4, "serial")]
    assert slot_serial("0-2") is None
    assert slot_serial("٣") is None  # a digit, but not ASCII
    assert slot_serial("4294967296") is None


def test_serial_and_mac_that_disagree_are_refused() -> None:
    cfg = parse('[[standby]]\nmatch = { name = "s1" }\nserial = 5001')
    r = match(cfg, snap(virtio(2, "s1", M1), virtio(3, "s2", M2), vf(4, "v", M2, slot="5001")))
    assert pairs(r) == []
    assert r.refusals[0].links == (4, 2)
    assert "MACs differ" in r.refusals[0].reason


def test_serial_without_mac_check_when_asked() -> None:
    cfg = parse('[[standby]]\nmatch = { name = "s1" }\nserial = 5001\nrequire_mac = false')
    r = match(cfg, snap(virtio(2, "s1", M1), vf(4, "v", M2, slot="5001")))
    assert pairs(r) == [(2, 4, "serial")]
    assert r.pairings[0].require_same_mac is False


def test_explicit_pair_wins_and_needs_no_mac() -> None:
    cfg = parse('[[pair]]\nname = "up"\nstandby = { name = "s1" }\nprimary = { pci = "0000:09:00.0" }')
    r = match(cfg, snap(virtio(2, "s1", M1), vf(4, "v", M2, pci="0000:09:00.0"), vf(5, "w", M1)))
    assert pairs(r) == [(2, 4, "explicit")]
    assert r.pairings[0].label == "up"
    # the MAC twin of s1 cannot take the standby the explicit pair reserved
    assert r.refusals[0].links == (5,)
    assert "already paired with v by explicit" in r.refusals[0].reason


def test_a_primary_claimed_by_two_pairs_is_refused() -> None:
    cfg = parse(
        '[[pair]]\nname = "a"\nstandby = { name = "s1" }\nprimary = { mac = "02:00:00:00:00:22" }\n'
        '[[pair]]\nname = "b"\nstandby = { name = "s2" }\nprimary = { slot = "7" }'
    )
    r = match(cfg, snap(virtio(2, "s1", M1), virtio(3, "s2", M1), vf(4, "v", M2, slot="7")))
    assert pairs(r) == []
    assert "claimed by pairs 'a', 'b'" in r.refusals[0].reason


def test_explicit_selector_matching_two_devices_is_refused() -> None:
    cfg = parse('[[pair]]\nstandby = { name = "s1" }\nprimary = { mac = "02:00:00:00:00:22" }')
    r = match(cfg, snap(virtio(2, "s1", M1), vf(4, "v", M2), vf(5, "w", M2)))
    assert "matches v, w" in r.refusals[0].reason


def test_rules_can_be_switched_off() -> None:
    r = match(parse("[agent]\nmatch = []"), snap(virtio(2, "s1", M1), vf(3, "v", M1)))
    assert pairs(r) == []
    assert [(u.link, u.reason) for u in r.unpaired if u.role == "primary"] == [(3, "no rule matches it")]


def test_net_failover_is_left_to_the_kernel() -> None:
    master = virtio(2, "ens3", M1, pci="0000:01:00.0", standby_feature=True)
    sby = virtio(3, "ens3nsby", M1, pci="0000:01:00.0", standby_feature=True, master=2)
    prim = vf(4, "ens4", M1, master=2)
    r = match(Config(), snap(master, sby, prim))
    assert pairs(r) == []
    assert [(k.kind, k.master, k.members) for k in r.kernel_managed] == [("net_failover", 2, (3, 4))]
    assert not r.refusals and not r.unpaired


def test_netvsc_vf_is_left_to_the_kernel() -> None:
    nv = link(2, "eth0", driver="hv_netvsc", bus="vmbus", mac=M1, vmbus_id="0123")
    v = vf(3, "enP1s1", M1, driver="mana", master=2)
    r = match(Config(), snap(nv, v))
    assert [(k.kind, k.master, k.members) for k in r.kernel_managed] == [("netvsc", 2, (3,))]
    assert pairs(r) == []


def test_netvsc_without_a_vf_is_a_standby_candidate() -> None:
    nv = link(2, "eth0", driver="hv_netvsc", bus="vmbus", mac=M1, vmbus_id="0123")
    r = match(Config(), snap(nv, vf(3, "enP1s1", M1)))
    assert pairs(r) == [(2, 3, "mac")]
    assert r.pairings[0].key == "vmbus-0123"


def test_foreign_masters_and_ignore_lists_are_out_of_scope() -> None:
    user_bond = link(9, "bond0", kind="bond", mac=M2)
    cfg = parse('[agent]\nignore = ["ens11"]')
    r = match(
        cfg,
        snap(
            virtio(2, "ens11", M1), vf(3, "v", M1), virtio(4, "s2", M2, master=9), vf(5, "w", M2), user_bond
        ),
    )
    assert pairs(r) == []
    assert dict(r.ignored) == {
        2: "listed in agent.ignore",
        4: "enslaved to bond0, which guestfail did not create",
    }


def test_primary_not_yet_processed_by_udev_waits() -> None:
    r = match(Config(), snap(virtio(2, "s", M1), vf(3, "eth0", M1, udev_initialized=False)))
    assert pairs(r) == []
    assert dict(r.ignored) == {3: "udev has not finished with it yet"}


def test_non_pci_and_virtual_devices_are_not_primaries() -> None:
    r = match(
        Config(),
        snap(
            virtio(2, "s", M1),
            link(3, "usb0", driver="cdc_ether", bus="usb", mac=M1),
            link(4, "veth0", kind="veth", mac=M1),
            link(5, "vlan", driver="", mac=M1, is_vlan=True),
        ),
    )
    assert pairs(r) == []


def test_primary_drivers_restrict_primaries() -> None:
    cfg = parse('[agent]\nprimary_drivers = ["mlx5_core"]')
    r = match(cfg, snap(virtio(2, "s", M1), vf(3, "v", M1, driver="e1000")))
    assert pairs(r) == []


def test_standby_keeps_its_pairing_under_our_master() -> None:
    sby = virtio(2, "ens11nsby", M1, master=5)
    marker = make_marker(key=standby_key(sby), name="ens11")
    master = link(5, "ens11", kind="bond", mac=M1, ifalias=marker, bond=BondState(1, None, None, 100, 0, 0))
    r = match(Config(), snap(sby, master))
    assert r.pairings == [Pairing(standby_key(sby), 2, None, "", "waiting for its primary")]


def test_from_start_serves_standbys_without_primaries() -> None:
    r = match(parse('[agent]\nmaster_policy = "from-start"'), snap(virtio(2, "s", M1)))
    assert pairs(r) == [(2, None, "")]
    r = match(Config(), snap(virtio(2, "s", M1)))
    assert pairs(r) == []


def test_claims_for_the_udev_rule() -> None:
    cfg = parse(
        '[[standby]]\nmatch = { name = "s2" }\nserial = 5001\n'
        '[[pair]]\nstandby = { name = "s3" }\nprimary = { pci = "0000:0a:00.1" }'
    )
    s = snap(virtio(2, "s1", M1), virtio(3, "s2", M2), virtio(4, "s3", "02:00:00:00:00:33"), vf(5, "v", M1))
    result = match(cfg, s)
    got = claims(cfg, s, result, {"0000:02:00": "5001", "0000:03:00": "12"})
    slot_5001 = {f"pci-0000:02:00.{f}" for f in range(8)}
    assert got == {M1, M2, "02:00:00:00:00:33", "pci-0000:0a:00.1"} | slot_5001


def test_name_selectors_still_mean_a_renamed_standby() -> None:
    # after pairing, "s2" is the master's name; the standby is s2nsby
    cfg = parse('[[standby]]\nmatch = { name = "s2" }\nserial = 5001')
    sby2 = virtio(3, "s2nsby", M1, master=9)
    master = link(9, "s2", kind="bond", mac=M1, ifalias=make_marker(key=standby_key(sby2), name="s2"))
    r = match(cfg, snap(virtio(2, "s1", M1), sby2, master, vf(4, "s2npf", M1, slot="5001", master=9)))
    assert pairs(r) == [(3, 4, "serial")]


def test_a_label_cannot_forge_marker_fields() -> None:
    """A pair's label is free text: "web name=x" must not rename the master
    (issue 16 #10)."""
    marker = make_marker(key="pci-0000:01:00.0", name="ens11", label="web name=x 50%")
    assert parse_marker(marker) == {"key": "pci-0000:01:00.0", "name": "ens11", "label": "web name=x 50%"}


def test_a_marker_fits_the_kernel_limit_with_any_label() -> None:
    label = "ünï côdé=%" * 7
    marker = make_marker(key="vmbus-" + "a" * 36, name="x" * 15, label=label)
    assert len(marker.encode()) <= 255
    parsed = parse_marker(marker)
    assert parsed is not None and label.startswith(parsed["label"]) and parsed["name"] == "x" * 15
