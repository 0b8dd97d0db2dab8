"""The steps a plan is made of (pure data): each changes one thing in the
kernel, and the executor (guestfail.agent.executor) runs them in order.

Steps refer to links by ifindex, or by name for a master that does not exist
yet; the executor resolves names when it runs the step.  Every step is safe
to repeat: the executor treats "already so" as done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from guestfail.core.model import Address, Route

Ref = Union[int, str]  # ifindex, or the name of a master being built


@dataclass(frozen=True)
class CreateMaster:
    name: str
    kind: str  # "bond" | "team"
    mac: str
    mtu: int
    marker: str
    fail_over_mac: int = 0
    # members that may hold `name` as an altname (see Rename)
    reclaim_from: tuple[int, ...] = ()
    # the journal says guestfail was creating this master when it died: an
    # unmarked device of this kind and name is its own, taken over and marked
    adopt_unmarked: bool = False


@dataclass(frozen=True)
class SetDown:
    link: Ref


@dataclass(frozen=True)
class SetUp:
    link: Ref


@dataclass(frozen=True)
class Rename:
    link: Ref
    name: str
    keep_altname: str = ""
    # links of this pair that may hold `name` as an altname (udev gives a
    # renamed standby its old name as altname): the executor takes it back
    reclaim_from: tuple[int, ...] = ()


@dataclass(frozen=True)
class Enslave:
    link: Ref
    master: Ref


@dataclass(frozen=True)
class Release:
    link: Ref


@dataclass(frozen=True)
class SetMac:
    """Give a primary the standby's MAC (the topology rule), or its own back.
    A VF may refuse (an untrusted VF's MAC is the host's to set): the
    executor notes that and goes on, and the pair works with the bond's
    fail_over_mac=active instead."""

    link: Ref
    mac: str


@dataclass(frozen=True)
class SetPrimary:
    master: Ref
    slave: Optional[Ref]


@dataclass(frozen=True)
class MoveAddresses:
    src: Ref
    dst: Ref
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class AddAddresses:
    """Put addresses and routes (from the journal) on a link: what a crash
    took from it."""

    link: Ref
    addresses: tuple[Address, ...]
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class DeleteMaster:
    master: Ref


Step = Union[
    CreateMaster,
    SetDown,
    SetUp,
    Rename,
    Enslave,
    Release,
    SetMac,
    SetPrimary,
    MoveAddresses,
    AddAddresses,
    DeleteMaster,
]
