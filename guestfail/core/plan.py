"""From a pairing and a snapshot to the steps (guestfail.core.steps) that
build or repair its master.

Pure.  `spec_for()` decides what a pair should look like (names, MAC, MTU,
bond options); `plan_pair()` lists the steps from what is there to that, and
nothing when it is already so.  The executor (`guestfail.agent.executor`) runs the
steps; the daemon then observes again and plans again, which must give no
steps: that is the verification.

"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from guestfail.core import naming
from guestfail.core.config import FAIL_OVER_MAC_VALUES, Config
from guestfail.core.journal import Entry, movable
from guestfail.core.match import Pairing
from guestfail.core.model import (
    IFA_F_NOPREFIXROUTE,
    Address,
    Link,
    Route,
    Snapshot,
    is_ours,
    make_marker,
    our_masters,
)
from guestfail.core.steps import (
    CreateMaster,
    Enslave,
    MoveAddresses,
    Ref,
    Release,
    Rename,
    SetDown,
    SetMac,
    SetPrimary,
    SetUp,
    Step,
)


class PlanRefused(Exception):
    """The pair cannot be built as asked (e.g. a name is taken)."""


@dataclass(frozen=True)
class PairSpec:
    key: str
    label: str
    master_name: str
    standby: int
    standby_name: str
    primary: Optional[int]
    primary_name: Optional[str]
    primary_altname: Optional[str]  # the primary's old name, kept as altname
    mac: str
    mtu: int
    fail_over_mac: str
    orig_name: str  # the standby's name before guestfail renamed it
    rule: str
    reason: str
    set_mac: bool = False  # the primary takes the standby's MAC, where it allows

    @property
    def marker(self) -> str:
        return make_marker(key=self.key, name=self.orig_name, label=self.label)


@dataclass
class Plan:
    spec: PairSpec
    steps: list[Step] = field(default_factory=list)


# ------------------------------------------------------------------ spec


def master_of(key: str, standby: int, snap: Snapshot) -> Optional[Link]:
    """A pair's existing master: the one its standby is enslaved to, else the
    one whose marker names the pair's key."""
    sby = snap.links[standby]
    m = snap.get(sby.master)
    if m is not None and is_ours(m):
        return m
    found = our_masters(snap).get(key, [])
    return found[0] if found else None


def spec_for(
    cfg: Config,
    pairing: Pairing,
    snap: Snapshot,
    known_names: Optional[dict[str, str]] = None,
    reserved: Iterable[str] = (),
) -> PairSpec:
    """What the pair should look like.  `known_names`: the standbys' names
    from before guestfail renamed them, by pair key, as the daemon recorded
    them (the master's marker says the same once there is a master).
    `reserved`: names other pairs of the same pass are about to take.
    PlanRefused when no name can be found."""
    sby = snap.links[pairing.standby]
    prim = snap.get(pairing.primary)
    master = master_of(pairing.key, pairing.standby, snap)
    marker = (master.marker if master else None) or {}
    orig = marker.get("name") or (known_names or {}).get(pairing.key) or sby.name
    ep = pairing.explicit
    taken = snap.names() | set(reserved)
    if ep is not None and ep.master:
        master_name = ep.master
        kernel_naming = False
    elif cfg.naming == "kernel":
        master_name = orig
        kernel_naming = True
    else:
        kernel_naming = False
        if master is not None and not naming.is_temp_name(master.name):
            master_name = master.name
        else:
            # a master still under its temporary name (an earlier pass could
            # not rename it) gets a name from the template again
            own = {master.name, *master.altnames} if master is not None else set()
            try:
                master_name = naming.master_from_template(cfg.master_name, orig, taken - own)
            except ValueError as e:
                raise PlanRefused(str(e)) from None
    sby_name = naming.standby_name(orig) if kernel_naming else sby.name
    prim_name = prim_alt = None
    if prim is not None:
        if kernel_naming:
            prim_name = naming.primary_name(orig)
            if prim.name != prim_name:
                prim_alt = prim.name
        else:
            prim_name = prim.name

    fom = (ep.fail_over_mac if ep and ep.fail_over_mac else "") or cfg.bond.fail_over_mac
    if fom == "auto":
        fom = "none" if pairing.require_same_mac else "active"

    spec = PairSpec(
        key=pairing.key,
        label=pairing.label,
        master_name=master_name,
        standby=sby.ifindex,
        standby_name=sby_name,
        primary=prim.ifindex if prim else None,
        primary_name=prim_name,
        primary_altname=prim_alt,
        mac=sby.hw_mac,
        mtu=master.mtu if master else sby.mtu,
        fail_over_mac=fom,
        orig_name=orig,
        rule=pairing.rule,
        reason=pairing.reason,
        set_mac=pairing.set_mac,
    )
    _check_names(spec, snap, master)
    return spec


