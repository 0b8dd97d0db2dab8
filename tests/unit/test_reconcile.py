"""The reconciler and the executor against an in-memory kernel (the boundary:
tests/fakekernel.py) and a fake sysfs tree: what the kernel holds after a
run, after a crash at any step and a restart, after a config change."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import pytest

from guestfail.agent.reconciler import Reconciler
from guestfail.agent.release import release
from guestfail.backends.bond import BondBackend
from guestfail.core.config import Config, parse
from guestfail.core.errors import NotFound
from guestfail.core.interfaces import Outcome
from guestfail.core.model import Address, NextHop, Route
from guestfail.system.files import Journal
from guestfail.system.sysfs import Sysfs
from tests.fakekernel import Crashed, FakeKernel
from tests.fakesys import FakeSys

M1 = "02:00:00:00:00:11"
M2 = "02:00:00:00:00:22"
V4 = Address(socket.AF_INET, "192.0.2.2", 24, flags=0x80, label="ens11")  # IFA_F_PERMANENT
V4_DHCP = Address(socket.AF_INET, "192.0.2.3", 24, valid_lft=600, preferred_lft=600, label="ens11:dhcp")
V6 = Address(socket.AF_INET6, "2001:db8::2", 64, flags=0x80)
DEFAULT = Route(socket.AF_INET, "", 0, gateway="192.0.2.1", protocol=4, priority=100)
STATIC = Route(socket.AF_INET, "198.51.100.0", 24, gateway="192.0.2.1", protocol=4, table=100)
V6_DEFAULT = Route(socket.AF_INET6, "", 0, gateway="fe80::1", protocol=3, priority=1024)


class World:
    """One guest: a fake kernel with its sysfs, a state dir, a config."""

    def __init__(self, tmp_path: Path, config: str = "") -> None:
        self.tmp = tmp_path
        self.fs = FakeSys(tmp_path / "sys")
        self.k = FakeKernel(sysfs=tmp_path / "sys")
        self.state = tmp_path / "run"
        self.cfg = parse(f'[agent]\nstate_dir = "{self.state}"\n' + config)
        self.outcomes: list[Outcome] = []

    def standby(self, name: str = "ens11", mac: str = M1, pci: str = "0000:01:00.0") -> int:
        self.fs.virtio_nic(name, pci)
        return self.k.add(name, mac=mac)

    def vf(self, name: str = "ens5001", mac: str = M1, pci: str = "0000:02:00.0", slot: str = "") -> int:
        self.fs.pci_nic(name, pci, "mlx5_core", slot=slot or None)
        return self.k.add(name, mac=mac)

    def configured_standby(self) -> int:
        """A standby as the guest's network config left it: addresses,
        routes in two tables, IPv6."""
        sby = self.standby()
        for a in (V4, V4_DHCP, V6):
            self.k.add_address(sby, "ens11", a)
        for r in (DEFAULT, STATIC, V6_DEFAULT):
            self.k.add_route(sby, "ens11", r)
        return sby

    def reconciler(self, cfg: Optional[Config] = None) -> Reconciler:
        cfg = cfg or self.cfg
        sysfs = Sysfs(self.tmp / "sys")
        return Reconciler(cfg, self.k, sysfs, BondBackend(cfg, self.k, sysfs), self.state)

    def run(self, cfg: Optional[Config] = None) -> Outcome:
        return self.reconciler(cfg).run(frozenset, self.outcomes.append)

    # what the kernel holds, by name
    def names(self) -> set[str]:
        return {x.name for x in self.k.links.values()}

    def link(self, name: str) -> Any:
        return next(x for x in self.k.links.values() if x.name == name)

    def addresses(self, name: str) -> set[tuple[int, str, int]]:
        idx = self.link(name).ifindex
        return {a.key for i, a in self.k.addr_table if i == idx}

    def routes(self, name: str) -> set[tuple[int, str, int, int, int]]:
        idx = self.link(name).ifindex
        return {r.key for o, r in self.k.routes if r.uses(idx, o)}

    def slaves(self, name: str) -> set[str]:
        idx = self.link(name).ifindex
        return {x.name for x in self.k.links.values() if x.master == idx}


EVERYTHING = {a.key for a in (V4, V4_DHCP, V6)}
ALL_ROUTES = {r.key for r in (DEFAULT, STATIC, V6_DEFAULT)}


def assert_paired(w: World) -> None:
    """The pair as guestfail builds it, with everything the standby had on
    the master, nothing on the members, and nothing left over."""
    assert {"ens11", "ens11nsby", "ens11npf"} <= w.names()
    assert not [x.name for x in w.k.links.values() if x.kind == "bond" and x.name != "ens11"]
    master = w.link("ens11")
    assert master.kind == "bond" and master.up and master.ifalias.startswith("guestfail:1 ")
    assert w.slaves("ens11") == {"ens11nsby", "ens11npf"}
    assert w.link("ens11nsby").up and w.link("ens11npf").up
    assert w.addresses("ens11") == EVERYTHING
    assert w.routes("ens11") == ALL_ROUTES
    assert w.addresses("ens11nsby") == set() == w.addresses("ens11npf")
    assert master.bond["active_slave"] == w.link("ens11npf").ifindex
    assert Journal(w.state / "journal").all() == {}


def test_a_pair_is_built_with_everything_on_the_master(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    out = w.run()
    assert out.verified and not out.errors
    assert_paired(w)
    # the DHCP address keeps its lifetime and label (on the master's name)
    (dhcp,) = [a for _, a in w.k.addr_table if a.address == "192.0.2.3"]
    assert dhcp.label == "ens11:dhcp" and dhcp.valid_lft is not None and dhcp.valid_lft <= 600
    # a second run changes nothing
    before = list(w.k.requests)
    assert w.run().steps == 0 and w.k.requests == before


def test_each_observation_reaches_the_daemon_before_the_run_ends(tmp_path: Path) -> None:
    """The switch path learns of a pair as soon as a pass sees it built."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    out = w.run()
    seen = [o for o in w.outcomes if o.masters.get(out.result.pairings[0].key)]
    assert seen and not seen[0].final and out.final


