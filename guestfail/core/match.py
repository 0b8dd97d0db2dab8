"""Which links are standbys, which are primaries, and which belong together.

Pure: `match(config, snapshot)` returns the pairings, the refusals and the
links it leaves alone, each with its reason.  Ambiguity is refused, never
guessed.  Rules, in this order:

1. explicit ``[[pair]]`` entries in the config;
2. serial: a primary's PCI slot name, read as a number, is the serial the
   config gives a standby (``[[standby]] serial = N``); their permanent MACs
   must agree unless the entry says ``require_mac = false`` (netvsc checks the
   same since MANA);
3. MAC: the permanent MACs are equal (net_failover's rule).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from guestfail.core.bridges import bridge_groups
from guestfail.core.config import Config, ExplicitPair, Selector
from guestfail.core.model import ARPHRD_ETHER, Link, Snapshot, is_ours

NETVSC = "hv_netvsc"


@dataclass(frozen=True)
class Pairing:
    """A standby guestfail serves, with its primary if it has one now."""

    key: str  # stable identity of the standby (see standby_key)
    standby: int  # ifindex
    primary: Optional[int]
    rule: str  # "explicit", "serial", "mac", "" (standby only)
    reason: str
    label: str = ""
    explicit: Optional[ExplicitPair] = None
    require_same_mac: bool = True
    # the topology rule: the VF takes the standby's MAC where it allows
    set_mac: bool = False


@dataclass(frozen=True)
class Refusal:
    links: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class KernelManaged:
    kind: str  # "net_failover" | "netvsc"
    master: int
    members: tuple[int, ...]


@dataclass(frozen=True)
class Unpaired:
    link: int
    role: str  # "standby" | "primary"
    reason: str


@dataclass
class MatchResult:
    pairings: list[Pairing] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    kernel_managed: list[KernelManaged] = field(default_factory=list)
    unpaired: list[Unpaired] = field(default_factory=list)
    ignored: list[tuple[int, str]] = field(default_factory=list)
    # the topology rule's bridges that have a standby behind them (udev claims
    # their free slots)
    bridges: list[str] = field(default_factory=list)


def standby_key(link: Link) -> str:
    """A standby's identity across renames, enslavement and daemon restarts."""
    if link.vmbus_id:
        return f"vmbus-{link.vmbus_id}"
    if link.pci_address:
        return f"pci-{link.pci_address}"
    return f"mac-{link.hw_mac}"


def _ignored(link: Link, cfg: Config, orig_name: Optional[str] = None) -> bool:
    """Listed in agent.ignore by name (a renamed standby's own name too),
    MAC or PCI address."""
    keys = {link.name, link.hw_mac, link.mac, link.pci_address, *link.altnames}
    if orig_name:
        keys.add(orig_name)
    return any(i in keys for i in cfg.ignore)


def _original_names(snap: Snapshot) -> dict[int, str]:
    """Standbys guestfail renamed -> their own names (in their master's marker)."""
    out: dict[int, str] = {}
    for link in snap.links.values():
        m = snap.get(link.master)
        if m is not None and is_ours(m):
            name = (m.marker or {}).get("name")
            key = (m.marker or {}).get("key")
            if name and key == standby_key(link):
                out[link.ifindex] = name
    return out


def kernel_managed(snap: Snapshot) -> list[KernelManaged]:
    """Pairs the kernel built itself: net_failover (virtio with STANDBY
    negotiated: master and standby both sit on the virtio device) and netvsc
    (a VF enslaved to a hv_netvsc device)."""
    out: list[KernelManaged] = []
    for link in snap.links.values():
        if link.standby_feature and link.master is None and link.driver == "virtio_net":
            members = tuple(s.ifindex for s in snap.slaves_of(link.ifindex))
            out.append(KernelManaged("net_failover", link.ifindex, members))
        elif link.driver == NETVSC:
            members = tuple(s.ifindex for s in snap.slaves_of(link.ifindex))
            if members:
                out.append(KernelManaged("netvsc", link.ifindex, members))
    return out


