"""The journal: what guestfail must give back, written before it takes it.

Before the first step that changes a standby or builds or removes a master
(set down, rename, enslave, create, delete), the reconciler records, durably
(a new file, fsync, rename, fsync of the directory), everything the guest
must not lose if guestfail dies at any step after that: the standby's own
name, its MTU, every address with its flags and lifetimes, every route out of
it (default, multipath, IPv6, other tables), the name under which guestfail
is creating a master, and what integrations took over (NetworkManager's
profile).  Taking a link down makes the kernel drop its IPv6 addresses and
its routes at once, so without this record a crash between "set down" and
"move the addresses" loses them for good.

After a restart the plan (guestfail.core.plan) puts everything the entry lists on
the pair's master (or, on `release`, back on the standby); the entry is
removed once a pass verifies that.  An entry names the master it is
creating, so a master left unmarked by a crash between "create" and "mark" is
recognised as guestfail's and taken over, never duplicated.

One JSON file per pair under <state_dir>/journal/ (on /run: a reboot starts
from new devices anyway).  `Entry` and its (de)serialisation are pure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from guestfail.core.model import Address, NextHop, Route

log = logging.getLogger(__name__)

SCHEMA = 1
#: IFA_F_TEMPORARY: privacy addresses the kernel makes itself; never moved
IFA_F_TEMPORARY = 0x01


def now() -> float:
    """Seconds on CLOCK_BOOTTIME: survives a restart of the daemon, counts
    suspended time like the kernel's address lifetimes do."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def movable(a: Address) -> bool:
    """Addresses that follow the pair: not link-local (each link has its
    own), not temporary (the kernel makes new ones)."""
    return not a.link_local and not a.flags & IFA_F_TEMPORARY


@dataclass(frozen=True)
class Entry:
    key: str
    op: str  # "pair" | "release": where the addresses are going
    standby_name: str  # the standby's own name, before guestfail renamed it
    mtu: int
    addresses: tuple[Address, ...] = ()
    routes: tuple[Route, ...] = ()
    master: str = ""  # the master's (final) name
    creating: str = ""  # the name under which guestfail creates the master
    kind: str = "bond"
    since: float = 0.0  # CLOCK_BOOTTIME when the addresses were read
    kept: dict[str, Any] = field(default_factory=dict)  # integrations' data
    # members guestfail renames besides the standby: (its name for it, its own)
    renamed: tuple[tuple[str, str], ...] = ()

    def addresses_now(self, t: Optional[float] = None) -> tuple[Address, ...]:
        """The addresses with their lifetimes run down to `t`; expired ones
        are left out."""
        age = (now() if t is None else t) - self.since
        out = []
        for a in self.addresses:
            aged = a.aged(age)
            if aged is not None:
                out.append(aged)
        return tuple(out)

    def merged(
        self, addresses: tuple[Address, ...], routes: tuple[Route, ...], t: Optional[float] = None
    ) -> Entry:
        """This entry with addresses and routes seen later added (an address
        seen again keeps its newer lifetimes)."""
        t = now() if t is None else t
        by_key = {a.key: a for a in self.addresses_now(t)}
        by_key.update({a.key: a for a in addresses if movable(a)})
        r_by_key = {r.key: r for r in self.routes}
        r_by_key.update({r.key: r for r in routes})
        return replace(self, addresses=tuple(by_key.values()), routes=tuple(r_by_key.values()), since=t)


# ------------------------------------------------------------------ JSON


def _route_from(d: dict[str, Any]) -> Route:
    d = dict(d)
    d["metrics"] = tuple((str(k), int(v)) for k, v in d.get("metrics", ()))
    d["nexthops"] = tuple(NextHop(**h) for h in d.get("nexthops", ()))
    return Route(**d)


def to_json(e: Entry) -> dict[str, Any]:
    d = asdict(e)
    d["schema"] = SCHEMA
    return d


def from_json(d: dict[str, Any]) -> Entry:
    d = dict(d)
    if d.pop("schema", None) != SCHEMA:
        raise ValueError("not a guestfail journal entry of this version")
    d["addresses"] = tuple(Address(**a) for a in d.get("addresses", ()))
    d["routes"] = tuple(_route_from(r) for r in d.get("routes", ()))
    d["renamed"] = tuple((str(a), str(b)) for a, b in d.get("renamed", ()))
    return Entry(**d)
