"""The contracts between the run-time pieces (pure: protocols and data).

* `Backend`: what differs between a bond and a team master
  (guestfail.backends.bond, guestfail.backends.team);
* `Integration`: something outside the kernel that must hear about a pair's
  life, with hooks where the reconciler calls it
  (guestfail.integrations.networkmanager, the team backend's teamd
  supervision);
* `Outcome`: what one reconciliation found and did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from guestfail.core.config import Config
from guestfail.core.match import MatchResult
from guestfail.core.model import Link, Snapshot
from guestfail.core.plan import PairSpec
from guestfail.core.steps import CreateMaster


class Backend(Protocol):
    """What differs between a bond and a team master."""

    kind: str
    cfg: Config

    def create_master(self, step: CreateMaster) -> int: ...

    def enslave(self, link: int, name: str, master: int, master_name: str) -> None: ...

    def release(self, link: int, name: str, master: int, master_name: str) -> None: ...

    def set_primary(self, master: int, master_name: str, slave: Optional[int], slave_name: str) -> None: ...

    def set_active(self, master: int, master_name: str, slave: int, slave_name: str) -> None: ...

    def active(self, master: Link) -> Optional[int]:
        """The active member of `master` (a link just read from the kernel)."""
        ...

    def delete_master(self, master: int, master_name: str) -> None: ...

    def adopt_master(self, master: Link, step: CreateMaster) -> None:
        """Make an unmarked master left by a crash what `step` would have
        created (its marker, and whatever else create_master does after the
        device exists)."""
        ...

    def close(self) -> None:
        """Let go of what the backend holds (connections)."""
        ...


@dataclass
class Outcome:
    """What one reconciliation found and did."""

    snap: Snapshot
    result: MatchResult
    masters: dict[str, Optional[int]] = field(default_factory=dict)  # key -> master ifindex
    active: dict[str, Optional[int]] = field(default_factory=dict)  # key -> kernel's active member
    pids: dict[str, int] = field(default_factory=dict)  # team master -> its teamd
    errors: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    passes: int = 0
    verified: bool = False
    final: bool = False  # the whole run is over (not one pass's observation)
    # names that moved in this run: a standby's name its master took, or a
    # name a released standby got back (what a network configuration that
    # names the link must now follow)
    renamed: set[str] = field(default_factory=set)
    # when the snapshot was begun (monotonic ns): an event read after that is
    # newer than anything the snapshot says
    observed_ns: int = 0


class Integration(Protocol):
    """Something outside the kernel that must hear about a pair's life.
    Hooks run on the reconciler's thread; one that raises GuestfailError is
    logged and never stops the pass."""

    name: str

    def begin(self) -> None:
        """A run starts (e.g. is the service there, did it restart)."""

    def capture(self, spec: PairSpec, snap: Snapshot) -> Optional[dict[str, Any]]:
        """Before guestfail first touches the pair's standby: read what must
        survive a crash (kept in the journal entry under `name`)."""

    def before_touch(self, spec: PairSpec, snap: Snapshot) -> None:
        """Right before the first step on the standby (the journal is written)."""

    def before_enslave(self, spec: PairSpec, master: int, master_name: str, kept: dict[str, Any]) -> None:
        """Once per plan, before the first member joins the master."""

    def after_run(self, out: Outcome, kept: dict[str, dict[str, Any]]) -> None:
        """After the last pass: `kept` maps pair keys to their journal data."""


class AfterRunOnly:
    """The Integration hooks an integration that acts only after a run
    leaves alone (systemd-networkd, ifupdown, teamd's supervision): each
    does nothing.  Subclasses give `name` and `after_run`."""

    def begin(self) -> None:
        pass

    def capture(self, spec: PairSpec, snap: Snapshot) -> Optional[dict[str, Any]]:
        return None

    def before_touch(self, spec: PairSpec, snap: Snapshot) -> None:
        pass

    def before_enslave(self, spec: PairSpec, master: int, master_name: str, kept: dict[str, Any]) -> None:
        pass