def uninterrupted_requests(tmp_path: Path) -> int:
    w = World(tmp_path / "ref")
    w.configured_standby()
    w.vf()
    setup = len(w.k.requests)
    w.run()
    return len(w.k.requests) - setup


def test_a_crash_at_any_step_of_pairing_loses_nothing(tmp_path: Path) -> None:
    """Killed after any request of the pairing and started again, guestfail
    ends with the same pair and every address and route on the master (the
    kernel dropped the IPv6 address and the routes when the standby went
    down: only the journal has them), no second master, no temporary name."""
    total = uninterrupted_requests(tmp_path)
    assert total > 10
    for n in range(1, total + 1):
        w = World(tmp_path / f"crash{n}")
        w.configured_standby()
        w.vf()
        w.k.crash_after(n)
        with pytest.raises(Crashed):
            w.run()
        out = w.run()  # a new process: nothing in memory but the journal
        assert out.verified, n
        assert_paired(w)


def test_a_crash_at_any_step_of_pairing_with_the_vf_gone_meanwhile_loses_nothing(tmp_path: Path) -> None:
    """The same crash points, and the VF unplugged while guestfail was down
    (a migration began): the next start leaves whatever holds the standby's
    name (its master, or the standby itself) with everything, no master
    under a temporary name, and the VF that comes back is paired."""
    total = uninterrupted_requests(tmp_path)
    for n in range(1, total + 1):
        w = World(tmp_path / f"crash{n}")
        w.configured_standby()
        vf = w.vf()
        w.k.crash_after(n)
        with pytest.raises(Crashed):
            w.run()
        w.k.remove(vf)
        out = w.run()
        assert out.verified and not out.errors, (n, out.errors)
        assert w.addresses("ens11") == EVERYTHING and w.routes("ens11") == ALL_ROUTES, n
        assert not [x.name for x in w.k.links.values() if x.name.startswith("gftmp")], n
        w.vf("ens5002", pci="0000:06:00.0")  # back, in another slot
        out = w.run()
        assert not out.errors, (n, out.errors)
        assert_paired(w)


