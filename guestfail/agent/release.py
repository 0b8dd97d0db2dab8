"""`guestfail release`: dissolve pairs, as the package does on removal.

Each master goes, its standby gets back its own name, comes up, and gets the
master's addresses and routes (guestfail.core.undo.plan_release).  Before the
first step the journal records what the standby must get back, so a release
killed at any step is finished by the next one: a master already deleted is
found again through its journal entry, by its standby's key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from guestfail.agent.executor import Executor
from guestfail.backends.bond import BondBackend
from guestfail.core.config import Config
from guestfail.core.errors import GuestfailError, NotFound
from guestfail.core.interfaces import Backend
from guestfail.core.journal import now
from guestfail.core.match import standby_key
from guestfail.core.model import Link, Snapshot, is_ours
from guestfail.core.undo import plan_finish_release, plan_release, release_entry, standby_of
from guestfail.system.files import Journal
from guestfail.system.netlink import Rtnl
from guestfail.system.observe import assemble
from guestfail.system.sysfs import Sysfs
from guestfail.system.udev import drop_claims

log = logging.getLogger(__name__)


def _backend_for(kind: str, cfg: Config, nl: Rtnl, sysfs: Sysfs) -> Backend:
    if kind == "team":
        from guestfail.backends.team import TeamBackend

        return TeamBackend(cfg, nl, Path(cfg.state_dir))
    return BondBackend(cfg, nl, sysfs)


def release(
    cfg: Config,
    nl: Rtnl,
    sysfs: Sysfs,
    names: Optional[list[str]] = None,
    said: Callable[[str], None] = print,
) -> list[str]:
    """Release the masters called `names` (all of guestfail's when None) and
    finish every release a crash interrupted; returns the masters released.
    NotFound, changing nothing, if a name is not one of guestfail's masters."""
    journal = Journal(Path(cfg.state_dir) / "journal")
    snap = assemble(nl.dump(), sysfs)
    masters = [x for x in snap.links.values() if is_ours(x)]
    if names is not None:
        named = {x.name: x for x in masters}
        # a release of that master that a crash interrupted after deleting it
        unfinished = {e.master for e in journal.all().values() if e.master and e.master not in named}
        missing = [n for n in names if n not in named and n not in unfinished]
        if missing:
            raise NotFound(f"no master guestfail built is called {missing[0]!r}")
        masters = [named[n] for n in names if n in named]
    # what the daemon told udev it will take goes first: the renames below
    # must not start the service again (the rule's systemd want), nor leave
    # the devices marked for it
    claims = Path(cfg.state_dir) / "claims"
    standbys = [standby_of(m, snap) for m in masters]
    drop_claims(claims, None if names is None else {sb.hw_mac for sb in standbys if sb is not None})
    handed_back = {x.ifindex for m in masters for x in snap.slaves_of(m.ifindex)}
    done: list[str] = []
    for m in masters:
        _release_one(cfg, nl, sysfs, journal, m, snap)
        said(f"released {m.name}")
        done.append(m.name)
    # releases that died after their master was deleted (and, with --all,
    # pairings that died before theirs existed): the standby gets its due
    keys = {(m.marker or {}).get("key", "") for m in masters}
    snap = assemble(nl.dump(), sysfs)
    finished = []
    for key, entry in journal.all().items():
        if names is not None and key not in keys and entry.master not in names:
            continue
        steps = plan_finish_release(entry, snap)
        if steps:
            Executor(nl, BondBackend(cfg, nl, sysfs)).run_steps(entry.standby_name, steps, snap.links)
            said(f"gave {entry.standby_name} back what an interrupted run took")
        handed_back.update(x.ifindex for x in snap.links.values() if not x.kind and standby_key(x) == key)
        finished.append(key)
    # the journal entries go last: a release killed before udev was asked is
    # asked again by the next one
    _unmark(nl, sysfs, handed_back)
    for key in finished:
        journal.clear(key)
    return done


def _unmark(nl: Rtnl, sysfs: Sysfs, links: set[int]) -> None:
    """udev looks at the devices handed back again ("change" events), so its
    rule takes guestfail's marks off and their network manager configures
    them again (the standby renews its lease under its own name)."""
    for idx in sorted(links):
        try:
            link = nl.get_link(idx)
            if link is not None:
                sysfs.trigger_change(link.name)
        except (GuestfailError, OSError) as e:
            log.warning("udev not asked to unmark %d: %s", idx, e)


def _release_one(cfg: Config, nl: Rtnl, sysfs: Sysfs, journal: Journal, m: Link, snap: Snapshot) -> None:
    key = (m.marker or {}).get("key", "")
    old = journal.get(key)
    entry = release_entry(m, snap, now())
    if entry is not None:
        if old is not None:
            entry = entry.merged(old.addresses_now(), old.routes)
        journal.write(entry)
    executor = Executor(nl, _backend_for(m.kind, cfg, nl, sysfs))
    try:
        executor.run_steps(m.name, plan_release(m, snap, old), snap.links)
    finally:
        executor.backend.close()
