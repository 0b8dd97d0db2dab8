"""Undoing pairs (pure): `release`, masters that serve no pair any more, and
releases a crash interrupted.  The inverse of guestfail.core.plan: the
standby gets back its own name, state, addresses and routes, the primary its
own name (kept as an altname)."""

from __future__ import annotations

from typing import Optional

from guestfail.core import naming
from guestfail.core.config import FAIL_OVER_MAC_VALUES
from guestfail.core.journal import Entry, movable
from guestfail.core.match import standby_key
from guestfail.core.model import Link, Snapshot, our_masters, parse_marker
from guestfail.core.plan import missing_routes
from guestfail.core.steps import (
    AddAddresses,
    DeleteMaster,
    MoveAddresses,
    Rename,
    SetDown,
    SetMac,
    SetUp,
    Step,
)


def leaked_masters(snap: Snapshot, live_keys: set[str]) -> list[Link]:
    """Masters guestfail made that serve no pair any more (their standby is
    gone or guestfail no longer serves it), or a second master for one pair
    (a crash between create and enslave)."""
    out: list[Link] = []
    for key, masters in our_masters(snap).items():
        if key not in live_keys:
            out.extend(masters)
            continue
        if len(masters) > 1:
            # keep the one that has slaves, else the oldest (lowest ifindex)
            ranked = sorted(masters, key=lambda m: (not snap.slaves_of(m.ifindex), m.ifindex))
            out.extend(ranked[1:])
    return out


def plan_leaked(snap: Snapshot, live_keys: set[str]) -> list[tuple[Link, list[Step]]]:
    """Each leaked master with the steps that undo it like `release` does:
    its standby gets its name, state, addresses and routes back (deleting
    the master alone would leave the standby down, renamed, without them)."""
    return [(m, plan_release(m, snap)) for m in leaked_masters(snap, live_keys)]


def release_entry(master: Link, snap: Snapshot, t: float) -> Optional[Entry]:
    """The journal entry written before a master is released: what its
    standby must get back."""
    marker = parse_marker(master.ifalias) or {}
    standby = standby_of(master, snap)
    if standby is None:
        return None
    return Entry(
        key=marker.get("key", ""),
        op="release",
        standby_name=marker.get("name") or standby.name,
        mtu=master.mtu,
        addresses=tuple(a for a in master.addresses if movable(a)),
        routes=tuple(snap.routes_via(master.ifindex)),
        master=master.name,
        kind=master.kind,
        since=t,
        renamed=tuple((s.name, own) for s, own in _renamed_primaries(master, standby, snap)),
    )


def _renamed_primaries(master: Link, standby: Link, snap: Snapshot) -> list[tuple[Link, str]]:
    """Members guestfail gave the <name>npf name, with their own (kept as
    their first altname)."""
    return [
        (s, s.altnames[0])
        for s in snap.slaves_of(master.ifindex)
        if s.ifindex != standby.ifindex and s.altnames and s.name.endswith(naming.PRIMARY_SUFFIX)
    ]


def standby_of(master: Link, snap: Snapshot) -> Optional[Link]:
    key = (parse_marker(master.ifalias) or {}).get("key", "")
    return next((s for s in snap.slaves_of(master.ifindex) if standby_key(s) == key), None)


def plan_release(master: Link, snap: Snapshot, entry: Optional[Entry] = None) -> list[Step]:
    """Undo a pair: the master goes, the standby gets its name and the
    master's addresses and routes back, the primary its old name (kept as an
    altname).  The inverse of what plan_pair built.  `entry`: an earlier
    release's journal entry, whose addresses the standby gets as well."""
    marker = parse_marker(master.ifalias) or {}
    standby = standby_of(master, snap)
    steps: list[Step] = [DeleteMaster(master.ifindex)]
    if standby is None:
        return steps
    orig = marker.get("name") or standby.name
    if standby.name != orig:
        steps.append(Rename(standby.ifindex, orig, reclaim_from=(standby.ifindex,)))
    steps.append(SetUp(standby.ifindex))
    moving = tuple(a for a in master.addresses if movable(a))
    routes = tuple(snap.routes_via(master.ifindex))
    if entry is not None:
        kept = {a.key for a in moving}
        moving += tuple(a for a in entry.addresses_now() if a.key not in kept)
        known = {r.key for r in routes}
        routes += tuple(r for r in entry.routes if r.key not in known)
    if moving or routes:
        steps.append(MoveAddresses(master.ifindex, standby.ifindex, moving, routes))
    for s, own in _renamed_primaries(master, standby, snap):
        steps.append(Rename(s.ifindex, own, reclaim_from=(s.ifindex,)))
    if master.bond is not None and master.bond.fail_over_mac == FAIL_OVER_MAC_VALUES["active"]:
        # a bond with fail_over_mac=active gives its slaves no MAC back: a
        # primary that took the standby's (the topology rule) gets its own
        for s in snap.slaves_of(master.ifindex):
            if s.ifindex != standby.ifindex and s.perm_mac and s.mac != s.perm_mac:
                steps.append(SetMac(s.ifindex, s.perm_mac))
    return steps


def plan_finish_release(entry: Entry, snap: Snapshot) -> list[Step]:
    """A release that died after its master was deleted: the standby (found
    by its key) gets its name back, comes up, and gets what the journal
    lists.  Nothing when the standby is gone too.

    A pairing that died between creating its master and marking it leaves
    that master unmarked under the name the journal says it was creating:
    with its pair gone meanwhile (the VF unplugged while guestfail was down),
    it is deleted here, or it would hold the name against the next pairing."""
    steps: list[Step] = []
    unmarked = next((x for x in snap.links.values() if entry.creating and x.name == entry.creating), None)
    if (
        unmarked is not None
        and unmarked.kind in ("bond", "team")
        and unmarked.marker is None
        and not any(x.master == unmarked.ifindex for x in snap.links.values())
    ):
        steps.append(DeleteMaster(unmarked.ifindex))
    standby = next(
        (x for x in snap.links.values() if x.master is None and not x.kind and standby_key(x) == entry.key),
        None,
    )
    if standby is None:
        return steps  # still enslaved (to a master being released) or gone
    if standby.name != entry.standby_name:
        if standby.up:
            steps.append(SetDown(standby.ifindex))
        steps.append(Rename(standby.ifindex, entry.standby_name, reclaim_from=(standby.ifindex,)))
        steps.append(SetUp(standby.ifindex))
    elif not standby.up:
        steps.append(SetUp(standby.ifindex))
    have = {a.key for a in standby.addresses}
    addresses = tuple(a for a in entry.addresses_now() if a.key not in have)
    routes = missing_routes(entry.routes, standby.ifindex, snap)
    if addresses or routes:
        steps.append(AddAddresses(standby.ifindex, addresses, routes))
    for name, own in entry.renamed:
        member = next((x for x in snap.links.values() if x.name == name), None)
        if member is None or member.master is not None or member.name == own:
            continue
        if member.up:
            steps.append(SetDown(member.ifindex))
        steps.append(Rename(member.ifindex, own, reclaim_from=(member.ifindex,)))
    return steps