def test_a_route_whose_gateway_a_network_manager_made_unreachable_does_not_stop_the_pair(
    tmp_path: Path,
) -> None:
    """NetworkManager, activating its profile on the master, holds the
    master's IPv4 address without the kernel's prefix route (noprefixroute;
    it adds that route itself once its DHCP is done).  The default route's
    gateway is then unreachable there (ENETUNREACH): the route waits, and
    the VF still joins (seen in the Debian 12 image, where every retry failed
    the same way and the VF was never enslaved)."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    add_address = w.k.add_address

    def network_manager_holds_it(ifindex: int, name: str, a: Address) -> None:
        if w.k.links[ifindex].kind == "bond" and a.family == socket.AF_INET:
            a = replace(a, flags=a.flags | 0x200)  # IFA_F_NOPREFIXROUTE
        add_address(ifindex, name, a)

    w.k.add_address = network_manager_holds_it  # type: ignore[method-assign]
    first = w.run()  # the route fails as the address is taken over under it
    assert "ENETUNREACH" in first.errors[first.result.pairings[0].key]
    out = w.run()  # the retry: the route waits, the VF joins
    assert not out.errors, out.errors
    master = w.link("ens11")
    assert w.slaves("ens11") == {"ens11nsby", "ens11npf"}
    assert master.bond["active_slave"] == w.link("ens11npf").ifindex
    assert {a for a in w.addresses("ens11") if a[0] == socket.AF_INET} == {
        a for a in EVERYTHING if a[0] == socket.AF_INET
    }


def test_a_crash_between_creating_and_marking_a_master_is_taken_over(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.k.crash_after(1)  # the bond exists, unmarked, under its temporary name
    with pytest.raises(Crashed):
        w.run()
    (bond,) = [x for x in w.k.links.values() if x.kind == "bond"]
    assert bond.name == "gftmp1" and bond.ifalias == ""
    w.run()
    assert_paired(w)


def test_an_unmarked_bond_with_guestfails_temporary_name_is_not_taken_without_a_journal(
    tmp_path: Path,
) -> None:
    """Someone else's device that happens to be called gftmp1 stays theirs."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.k.create_bond("gftmp1", M2, 1500, miimon=100, fail_over_mac=0, num_peer_notif=1, all_slaves_active=0)
    out = w.run()
    assert out.errors and "gftmp1" in next(iter(out.errors.values()))
    assert w.link("gftmp1").ifalias == "" and w.slaves("gftmp1") == set()
    # nothing was changed meanwhile
    assert w.addresses("ens11") == EVERYTHING and w.routes("ens11") == ALL_ROUTES
    assert Journal(w.state / "journal").all() == {}


def test_a_standby_that_leaves_guestfails_care_gets_everything_back(tmp_path: Path) -> None:
    """A paired standby added to agent.ignore (a config reload): the master
    is undone like `release` does it, not just deleted (issue 16 #1)."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.run()
    ignoring = parse(f'[agent]\nstate_dir = "{w.state}"\nignore = ["ens11"]\n')
    out = w.run(ignoring)
    assert out.verified
    assert "ens11" in w.names() and not any(x.kind == "bond" for x in w.k.links.values())
    sby = w.link("ens11")
    assert sby.up and sby.master is None and sby.perm_mac == M1
    assert w.addresses("ens11") == EVERYTHING and w.routes("ens11") == ALL_ROUTES
    assert Journal(w.state / "journal").all() == {}


def test_a_member_renamed_by_someone_else_is_named_back_and_up(tmp_path: Path) -> None:
    """Issue 16 #3: renaming needs the link down; guestfail names it back and
    brings it up again, or the guest's active member stays down."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.run()
    vf = w.link("ens11npf").ifindex
    w.k.set_state(vf, "ens11npf", up=False)
    w.k.set_name(vf, "ens11npf", "eth7")
    assert w.link("ens11").bond["active_slave"] != vf
    w.run()
    assert_paired(w)


def test_two_new_pairs_in_one_pass_get_two_names_with_naming_keep(tmp_path: Path) -> None:
    """Issue 16 #9: the second master used to take the first one's name from
    the template and stay under its temporary name for good."""
    w = World(tmp_path, '\nnaming = "keep"\n')
    w.standby("ens11", M1, "0000:01:00.0")
    w.standby("ens12", M2, "0000:03:00.0")
    w.vf("ens5001", M1, "0000:02:00.0")
    w.vf("ens5002", M2, "0000:04:00.0")
    out = w.run()
    assert out.verified and not out.errors
    bonds = sorted(x.name for x in w.k.links.values() if x.kind == "bond")
    assert bonds == ["gf0", "gf1"]
    assert w.slaves("gf0") | w.slaves("gf1") == {"ens11", "ens12", "ens5001", "ens5002"}


def test_a_master_stuck_under_its_temporary_name_is_named(tmp_path: Path) -> None:
    w = World(tmp_path, '\nnaming = "keep"\n')
    w.configured_standby()
    w.vf()
    w.k.fail["rename"] = 16  # EBUSY, once: the master keeps gftmp1 this pass
    w.run()
    assert any(x.kind == "bond" and x.name == "gf0" for x in w.k.links.values())