def classify(link: Link, cfg: Config, snap: Snapshot) -> tuple[Optional[str], str]:
    """("standby" | "primary" | None, why)."""
    if link.link_type != ARPHRD_ETHER:
        return None, "not Ethernet"
    if link.is_vlan or link.kind:
        return None, f"a {link.kind or 'vlan'} device"
    if not link.driver:
        return None, "no device driver (virtual)"
    if link.driver in cfg.standby_drivers:
        return "standby", f"driver {link.driver}"
    if link.bus != "pci":
        return None, f"not a PCI device (driver {link.driver})"
    if cfg.primary_drivers and link.driver not in cfg.primary_drivers:
        return None, f"driver {link.driver} is not in agent.primary_drivers"
    return "primary", f"PCI NIC, driver {link.driver}"


def _select_standby(sel: Selector, links: list[Link], orig: Optional[dict[int, str]] = None) -> list[Link]:
    """`orig`: the names standbys had before guestfail renamed them (kept in
    their master's marker), which name selectors in the config still mean."""
    if sel.key == "name":
        was = orig or {}
        return [x for x in links if sel.value in (x.name, was.get(x.ifindex), *x.altnames)]
    if sel.key == "mac":
        return [x for x in links if x.hw_mac == sel.value]
    if sel.key == "pci":
        return [x for x in links if x.pci_address == sel.value]
    if sel.key == "vmbus":
        return [x for x in links if x.vmbus_id == sel.value]
    return []


def slot_serial(slot: str) -> Optional[int]:
    """The serial a PCI slot name stands for (Hyper-V names VF slots by it)."""
    s = slot.strip()
    if not s.isdigit() or not s.isascii():
        return None
    value = int(s)
    return value if value < 2**32 else None


def _select_primary(sel: Selector, links: list[Link]) -> list[Link]:
    if sel.key == "slot":
        return [x for x in links if x.slot == sel.value]
    if sel.key == "serial":
        return [x for x in links if x.slot and slot_serial(x.slot) == int(sel.value)]
    return _select_standby(sel, links)


def _names(ids: list[Link]) -> str:
    return ", ".join(x.name for x in ids)


def _built_pair(snap: Snapshot, sbys: list[Link], prims: list[Link]) -> Optional[tuple[Link, Link]]:
    """Among these candidates, a standby and a primary that are both members
    of the master guestfail built for that standby."""
    for sby in sbys:
        master = snap.get(sby.master)
        if master is None or not is_ours(master):
            continue
        for prim in prims:
            if prim.master == master.ifindex:
                return sby, prim
    return None