def _check_names(spec: PairSpec, snap: Snapshot, master: Optional[Link]) -> None:
    owners = {
        spec.standby: spec.standby_name,
        **({spec.primary: spec.primary_name} if spec.primary else {}),
    }
    names_by_index = {i: {x.name, *x.altnames} for i, x in snap.links.items()}
    mine = {
        spec.standby,
        *([spec.primary] if spec.primary else []),
        *([master.ifindex] if master else []),
    }
    for idx, want in owners.items():
        if want is None:
            continue
        holder = naming.check_free(want, idx, names_by_index)
        if holder is not None and holder not in mine:
            raise PlanRefused(f"the name {want} is taken by {snap.links[holder].name}")
    holder = naming.check_free(spec.master_name, master.ifindex if master else None, names_by_index)
    if holder is not None and holder not in mine:
        raise PlanRefused(f"the master name {spec.master_name} is taken by {snap.links[holder].name}")


# ------------------------------------------------------------------ plan


def _on(link: Link, addresses: tuple[Address, ...]) -> set[tuple[int, str, int]]:
    have = {a.key for a in link.addresses}
    return {a.key for a in addresses} & have


RTNH_F_ONLINK = 0x4
AF_INET = 2


def gateway_reachable(r: Route, target: Optional[Link], adding: tuple[Address, ...], snap: Snapshot) -> bool:
    """Would the kernel take `r` out of `target` now (its IPv4 gateway on a
    connected network there: a prefix route of an address, or a link route),
    with `adding` added first?  Not when something else holds the target's
    addresses without their prefix routes (NetworkManager activating its
    profile on the master): the route then waits, instead of failing every
    reconciliation with ENETUNREACH."""
    if r.family != AF_INET or not r.gateway or r.nexthops or r.flags & RTNH_F_ONLINK:
        return True
    gw = ipaddress.ip_address(r.gateway)

    def covers(address: str, prefixlen: int) -> bool:
        return gw in ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)

    held = target.addresses if target is not None else ()
    # an address the target holds already is not added again (EEXIST): it
    # keeps the flags it has there
    added = tuple(a for a in adding if a.key not in {h.key for h in held})
    if any(
        a.family == AF_INET and not a.flags & IFA_F_NOPREFIXROUTE and covers(a.address, a.prefixlen)
        for a in (*added, *held)
    ):
        return True
    return target is not None and any(
        x.family == AF_INET and not x.gateway and x.dst and covers(x.dst, x.dst_len)
        for x in snap.routes_via(target.ifindex)
    )