def test_a_second_device_with_the_pairs_mac_does_not_break_the_pair(tmp_path: Path) -> None:
    """Issue 16 #4: a third device with the MAC of a working pair is refused;
    the VF carrying traffic stays where it is."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.run()
    w.vf("ens5003", M1, "0000:05:00.0")
    out = w.run()
    assert_paired(w)
    assert w.link("ens5003").master is None
    (refusal,) = out.result.refusals
    assert [out.snap.links[i].name for i in refusal.links] == ["ens5003"]
    assert "ens11npf" in refusal.reason


def test_a_multipath_route_through_the_standby_moves_with_its_other_path(tmp_path: Path) -> None:
    w = World(tmp_path)
    sby = w.configured_standby()
    other = w.k.add("eth9", mac="02:00:00:00:00:99")
    w.k.add_address(other, "eth9", Address(socket.AF_INET, "203.0.113.2", 24))
    mp = Route(
        socket.AF_INET,
        "198.51.100.128",
        25,
        protocol=4,
        nexthops=(NextHop(sby, "192.0.2.1", 1), NextHop(other, "203.0.113.1", 0)),
    )
    w.k.add_route(0, "ens11", mp)
    w.vf()
    w.run()
    master = w.link("ens11").ifindex
    (moved,) = [r for _, r in w.k.routes if r.nexthops]
    assert {(h.oif, h.gateway) for h in moved.nexthops} == {(master, "192.0.2.1"), (other, "203.0.113.1")}


def assert_released(w: World) -> None:
    """The guest as it was before guestfail: the standby with its name,
    up, with everything; the VF with its own name; no master."""
    assert not [x for x in w.k.links.values() if x.kind == "bond"]
    sby = w.link("ens11")
    assert sby.up and sby.master is None
    assert w.addresses("ens11") == EVERYTHING and w.routes("ens11") == ALL_ROUTES
    assert w.link("ens5001").master is None
    assert Journal(w.state / "journal").all() == {}


def paired_world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    w.run()
    assert_paired(w)
    return w


def test_release_gives_everything_back(tmp_path: Path) -> None:
    w = paired_world(tmp_path)
    said: list[str] = []
    assert release(w.cfg, w.k, Sysfs(tmp_path / "sys"), None, said.append) == ["ens11"]
    assert said == ["released ens11"]
    assert_released(w)


def test_a_release_killed_at_any_step_is_finished_by_the_next(tmp_path: Path) -> None:
    """The package's removal runs `guestfail release --all`; killed at any
    step (a master already deleted included), running it again leaves the
    guest as it was, with every address and route on the standby."""
    ref = paired_world(tmp_path / "ref")
    before = len(ref.k.requests)
    release(ref.cfg, ref.k, Sysfs(tmp_path / "ref" / "sys"), None, lambda _: None)
    total = len(ref.k.requests) - before
    assert total >= 5
    for n in range(1, total + 1):
        w = paired_world(tmp_path / f"crash{n}")
        w.k.crash_after(n)
        with pytest.raises(Crashed):
            release(w.cfg, w.k, Sysfs(tmp_path / f"crash{n}" / "sys"), None, lambda _: None)
        for p in (tmp_path / f"crash{n}" / "sys" / "class" / "net").glob("*/uevent"):
            p.unlink()
        release(w.cfg, w.k, Sysfs(tmp_path / f"crash{n}" / "sys"), None, lambda _: None)
        assert_released(w)
        # whatever step the crash came after, udev is asked to unmark the standby
        assert uevents(tmp_path / f"crash{n}").get("ens11") == "change", n


def test_release_gives_a_network_managers_routes_back_in_an_order_the_kernel_takes(tmp_path: Path) -> None:
    """NetworkManager holds the master's IPv4 addresses without their prefix
    routes (noprefixroute) and adds the subnet's route itself, after its
    default route.  Released in the order the kernel lists them, the default
    route's gateway is not reachable yet on the standby (ENETUNREACH: the vm
    test's `release --all` after NetworkManager stopped): link routes go
    first."""
    w = paired_world(tmp_path)
    master = w.link("ens11")
    for a in [a for i, a in w.k.addr_table if i == master.ifindex and a.family == socket.AF_INET]:
        w.k.del_address(master.ifindex, "ens11", a)
        w.k.add_address(master.ifindex, "ens11", replace(a, flags=a.flags | 0x200))  # IFA_F_NOPREFIXROUTE
    # NetworkManager's own subnet route (RTPROT_DHCP)
    subnet = Route(socket.AF_INET, "192.0.2.0", 24, protocol=16, priority=100)
    w.k.add_route(master.ifindex, "ens11", subnet)
    release(w.cfg, w.k, Sysfs(tmp_path / "sys"), None, lambda _: None)
    assert w.routes("ens11") == ALL_ROUTES | {subnet.key}
    assert w.addresses("ens11") == EVERYTHING


def test_release_of_a_name_that_is_no_master_changes_nothing(tmp_path: Path) -> None:
    w = paired_world(tmp_path)
    before = list(w.k.requests)
    with pytest.raises(NotFound, match="no master guestfail built is called 'ens11nsby'"):
        release(w.cfg, w.k, Sysfs(tmp_path / "sys"), ["ens11", "ens11nsby"])
    assert w.k.requests == before


def test_the_outcome_says_which_names_moved(tmp_path: Path) -> None:
    """What the integrations that follow a link by its name hear about: the
    standby's name taken by its master, then given back."""
    w = World(tmp_path)
    w.configured_standby()
    w.vf()
    assert w.run().renamed == {"ens11"}
    assert w.run().renamed == set()
    ignoring = parse(f'[agent]\nstate_dir = "{w.state}"\nignore = ["ens11"]\n')
    assert w.run(ignoring).renamed == {"ens11"}