class _Matcher:
    """One matching pass: the rules share what is decided, claimed, refused
    and reserved so far, and run in the order the configuration lists them."""

    def __init__(self, cfg: Config, snap: Snapshot, res: MatchResult) -> None:
        self.cfg, self.snap, self.res = cfg, snap, res
        self.orig = _original_names(snap)
        self.standbys: list[Link] = []
        self.primaries: list[Link] = []
        self.claimed_sby: dict[int, tuple[int, str]] = {}  # standby -> (primary, rule)
        self.decided: dict[int, Pairing] = {}  # primary -> pairing
        self.refused: set[int] = set()
        self.explicit_sby: dict[int, ExplicitPair] = {}
        # standby -> who keeps it from later rules ("pair 'x'", "the topology rule (...)")
        self.reserved: dict[int, str] = {}
        self.topology_sby: set[int] = set()  # standbys the topology rule serves
        self.notes: dict[int, list[str]] = defaultdict(list)  # primary -> why no rule took it

    def refuse(self, links: list[Link], reason: str) -> None:
        self.res.refusals.append(Refusal(tuple(x.ifindex for x in links), reason))
        self.refused.update(x.ifindex for x in links)

    def is_open(self, prim: Link) -> bool:
        return prim.ifindex not in self.decided and prim.ifindex not in self.refused

    def taken(self, sby: Link) -> Optional[str]:
        """Why a later rule may not pair `sby`, if it may not."""
        if sby.ifindex in self.claimed_sby:
            other, rule = self.claimed_sby[sby.ifindex]
            return f"{sby.name} is already paired with {self.snap.links[other].name} by {rule}"
        if sby.ifindex in self.reserved:
            return f"{sby.name} is reserved by {self.reserved[sby.ifindex]}"
        return None

    def decide(self, sby: Link, prim: Link, rule: str, reason: str, **kw: object) -> None:
        self.decided[prim.ifindex] = Pairing(
            standby_key(sby),
            sby.ifindex,
            prim.ifindex,
            rule,
            reason,
            **kw,  # type: ignore[arg-type]
        )
        self.claimed_sby[sby.ifindex] = (prim.ifindex, rule)

    def candidates(self) -> None:
        res, snap, cfg = self.res, self.snap, self.cfg
        kernel_owned = {km.master for km in res.kernel_managed}
        for km in res.kernel_managed:
            kernel_owned.update(km.members)
        for link in sorted(snap.links.values(), key=lambda x: x.ifindex):
            if link.ifindex in kernel_owned:
                continue
            if link.ifindex in snap.unstable:
                res.ignored.append((link.ifindex, "renamed while it was read: looked at again"))
                continue
            role, _ = classify(link, cfg, snap)
            if role is None:
                continue
            if _ignored(link, cfg, self.orig.get(link.ifindex) if role == "standby" else None):
                res.ignored.append((link.ifindex, "listed in agent.ignore"))
                continue
            master = snap.get(link.master)
            if master is not None and not is_ours(master):
                res.ignored.append(
                    (link.ifindex, f"enslaved to {master.name}, which guestfail did not create")
                )
                continue
            if role == "primary" and not link.udev_initialized:
                res.ignored.append((link.ifindex, "udev has not finished with it yet"))
                continue
            (self.standbys if role == "standby" else self.primaries).append(link)

    # ------------------------------------------------------------ rules

    def explicit(self) -> None:
        claims: dict[int, list[tuple[ExplicitPair, Link]]] = defaultdict(list)
        for ep in self.cfg.pairs:
            sbys = _select_standby(ep.standby, self.standbys, self.orig)
            if len(sbys) > 1:
                self.refuse(
                    sbys, f"pair {ep.label!r}: standby {ep.standby.describe()} matches {_names(sbys)}"
                )
                continue
            if not sbys:
                continue
            self.explicit_sby[sbys[0].ifindex] = ep
            self.reserved[sbys[0].ifindex] = f"pair {ep.label!r}"
            prims = _select_primary(ep.primary, self.primaries)
            if len(prims) > 1:
                self.refuse(
                    prims, f"pair {ep.label!r}: primary {ep.primary.describe()} matches {_names(prims)}"
                )
                continue
            if prims:
                claims[prims[0].ifindex].append((ep, sbys[0]))
        for pidx, cl in claims.items():
            prim = self.snap.links[pidx]
            if len(cl) > 1:
                self.refuse([prim], f"claimed by pairs {', '.join(repr(ep.label) for ep, _ in cl)}")
                continue
            ep, sby = cl[0]
            why = f"pair {ep.label!r}: standby {ep.standby.describe()}, primary {ep.primary.describe()}"
            self.decide(sby, prim, "explicit", why, label=ep.label, explicit=ep, require_same_mac=False)

    def serial(self) -> None:
        if not self.cfg.serials:
            return
        by_serial = {st.serial: st for st in self.cfg.serials}
        for prim in self.primaries:
            if not self.is_open(prim) or not prim.slot:
                continue
            serial = slot_serial(prim.slot)
            st = by_serial.get(serial) if serial is not None else None
            if st is None:
                continue
            sbys = _select_standby(st.standby, self.standbys, self.orig)
            if len(sbys) != 1:
                if len(sbys) > 1:
                    why = f"serial {serial}: standby {st.standby.describe()} matches {_names(sbys)}"
                    self.refuse([prim, *sbys], why)
                continue
            sby = sbys[0]
            if sby.ifindex in self.reserved:
                self.refuse(
                    [prim],
                    f"serial {serial} names {sby.name}, which {self.reserved[sby.ifindex]} already claims",
                )
                continue
            if sby.ifindex in self.claimed_sby:
                other = self.snap.links[self.claimed_sby[sby.ifindex][0]]
                self.refuse([prim], f"serial {serial} names {sby.name}, already paired with {other.name}")
                continue
            if st.require_mac and prim.hw_mac != sby.hw_mac:
                self.refuse(
                    [prim, sby],
                    f"serial {serial} ties {prim.name} to {sby.name}, but their MACs differ "
                    f"({prim.hw_mac} vs {sby.hw_mac})",
                )
                continue
            same = prim.hw_mac == sby.hw_mac
            why = f"slot {prim.slot} is the serial of {sby.name}" + (" and the MACs agree" if same else "")
            self.decide(sby, prim, "serial", why, require_same_mac=same)

    def mac(self) -> None:
        sby_by_mac: dict[str, list[Link]] = defaultdict(list)
        for s in self.standbys:
            sby_by_mac[s.hw_mac].append(s)
        prim_by_mac: dict[str, list[Link]] = defaultdict(list)
        for p in self.primaries:
            if self.is_open(p):
                prim_by_mac[p.hw_mac].append(p)
        for mac, prims in prim_by_mac.items():
            sbys = sby_by_mac.get(mac, [])
            if not sbys:
                for p in prims:
                    self.notes[p.ifindex].append(f"no standby has MAC {mac}")
                continue
            # a pair guestfail already built with this MAC stays as it is: a
            # newcomer with the same MAC is refused, not the working pair
            built = _built_pair(self.snap, sbys, prims)
            if built is not None:
                sby, prim = built
                others = [p for p in prims if p.ifindex != prim.ifindex]
                if others:
                    self.refuse(others, f"MAC {mac} is already paired: {sby.name} with {prim.name}")
            elif len(sbys) > 1:
                self.refuse(prims, f"MAC {mac} belongs to {len(sbys)} standbys ({_names(sbys)})")
                continue
            elif len(prims) > 1:
                self.refuse(prims, f"MAC {mac} belongs to {len(prims)} primaries ({_names(prims)})")
                continue
            else:
                sby, prim = sbys[0], prims[0]
            why_not = self.taken(sby)
            if why_not is not None:
                self.refuse([prim], why_not)
                continue
            self.decide(sby, prim, "mac", f"permanent MAC {mac} is the same")

    def topology(self) -> None:
        """Standbys and primaries that sit behind one PCI bridge (core.bridges)."""
        for group in bridge_groups(self.cfg.bridges, self.standbys, self.primaries):
            b = group.bridge.describe()
            sbys = group.standbys
            prims = [p for p in group.primaries if self.is_open(p)]
            if not sbys:
                for p in prims:
                    self.notes[p.ifindex].append(f"no standby behind bridge {b}")
                continue
            self.res.bridges.append(group.bridge.address)
            for s in sbys:  # the bridge's: no later rule takes them
                self.reserved.setdefault(s.ifindex, f"the topology rule (behind bridge {b})")
            if len(sbys) > 1 or len(prims) > 1:
                built = _built_pair(self.snap, sbys, prims)
                if built is None:
                    self.refuse(
                        [*sbys, *prims],
                        f"bridge {b} has {len(sbys)} standbys and {len(prims)} primaries behind it "
                        f"({_names([*sbys, *prims])}): which two belong together is not clear",
                    )
                    continue
                sby, prim = built
                others = [x for x in (*sbys, *prims) if x.ifindex not in (sby.ifindex, prim.ifindex)]
                self.refuse(others, f"bridge {b} already pairs {sby.name} with {prim.name}")
                sbys, prims = [sby], [prim]
            sby = sbys[0]
            self.topology_sby.add(sby.ifindex)
            if not prims:
                continue
            prim = prims[0]
            if sby.ifindex in self.claimed_sby or sby.ifindex in self.explicit_sby:
                self.refuse([prim], self.taken(sby) or "")
                continue
            same = prim.hw_mac == sby.hw_mac
            macs = "the MACs agree" if same else f"MACs differ ({prim.hw_mac} vs {sby.hw_mac})"
            why = f"{sby.name} and {prim.name} sit behind bridge {b}; {macs}"
            self.decide(sby, prim, "topology", why, require_same_mac=False, set_mac=True)

    # ------------------------------------------------------------ the rest

    def standby_only(self) -> None:
        """Standbys without a primary now: served if guestfail already has a
        master for them (enslaved, or named in a master's marker after an
        interrupted setup), or the policy says to build masters from the start."""
        res, snap = self.res, self.snap
        our_keys = {(x.marker or {}).get("key") for x in snap.links.values() if is_ours(x)}
        for sby in self.standbys:
            if sby.ifindex in self.claimed_sby:
                continue
            ep = self.explicit_sby.get(sby.ifindex)
            topo = sby.ifindex in self.topology_sby
            master = snap.get(sby.master)
            if is_ours(master) or standby_key(sby) in our_keys or self.cfg.master_policy == "from-start":
                res.pairings.append(
                    Pairing(
                        standby_key(sby),
                        sby.ifindex,
                        None,
                        "explicit" if ep else "topology" if topo else "",
                        "waiting for its primary",
                        label=ep.label if ep else "",
                        explicit=ep,
                        require_same_mac=ep is None and not topo,
                        set_mac=topo,
                    )
                )
            elif sby.ifindex not in self.refused:
                res.unpaired.append(Unpaired(sby.ifindex, "standby", "no primary yet"))

    def run(self) -> None:
        self.candidates()
        self.explicit()
        for rule in self.cfg.rules:
            getattr(self, rule)()
        self.res.pairings.extend(sorted(self.decided.values(), key=lambda p: p.standby))
        for p in self.primaries:
            if self.is_open(p):
                why = "; ".join(self.notes.get(p.ifindex, ())) or "no rule matches it"
                self.res.unpaired.append(Unpaired(p.ifindex, "primary", why))
        self.standby_only()
        self.res.pairings.sort(key=lambda p: p.standby)


