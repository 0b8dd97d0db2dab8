"""Which NICs sit behind which PCI bridge: the groups the topology rule
(guestfail.core.match) pairs.  Pure.

A hypervisor can mark a standby and its VF as a pair by putting both behind
one PCI(e) bridge, perhaps one with a device ID of its own (the design notes'
"special device ID"), instead of giving them one MAC.  Each NIC's group is
one bridge above it:

* with bridges named in the configuration (``[[topology]] bridge = { pci =
  ... }`` or ``{ id = "vendor:device" }``), the nearest bridge above it that
  one of them names;
* with none named, the nearest bridge above it that has another NIC behind it
  too (a root port or a switch's downstream port holds one slot: the group is
  the switch, or the PCI-PCI bridge, that holds both).

A group with one standby and one primary is a pair; more than that is
ambiguous and refused by the rule.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from guestfail.core.config import Selector
from guestfail.core.model import Bridge, Link


@dataclass
class Group:
    bridge: Bridge
    standbys: list[Link] = field(default_factory=list)
    primaries: list[Link] = field(default_factory=list)


def names_bridge(sel: Selector, bridge: Bridge) -> bool:
    return (sel.key == "pci" and sel.value == bridge.address) or (sel.key == "id" and sel.value == bridge.id)


def group_bridge(link: Link, named: tuple[Selector, ...], below: Counter[str]) -> Optional[Bridge]:
    """The bridge whose group `link` belongs to, if any.  `below` counts the
    NICs behind each bridge (by address)."""
    for bridge in link.bridges:
        if named:
            if any(names_bridge(sel, bridge) for sel in named):
                return bridge
        elif below[bridge.address] >= 2:
            return bridge
    return None


def bridge_groups(named: tuple[Selector, ...], standbys: list[Link], primaries: list[Link]) -> list[Group]:
    """The groups, by bridge address; NICs without one are in none."""
    below: Counter[str] = Counter()
    for link in (*standbys, *primaries):
        below.update(b.address for b in link.bridges)
    groups: dict[str, Group] = {}
    for role, links in (("standby", standbys), ("primary", primaries)):
        for link in links:
            bridge = group_bridge(link, named, below)
            if bridge is None:
                continue
            g = groups.setdefault(bridge.address, Group(bridge))
            (g.standbys if role == "standby" else g.primaries).append(link)
    return [groups[a] for a in sorted(groups)]