def uevents(tmp_path: Path) -> dict[str, str]:
    net = tmp_path / "sys" / "class" / "net"
    return {p.parent.name: p.read_text() for p in net.glob("*/uevent")}


def test_release_takes_back_the_claims_and_has_udev_look_at_what_it_gave_back(tmp_path: Path) -> None:
    """udev keeps a device's properties across a rename: the released
    standby and VF would stay marked (no network manager would configure the
    standby again) and the claimed VF's rename would start the service.  The
    claims go first; "change" events after the release let the rule unmark."""
    w = paired_world(tmp_path)
    claims = w.state / "claims"
    assert M1 in {p.name for p in claims.iterdir()}
    for p in (tmp_path / "sys" / "class" / "net").glob("*/uevent"):
        p.unlink()
    release(w.cfg, w.k, Sysfs(tmp_path / "sys"), None, lambda _: None)
    assert_released(w)
    assert list(claims.iterdir()) == []
    assert uevents(tmp_path) == {"ens11": "change", "ens5001": "change"}


def test_a_named_release_takes_back_only_its_standbys_claim(tmp_path: Path) -> None:
    w = paired_world(tmp_path)
    claims = w.state / "claims"
    (claims / "pci-0000:09:00.0").touch()  # a slot the config ties to another standby
    release(w.cfg, w.k, Sysfs(tmp_path / "sys"), ["ens11"], lambda _: None)
    assert {p.name for p in claims.iterdir()} == {"pci-0000:09:00.0"}


def test_the_standbys_old_name_given_to_it_as_an_altname_after_the_check_is_taken_back(
    tmp_path: Path,
) -> None:
    """A team master is made under its final name once the standby has moved
    out of the way.  udev gave the renamed standby its old name as an altname
    between the executor's check and the creation (the image tier: teamd
    failed with EEXIST, the pair waited for the next pass, the daemon said
    READY with it failed): the name is taken back and the master made at once.
    (The kernel here is the fake's; the backend is the bond's, the plan the
    team's: what is under test is the executor's handling of the name.)"""
    w = World(tmp_path, 'backend = "team"\n')
    w.configured_standby()
    w.vf()
    sysfs = Sysfs(tmp_path / "sys")
    created: list[str] = []

    class UdevInBetween(BondBackend):
        def create_master(self, step: Any) -> int:
            sby = w.link("ens11nsby")
            if not created:
                w.k.add_altname(sby.ifindex, sby.name, "ens11")
            created.append(step.name)
            return super().create_master(step)

    cfg = w.cfg
    r = Reconciler(cfg, w.k, sysfs, UdevInBetween(cfg, w.k, sysfs), w.state)
    out = r.run(frozenset, w.outcomes.append)
    assert [o.errors for o in w.outcomes if o.errors] == []
    assert out.errors == {}
    assert created == ["ens11", "ens11"]
    assert "ens11" not in w.link("ens11nsby").altnames
    assert w.slaves("ens11") == {"ens11nsby", "ens11npf"}
