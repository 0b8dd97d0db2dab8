from __future__ import annotations

import socket

import pytest

from guestfail.core.config import Config, parse
from guestfail.core.match import match, standby_key
from guestfail.core.model import Address, BondState, Link, Route, Snapshot, make_marker
from guestfail.core.plan import PlanRefused, plan_pair, spec_for
from guestfail.core.steps import (
    CreateMaster,
    DeleteMaster,
    Enslave,
    MoveAddresses,
    Release,
    Rename,
    SetDown,
    SetPrimary,
    SetUp,
)
from guestfail.core.undo import leaked_masters, plan_release

from .conftest import link, vf, virtio

M1 = "02:00:00:00:00:11"
ADDR = Address(socket.AF_INET, "192.0.2.2", 24)
LL = Address(socket.AF_INET6, "fe80::1", 64)
ROUTE = Route(socket.AF_INET, "198.51.100.0", 24, gateway="192.0.2.1", protocol=4)


def snap(*links: Link, routes: tuple[tuple[int, Route], ...] = ()) -> Snapshot:
    return Snapshot(links={x.ifindex: x for x in links}, routes=routes)


def steps_for(cfg: Config, s: Snapshot, drained: bool = False) -> list[object]:
    (pairing,) = match(cfg, s).pairings
    return list(plan_pair(cfg, spec_for(cfg, pairing, s), s, drained=drained).steps)


def sby_link(**kw: object) -> Link:
    return virtio(2, kw.pop("name", "ens11"), M1, pci="0000:01:00.0", **kw)  # type: ignore[arg-type]


def marker(name: str = "ens11") -> str:
    return make_marker(key="pci-0000:01:00.0", name=name)


def bond(
    ifindex: int, name: str, *, active: int | None = None, primary: int | None = None, up: bool = True
) -> Link:
    return link(
        ifindex,
        name,
        kind="bond",
        mac=M1,
        ifalias=marker(),
        up=up,
        bond=BondState(1, active, primary, 100, 0, 0),
    )


def test_fresh_pair_full_sequence() -> None:
    s = snap(
        sby_link(addresses=(ADDR, LL)),
        vf(3, "ens5001", M1),
        routes=((2, ROUTE),),
    )
    steps = steps_for(Config(), s)
    assert steps == [
        CreateMaster(
            "gftmp2",
            "bond",
            M1,
            1500,
            make_marker(key="pci-0000:01:00.0", name="ens11"),
            0,
            reclaim_from=(2, 3),
        ),
        SetDown(2),
        Rename(2, "ens11nsby"),
        Rename("gftmp2", "ens11", reclaim_from=(2, 3)),
        Enslave(2, "gftmp2"),
        SetUp("gftmp2"),
        MoveAddresses(2, "gftmp2", (ADDR,), (ROUTE,)),
        SetDown(3),
        Rename(3, "ens11npf", "ens5001"),
        Enslave(3, "gftmp2"),
        SetPrimary("gftmp2", 3),
    ]


def test_paired_state_plans_nothing() -> None:
    s = snap(
        sby_link(name="ens11nsby", master=5, slave_kind="bond"),
        vf(3, "ens11npf", M1, master=5, altnames=("ens5001",)),
        bond(5, "ens11", active=3, primary=3),
    )
    assert steps_for(Config(), s) == []


def test_resume_after_a_crash_between_create_and_rename() -> None:
    s = snap(sby_link(addresses=(ADDR,)), vf(3, "ens5001", M1), bond(5, "gftmp2", up=False))
    steps = steps_for(Config(), s)
    assert not any(isinstance(x, CreateMaster) for x in steps)
    assert steps[:3] == [SetDown(2), Rename(2, "ens11nsby"), Rename(5, "ens11", reclaim_from=(2, 3))]
    assert Enslave(2, 5) in steps


def test_resume_after_the_standby_was_renamed() -> None:
    # the master's marker keeps the standby's original name
    s = snap(sby_link(name="ens11nsby", up=False), bond(5, "gftmp2", up=False))
    steps = steps_for(Config(), s)
    assert steps == [Rename(5, "ens11", reclaim_from=(2,)), Enslave(2, 5), SetUp(5)]


def test_vf_gone_clears_the_bond_primary() -> None:
    s = snap(sby_link(name="ens11nsby", master=5), bond(5, "ens11", active=2, primary=3))
    assert steps_for(Config(), s) == [SetPrimary(5, None)]


def test_drained_pair_keeps_no_primary() -> None:
    s = snap(
        sby_link(name="ens11nsby", master=5),
        vf(3, "ens11npf", M1, master=5),
        bond(5, "ens11", active=2, primary=3),
    )
    assert steps_for(Config(), s, drained=True) == [SetPrimary(5, None)]


def test_replugged_vf_at_another_slot_joins_again() -> None:
    s = snap(sby_link(name="ens11nsby", master=5), vf(7, "ens5002", M1), bond(5, "ens11", active=2))
    assert steps_for(Config(), s) == [
        SetDown(7),
        Rename(7, "ens11npf", "ens5002"),
        Enslave(7, 5),
        SetPrimary(5, 7),
    ]


def test_keep_naming_renames_nothing() -> None:
    cfg = parse('[agent]\nnaming = "keep"\nmaster_name = "fo{n}"')
    s = snap(sby_link(up=False), vf(3, "ens5001", M1, up=False))
    steps = steps_for(cfg, s)
    assert [x for x in steps if isinstance(x, Rename)] == [Rename("gftmp2", "fo0", reclaim_from=(2, 3))]


