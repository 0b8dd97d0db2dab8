"""The daemon's records and the status document (`status --json`, D-Bus
`Status()`, the state file) built from them.

The document's schema is stable: fields are only ever added.  It is described
in the man page (STATUS JSON) and README.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from guestfail.core.decision import Decision, Facts, Health
from guestfail.core.match import MatchResult, Pairing
from guestfail.core.model import Link, Snapshot

SCHEMA = 1
STATE_FILE = "state.json"
HISTORY = 32

#: how a pair's primary stands to the standby's MAC (status "mac")
MAC_SAME = "same"  # their permanent MACs are equal
MAC_SET = "set"  # the primary carries the standby's MAC (set for the pair)
MAC_FOLLOWS = "follows-active"  # fail_over_mac=active: announced on every switch
MAC_MODES = {
    MAC_SAME: "the same permanent MAC",
    MAC_SET: "the primary carries the standby's MAC (set for the pair)",
    MAC_FOLLOWS: (
        "the master's MAC follows the active member (fail_over_mac=active), announced at every switch"
    ),
}


def mac_mode(sby: Link, prim: Optional[Link]) -> str:
    if prim is None:
        return ""
    if prim.hw_mac == sby.hw_mac:
        return MAC_SAME
    if prim.mac == sby.hw_mac:
        return MAC_SET
    return MAC_FOLLOWS


@dataclass(frozen=True)
class Switch:
    time: float  # wall clock, seconds since the epoch
    frm: str
    to: str
    reason: str
    latency_ms: Optional[float]  # event arrival -> kernel confirmed the new active member
    by: str  # "guestfail" or "kernel" (the bond's own miimon/primary reselection)
    request_ms: Optional[float] = None  # event arrival -> guestfail's request went out (None: none was sent)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("frm")
        d["time"] = _iso(self.time)
        return d


@dataclass
class PairRecord:
    key: str
    label: str = ""
    master: Optional[int] = None
    master_name: str = ""
    standby: Optional[int] = None
    standby_name: str = ""
    primary: Optional[int] = None
    primary_name: str = ""
    rule: str = ""
    reason: str = ""
    kind: str = "bond"
    drained: bool = False
    error: str = ""
    standby_carrier: bool = False
    primary_carrier: bool = False
    # the primary's master as the kernel last said (IFLA_MASTER): kept raw,
    # so an event read before the pair's master was known is right once it is
    primary_master: Optional[int] = None
    active: Optional[int] = None
    decision: Optional[Decision] = None
    history: deque[Switch] = field(default_factory=lambda: deque(maxlen=HISTORY))
    switches: int = 0
    primary_slot: str = ""  # the PCI slot of the primary (the attention button's)
    mac: str = ""  # MAC_SAME, MAC_SET, MAC_FOLLOWS; "" without a primary

    @property
    def primary_enslaved(self) -> bool:
        return self.primary is not None and self.master is not None and self.primary_master == self.master

    def facts(self) -> Facts:
        """What the switch decision reads (guestfail.core.decision)."""
        return Facts(
            standby=self.standby or 0,
            standby_carrier=self.standby_carrier,
            primary=self.primary,
            primary_enslaved=self.primary_enslaved,
            primary_carrier=self.primary_carrier,
            drained=self.drained,
            active=self.active,
            error=self.error,
        )

    def observe(
        self, p: Pairing, snap: Snapshot, master: Optional[Link], fresher: frozenset[int] = frozenset()
    ) -> bool:
        """Take the pair's facts from a snapshot (the one derivation, for the
        daemon and for `status`'s live view).  The active member and the
        drain are not taken (the daemon follows them itself).  A member in
        `fresher` had an event read after the snapshot was begun: its carrier
        and membership stay as that event said.  True if the pair has a
        primary it did not have before."""
        sby = snap.links[p.standby]
        prim = snap.get(p.primary)
        self.label = p.label
        self.rule, self.reason = p.rule, p.reason
        self.master = master.ifindex if master else None
        self.master_name = master.name if master else ""
        if not (sby.ifindex == self.standby and sby.ifindex in fresher):
            self.standby_carrier = sby.lower_up and sby.up
        self.standby, self.standby_name = sby.ifindex, sby.name
        new_primary = prim is not None and prim.ifindex != self.primary
        if prim is None or new_primary or prim.ifindex not in fresher:
            self.primary_carrier = bool(prim and prim.lower_up and prim.up)
            self.primary_master = prim.master if prim else None
        self.primary = prim.ifindex if prim else None
        self.primary_name = prim.name if prim else ""
        self.primary_slot = prim.slot if prim else ""
        self.mac = mac_mode(sby, prim)
        return new_primary

    def names(self) -> dict[int, str]:
        out = {}
        for idx, name in (
            (self.master, self.master_name),
            (self.standby, self.standby_name),
            (self.primary, self.primary_name),
        ):
            if idx is not None:
                out[idx] = name
        return out

    def name_of(self, idx: Optional[int]) -> str:
        return self.names().get(idx, "") if idx is not None else ""

    def paired_json(self) -> dict[str, Any]:
        """A primary joined the pair: which, by which rule, why, and how its
        MAC stands (the D-Bus signal Paired)."""
        return {
            "pair": self.master_name,
            "key": self.key,
            "standby": self.standby_name,
            "primary": self.primary_name,
            "slot": self.primary_slot or None,
            "rule": self.rule,
            "reason": self.reason,
            "mac": self.mac or None,
        }

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        last = self.history[-1].to_json() if self.history else None
        return {
            "key": self.key,
            "label": self.label,
            "kind": self.kind,
            "master": self.master_name,
            "state": d.health.value if d else Health.FAILED.value,
            "phase": d.phase.value if d else "unknown",
            "why": d.why if d else "",
            "active": self.name_of(self.active) or None,
            "standby": self.standby_name or None,
            "primary": self.primary_name or None,
            "rule": self.rule,
            "reason": self.reason,
            "mac": self.mac or None,
            "slot": self.primary_slot or None,
            "drained": self.drained,
            "error": self.error,
            "switches": self.switches,
            "last_switch": last,
            "history": [s.to_json() for s in self.history],
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def overall(pairs: list[dict[str, Any]], refusals: list[Any]) -> str:
    states = {p["state"] for p in pairs}
    if Health.FAILED.value in states:
        return Health.FAILED.value
    if Health.DEGRADED.value in states or refusals:
        return Health.DEGRADED.value
    return Health.HEALTHY.value


def match_sections(result: MatchResult, snap: Snapshot) -> dict[str, Any]:
    def n(i: int) -> str:
        link = snap.links.get(i)
        return link.name if link else str(i)

    return {
        "refusals": [{"links": [n(i) for i in r.links], "reason": r.reason} for r in result.refusals],
        "unpaired": [{"link": n(u.link), "role": u.role, "reason": u.reason} for u in result.unpaired],
        "kernel_managed": [
            {"kind": k.kind, "master": n(k.master), "members": [n(m) for m in k.members]}
            for k in result.kernel_managed
        ],
        "ignored": [{"link": n(i), "reason": why} for i, why in result.ignored],
    }


def document(
    records: list[PairRecord],
    sections: dict[str, Any],
    daemon: dict[str, Any],
    source: str,
) -> dict[str, Any]:
    pairs = [r.to_json() for r in sorted(records, key=lambda r: r.master_name or r.key)]
    return {
        "schema": SCHEMA,
        "source": source,
        "generated": _iso(time.time()),
        "daemon": daemon,
        "health": overall(pairs, sections.get("refusals", [])),
        "pairs": pairs,
        **sections,
        "disagreements": [],
    }