def links_first(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """`routes` in an order the kernel takes them on a new link: routes
    without a gateway (a subnet's route, which makes a gateway reachable)
    before those through one.  NetworkManager holds addresses without
    their prefix routes and lists its subnet route after its default
    route."""
    return tuple(sorted(routes, key=lambda r: bool(r.gateway or r.nexthops)))


def missing_routes(routes: tuple[Route, ...], target: int, snap: Snapshot) -> tuple[Route, ...]:
    """Journal routes the target does not carry yet."""
    present = {r.key for r in snap.routes_via(target)}
    return tuple(r for r in routes if r.key not in present)


def plan_pair(
    cfg: Config,
    spec: PairSpec,
    snap: Snapshot,
    drained: bool = False,
    entry: Optional[Entry] = None,
    mac_refused: frozenset[int] = frozenset(),
) -> Plan:
    """The steps from `snap` to `spec`; empty when the pair is as it should be.
    A drained pair (prepare-unplug) keeps its primary enslaved but not as the
    bond's preferred member, so the kernel does not switch back to it.
    `mac_refused`: primaries that refused the standby's MAC (set_mac is not
    asked of them again).
    `entry`: the pair's journal entry, if a crash interrupted an earlier run:
    every address and route it lists ends up on the master."""
    plan = Plan(spec)
    steps = plan.steps
    sby = snap.links[spec.standby]
    prim = snap.get(spec.primary)
    master = master_of(spec.key, spec.standby, snap)

    # Names as they will be after each step, to order renames correctly.
    create_later: Optional[CreateMaster] = None
    if master is None:
        # A bond is made under a temporary name and renamed once the standby
        # has moved out of the way; a team is made under its final name after
        # that (teamd names its D-Bus service after the device).
        team = cfg.backend == "team"
        name = spec.master_name if team else naming.temp_name(sby.ifindex)
        create = CreateMaster(
            reclaim_from=(spec.standby, *([spec.primary] if spec.primary is not None else [])),
            name=name,
            kind=cfg.backend,
            mac=spec.mac,
            mtu=entry.mtu if entry is not None and entry.mtu else spec.mtu,
            marker=spec.marker,
            fail_over_mac=FAIL_OVER_MAC_VALUES[spec.fail_over_mac],
            adopt_unmarked=entry is not None and entry.creating == name,
        )
        holder = snap.by_name(name)
        if (
            holder is not None
            and holder.ifindex not in create.reclaim_from
            and not is_ours(holder)
            and not create.adopt_unmarked
        ):
            raise PlanRefused(
                f"{name}, the name its master is made under, is taken by a device guestfail did not make"
            )
        if team:
            create_later = create
        else:
            steps.append(create)
        mref: Ref = name
        m_name, m_up = name, False
    else:
        mref = master.ifindex
        m_name, m_up = master.name, master.up
        if master.kind == "team":
            m_name = spec.master_name  # a team under teamd keeps its name

    sby_enslaved = master is not None and sby.master == master.ifindex
    sby_up = sby.up
    # The standby's addresses go to the master once it is up, enslaved or
    # not (a crash after "enslave" leaves its IPv4 addresses on it); so do
    # what the journal kept of them (the kernel dropped the IPv6 addresses
    # and the routes when the standby went down).
    moving = tuple(a for a in sby.addresses if movable(a))
    routes = tuple(snap.routes_via(sby.ifindex))
    if entry is not None:
        kept = {a.key for a in moving}
        have = _on(master, entry.addresses) if master is not None else set()
        moving += tuple(a for a in entry.addresses_now() if a.key not in kept and a.key not in have)
        known = {r.key for r in routes}
        journal_routes = entry.routes
        if master is not None:
            journal_routes = missing_routes(journal_routes, master.ifindex, snap)
        routes += tuple(r for r in journal_routes if r.key not in known)

    # 1. the standby gets out of the way of the master's name
    if sby.name != spec.standby_name:
        if sby_up:
            steps.append(SetDown(sby.ifindex))
            sby_up = False
        steps.append(Rename(sby.ifindex, spec.standby_name))
    if create_later is not None:
        steps.append(create_later)
    # 2. the master takes its name
    if m_name != spec.master_name:
        if m_up:
            steps.append(SetDown(mref))
            m_up = False
        members = (spec.standby, *([spec.primary] if spec.primary is not None else []))
        steps.append(Rename(mref, spec.master_name, reclaim_from=members))
    # 3. the standby joins (the bond opens it); a member something set down
    # (a rename) comes up again
    if not sby_enslaved:
        if sby.master is not None:
            steps.append(Release(sby.ifindex))
        if sby_up:
            steps.append(SetDown(sby.ifindex))
        steps.append(Enslave(sby.ifindex, mref))
    elif not sby_up:
        steps.append(SetUp(sby.ifindex))
    # 4. the master comes up, the standby's addresses follow it
    if not m_up:
        steps.append(SetUp(mref))
    # a route whose gateway the master cannot reach now waits (stays where
    # it is) rather than failing the pair: the VF still joins
    routes = tuple(r for r in routes if gateway_reachable(r, master, moving, snap))
    if moving or routes:
        steps.append(MoveAddresses(sby.ifindex, mref, moving, routes))

    # 5. the primary joins
    if prim is not None and spec.primary_name is not None:
        p_enslaved = master is not None and prim.master == master.ifindex
        p_up = prim.up
        set_mac = spec.set_mac and prim.mac != spec.mac and prim.ifindex not in mac_refused
        if prim.name != spec.primary_name:
            if p_up:
                steps.append(SetDown(prim.ifindex))
                p_up = False
            steps.append(Rename(prim.ifindex, spec.primary_name, spec.primary_altname or ""))
        if not p_enslaved:
            if prim.master is not None:
                steps.append(Release(prim.ifindex))
            if p_up:
                steps.append(SetDown(prim.ifindex))
            if set_mac:
                steps.append(SetMac(prim.ifindex, spec.mac))
            steps.append(Enslave(prim.ifindex, mref))
            if cfg.backend == "team" and not drained:
                # teamd's port priorities are not in the snapshot: set once,
                # when the port joins
                steps.append(SetPrimary(mref, prim.ifindex))
        else:
            if set_mac:
                steps.append(SetMac(prim.ifindex, spec.mac))
            if not p_up:
                steps.append(SetUp(prim.ifindex))
        if cfg.backend == "bond":
            current_primary = master.bond.primary if master is not None and master.bond else None
            want_primary = None if drained else prim.ifindex
            if current_primary != want_primary:
                steps.append(SetPrimary(mref, want_primary))
    elif master is not None and master.bond is not None and master.bond.primary is not None:
        # the old primary is gone: the bond must not wait for its name again
        still = snap.get(master.bond.primary)
        if still is None or still.master != master.ifindex:
            steps.append(SetPrimary(mref, None))

    # 6. strays: slaves of this master that are neither standby nor primary
    if master is not None:
        for s in snap.slaves_of(master.ifindex):
            if s.ifindex not in (spec.standby, spec.primary):
                steps.append(Release(s.ifindex))
    return plan