def test_name_held_by_an_unrelated_link_is_refused() -> None:
    s = snap(
        sby_link(),
        vf(3, "ens5001", M1),
        link(8, "ens11nsby", driver="e1000", bus="pci", mac="02:00:00:00:00:77"),
    )
    with pytest.raises(PlanRefused, match="ens11nsby is taken by ens11nsby"):
        steps_for(Config(), s)


def test_different_macs_choose_fail_over_mac_active() -> None:
    cfg = parse('[[standby]]\nmatch = { name = "ens11" }\nserial = 7\nrequire_mac = false')
    s = snap(sby_link(), vf(3, "v", "02:00:00:00:00:99", slot="7"))
    (pairing,) = match(cfg, s).pairings
    assert spec_for(cfg, pairing, s).fail_over_mac == "active"
    create = plan_pair(cfg, spec_for(cfg, pairing, s), s).steps[0]
    assert isinstance(create, CreateMaster) and create.fail_over_mac == 1


def test_stray_slave_is_released() -> None:
    s = snap(
        sby_link(name="ens11nsby", master=5),
        link(9, "tap0", driver="tun", mac="02:00:00:00:00:55", master=5),
        bond(5, "ens11", active=2),
    )
    assert steps_for(Config(), s) == [Release(9)]


def test_leaked_masters() -> None:
    sby = sby_link(name="ens11nsby", master=5)
    key = standby_key(sby)
    s = snap(sby, bond(5, "ens11", active=2), bond(6, "gftmp2", up=False))
    assert [m.ifindex for m in leaked_masters(s, {key})] == [6]
    assert sorted(m.ifindex for m in leaked_masters(s, set())) == [5, 6]


def test_release_restores_the_plain_setup() -> None:
    master = Link(**{**bond(5, "ens11", active=3, primary=3).__dict__, "addresses": (ADDR, LL)})
    s = snap(
        sby_link(name="ens11nsby", master=5),
        vf(3, "ens11npf", M1, master=5, altnames=("ens5001",)),
        master,
        routes=((5, ROUTE),),
    )
    assert plan_release(master, s) == [
        DeleteMaster(5),
        Rename(2, "ens11", reclaim_from=(2,)),
        SetUp(2),
        MoveAddresses(5, 2, (ADDR,), (ROUTE,)),
        Rename(3, "ens5001", reclaim_from=(3,)),
    ]


def test_release_of_an_empty_master_only_deletes_it() -> None:
    m = bond(6, "gftmp2", up=False)
    assert plan_release(m, snap(m)) == [DeleteMaster(6)]


def test_team_master_is_created_under_its_final_name() -> None:
    cfg = parse('[agent]\nbackend = "team"')
    s = snap(sby_link(addresses=(ADDR,)), vf(3, "ens5001", M1))
    steps = steps_for(cfg, s)
    assert steps[:3] == [
        SetDown(2),
        Rename(2, "ens11nsby"),
        CreateMaster(
            "ens11",
            "team",
            M1,
            1500,
            make_marker(key="pci-0000:01:00.0", name="ens11"),
            0,
            reclaim_from=(2, 3),
        ),
    ]
    assert not any(isinstance(x, Rename) and x.link == "ens11" for x in steps)
    # teamd's port priority is set when the VF joins
    assert steps[-2:] == [Enslave(3, "ens11"), SetPrimary("ens11", 3)]


def test_team_pair_in_place_plans_nothing() -> None:
    cfg = parse('[agent]\nbackend = "team"')
    team = link(5, "ens11", kind="team", mac=M1, ifalias=marker())
    s = snap(
        sby_link(name="ens11nsby", master=5), vf(3, "ens11npf", M1, master=5, altnames=("ens5001",)), team
    )
    assert steps_for(cfg, s) == []


def test_the_standbys_recorded_name_survives_a_crash_before_the_master_existed() -> None:
    # the team flow renames the standby before the master exists: a crash
    # there leaves only the daemon's record of the old name
    cfg = parse('[agent]\nbackend = "team"')
    s = snap(sby_link(name="ens11nsby", up=False), vf(3, "ens5001", M1))
    (pairing,) = match(cfg, s).pairings
    spec = spec_for(cfg, pairing, s, {pairing.key: "ens11"})
    assert (spec.master_name, spec.standby_name, spec.primary_name) == ("ens11", "ens11nsby", "ens11npf")
    steps = plan_pair(cfg, spec, s).steps
    assert not any(isinstance(x, Rename) and x.link == 2 for x in steps)
    # without the record the name would be built on the renamed one
    assert spec_for(cfg, pairing, s).master_name == "ens11nsby"


def test_a_template_with_no_free_name_refuses_the_pair_alone() -> None:
    """Issue 16 #7: the template's ValueError used to escape PlanRefused and
    abort the reconciliation of every pair."""
    cfg = parse("[agent]\nnaming = 'keep'\nmaster_name = '{standby}'\n")
    s = snap(sby_link(), vf(3, "ens5001", M1))
    (pairing,) = match(cfg, s).pairings
    with pytest.raises(PlanRefused, match="no free master name"):
        spec_for(cfg, pairing, s)