def match(cfg: Config, snap: Snapshot) -> MatchResult:
    res = MatchResult()
    res.kernel_managed = kernel_managed(snap)
    _Matcher(cfg, snap, res).run()
    return res


def claims(
    cfg: Config,
    snap: Snapshot,
    result: MatchResult,
    slots: dict[str, str],
    slot_bridges: Optional[dict[str, tuple[str, ...]]] = None,
) -> set[str]:
    """What the udev rule may mark before the device appears: the MAC of every
    standby guestfail serves or may serve, and the PCI functions of the slots
    the config ties to a standby (by serial or slot) or names outright, or
    that sit behind a bridge the topology rule serves a standby behind.
    `slots` maps a PCI device address (0000:02:00) to its slot name,
    `slot_bridges` to the bridges above it."""
    out: set[str] = set()
    for p in result.pairings:
        out.add(snap.links[p.standby].hw_mac)
    for u in result.unpaired:
        if u.role == "standby":
            out.add(snap.links[u.link].hw_mac)
    wanted_serials = {s.serial for s in cfg.serials}
    wanted_slots = set()
    for ep in cfg.pairs:
        if ep.primary.key == "serial":
            wanted_serials.add(int(ep.primary.value))
        elif ep.primary.key == "slot":
            wanted_slots.add(ep.primary.value)
        elif ep.primary.key == "mac":
            out.add(ep.primary.value)
        elif ep.primary.key == "pci":
            out.add(f"pci-{ep.primary.value}")
    bridges = set(result.bridges)
    for address, slot in slots.items():
        behind = bridges & set((slot_bridges or {}).get(address, ()))
        if slot in wanted_slots or slot_serial(slot) in wanted_serials or behind:
            out.update(f"pci-{address}.{fn}" for fn in range(8))
    out.discard("")
    return out
