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


def match(cfg: Config, snap: Snapshot) -> MatchResult:
    res = MatchResult()
    res.kernel_managed = kernel_managed(snap)
    kernel_owned = {km.master for km in res.kernel_managed}
    for km in res.kernel_managed:
        kernel_owned.update(km.members)

    orig = _original_names(snap)
    standbys: list[Link] = []
    primaries: list[Link] = []
    for link in sorted(snap.links.values(), key=lambda x: x.ifindex):
        if link.ifindex in kernel_owned:
            continue
        if link.ifindex in snap.unstable:
            res.ignored.append((link.ifindex, "renamed while it was read: looked at again"))
            continue
        role, _ = classify(link, cfg, snap)
        if role is None:
            continue
        if _ignored(link, cfg, orig.get(link.ifindex) if role == "standby" else None):
            res.ignored.append((link.ifindex, "listed in agent.ignore"))
            continue
        master = snap.get(link.master)
        if master is not None and not is_ours(master):
            res.ignored.append((link.ifindex, f"enslaved to {master.name}, which guestfail did not create"))
            continue
        if role == "primary" and not link.udev_initialized:
            res.ignored.append((link.ifindex, "udev has not finished with it yet"))
            continue
        (standbys if role == "standby" else primaries).append(link)

    claimed_sby: dict[int, tuple[int, str]] = {}  # standby -> (primary, rule)
    decided: dict[int, Pairing] = {}  # primary -> pairing
    refused: set[int] = set()
    explicit_sby: dict[int, ExplicitPair] = {}

    def refuse(links: list[Link], reason: str) -> None:
        res.refusals.append(Refusal(tuple(x.ifindex for x in links), reason))
        refused.update(x.ifindex for x in links)

    # 1. explicit pairs
    claims: dict[int, list[tuple[ExplicitPair, Link]]] = defaultdict(list)
    for ep in cfg.pairs:
        sbys = _select_standby(ep.standby, standbys, orig)
        if len(sbys) > 1:
            refuse(sbys, f"pair {ep.label!r}: standby {ep.standby.describe()} matches {_names(sbys)}")
            continue
        if not sbys:
            continue
        explicit_sby[sbys[0].ifindex] = ep
        prims = _select_primary(ep.primary, primaries)
        if len(prims) > 1:
            refuse(prims, f"pair {ep.label!r}: primary {ep.primary.describe()} matches {_names(prims)}")
            continue
        if prims:
            claims[prims[0].ifindex].append((ep, sbys[0]))
    for pidx, cl in claims.items():
        prim = snap.links[pidx]
        if len(cl) > 1:
            refuse([prim], f"claimed by pairs {', '.join(repr(ep.label) for ep, _ in cl)}")
            continue
        ep, sby = cl[0]
        decided[pidx] = Pairing(
            standby_key(sby),
            sby.ifindex,
            pidx,
            "explicit",
            f"pair {ep.label!r}: standby {ep.standby.describe()}, primary {ep.primary.describe()}",
            label=ep.label,
            explicit=ep,
            require_same_mac=False,
        )
        claimed_sby[sby.ifindex] = (pidx, "explicit")

    # 2. serial
    if "serial" in cfg.rules and cfg.serials:
        by_serial = {st.serial: st for st in cfg.serials}
        for prim in primaries:
            if prim.ifindex in decided or prim.ifindex in refused or not prim.slot:
                continue
            serial = slot_serial(prim.slot)
            st = by_serial.get(serial) if serial is not None else None
            if st is None:
                continue
            sbys = _select_standby(st.standby, standbys, orig)
            if len(sbys) != 1:
                if len(sbys) > 1:
                    refuse(
                        [prim, *sbys],
                        f"serial {serial}: standby {st.standby.describe()} matches {_names(sbys)}",
                    )
                continue
            sby = sbys[0]
            if sby.ifindex in explicit_sby:
                refuse(
                    [prim],
                    f"serial {serial} names {sby.name}, which pair "
                    f"{explicit_sby[sby.ifindex].label!r} already claims",
                )
                continue
            if sby.ifindex in claimed_sby:
                other = snap.links[claimed_sby[sby.ifindex][0]]
                refuse([prim], f"serial {serial} names {sby.name}, already paired with {other.name}")
                continue
            if st.require_mac and prim.hw_mac != sby.hw_mac:
                refuse(
                    [prim, sby],
                    f"serial {serial} ties {prim.name} to {sby.name}, but their MACs differ "
                    f"({prim.hw_mac} vs {sby.hw_mac})",
                )
                continue
            decided[prim.ifindex] = Pairing(
                standby_key(sby),
                sby.ifindex,
                prim.ifindex,
                "serial",
                f"slot {prim.slot} is the serial of {sby.name}"
                + (" and the MACs agree" if prim.hw_mac == sby.hw_mac else ""),
                require_same_mac=prim.hw_mac == sby.hw_mac,
            )
            claimed_sby[sby.ifindex] = (prim.ifindex, "serial")

    # 3. MAC
    if "mac" in cfg.rules:
        sby_by_mac: dict[str, list[Link]] = defaultdict(list)
        for s in standbys:
            sby_by_mac[s.hw_mac].append(s)
        prim_by_mac: dict[str, list[Link]] = defaultdict(list)
        for p in primaries:
            if p.ifindex not in decided and p.ifindex not in refused:
                prim_by_mac[p.hw_mac].append(p)
        for mac, prims in prim_by_mac.items():
            sbys = sby_by_mac.get(mac, [])
            if not sbys:
                for p in prims:
                    res.unpaired.append(Unpaired(p.ifindex, "primary", f"no standby has MAC {mac}"))
                continue
            # a pair guestfail already built with this MAC stays as it is: a
            # newcomer with the same MAC is refused, not the working pair
            built = _built_pair(snap, sbys, prims)
            if built is not None:
                sby, prim = built
                others = [p for p in prims if p.ifindex != prim.ifindex]
                if others:
                    refuse(others, f"MAC {mac} is already paired: {sby.name} with {prim.name}")
            elif len(sbys) > 1:
                refuse(prims, f"MAC {mac} belongs to {len(sbys)} standbys ({_names(sbys)})")
                continue
            elif len(prims) > 1:
                refuse(prims, f"MAC {mac} belongs to {len(prims)} primaries ({_names(prims)})")
                continue
            else:
                sby, prim = sbys[0], prims[0]
            if sby.ifindex in explicit_sby and sby.ifindex not in claimed_sby:
                refuse([prim], f"{sby.name} is reserved by pair {explicit_sby[sby.ifindex].label!r}")
                continue
            if sby.ifindex in claimed_sby:
                other_idx, rule = claimed_sby[sby.ifindex]
                refuse(
                    [prim],
                    f"{sby.name} is already paired with {snap.links[other_idx].name} by {rule}",
                )
                continue
            decided[prim.ifindex] = Pairing(
                standby_key(sby),
                sby.ifindex,
                prim.ifindex,
                "mac",
                f"permanent MAC {mac} is the same",
            )
            claimed_sby[sby.ifindex] = (prim.ifindex, "mac")
    else:
        for p in primaries:
            if p.ifindex not in decided and p.ifindex not in refused:
                res.unpaired.append(Unpaired(p.ifindex, "primary", "no rule matches it"))

    res.pairings.extend(sorted(decided.values(), key=lambda p: p.standby))

    # Standbys without a primary now: served if guestfail already has a master
    # for them (enslaved, or named in a master's marker after an interrupted
    # setup), or the policy says to build masters from the start.
    our_keys = {(x.marker or {}).get("key") for x in snap.links.values() if is_ours(x)}
    for sby in standbys:
        if sby.ifindex in claimed_sby:
            continue
        sby_ep = explicit_sby.get(sby.ifindex)
        master = snap.get(sby.master)
        if is_ours(master) or standby_key(sby) in our_keys or cfg.master_policy == "from-start":
            res.pairings.append(
                Pairing(
                    standby_key(sby),
                    sby.ifindex,
                    None,
                    "explicit" if sby_ep else "",
                    "waiting for its primary",
                    label=sby_ep.label if sby_ep else "",
                    explicit=sby_ep,
                    require_same_mac=sby_ep is None,
                )
            )
        elif sby.ifindex not in refused:
            res.unpaired.append(Unpaired(sby.ifindex, "standby", "no primary yet"))
    res.pairings.sort(key=lambda p: p.standby)
    return res


def claims(cfg: Config, snap: Snapshot, result: MatchResult, slots: dict[str, str]) -> set[str]:
    """What the udev rule may mark before the device appears: the MAC of every
    standby guestfail serves or may serve, and the PCI functions of the slots
    the config ties to a standby (by serial or slot) or names outright.
    `slots` maps a PCI device address (0000:02:00) to its slot name."""
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
    for address, slot in slots.items():
        if slot in wanted_slots or slot_serial(slot) in wanted_serials:
            out.update(f"pci-{address}.{fn}" for fn in range(8))
    out.discard("")
    return out
