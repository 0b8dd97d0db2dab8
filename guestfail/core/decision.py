"""The state of a pair, and which member should carry the traffic.  Pure.

guestfail's switching is level-triggered: on every event it recomputes the
member that *should* be active from the facts (is the primary enslaved, does
it have carrier, did someone ask to drain it) and compares that with what the
kernel reports.  There is no stored phase to drift from the kernel's truth.

| primary            | carrier | drained | phase        | should be active | health   |
|--------------------|---------|---------|--------------|------------------|----------|
| none               |    -    |    -    | standby-only | standby          | degraded |
| enslaved           |   yes   |   no    | on-primary   | primary          | healthy  |
| enslaved           |   no    |   no    | on-standby   | standby          | degraded |
| enslaved           |    -    |   yes   | draining     | standby          | degraded |
| present, not yet   |    -    |    -    | joining      | standby          | degraded |
| standby without carrier and no usable primary, or a setup error: failed |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class Phase(str, Enum):
    STANDBY_ONLY = "standby-only"
    JOINING = "joining"
    ON_PRIMARY = "on-primary"
    ON_STANDBY = "on-standby"
    DRAINING = "draining"
    FAILED = "failed"


class Health(str, Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


@dataclass(frozen=True)
class Facts:
    standby: int
    standby_carrier: bool
    primary: Optional[int]  # ifindex of the primary if present at all
    primary_enslaved: bool
    primary_carrier: bool
    drained: bool
    active: Optional[int]  # what the kernel reports
    error: str = ""  # the last setup error, if the pair could not be built


@dataclass(frozen=True)
class Decision:
    phase: Phase
    health: Health
    want_active: int
    switch: bool  # the kernel's active member differs from want_active
    why: str


def decide(f: Facts) -> Decision:
    usable_primary = f.primary is not None and f.primary_enslaved and f.primary_carrier and not f.drained
    want = f.primary if usable_primary and f.primary is not None else f.standby
    if f.primary is None:
        phase, why = Phase.STANDBY_ONLY, "no primary"
    elif not f.primary_enslaved:
        phase, why = Phase.JOINING, "primary not enslaved yet"
    elif f.drained:
        phase, why = Phase.DRAINING, "primary drained"
    elif f.primary_carrier:
        phase, why = Phase.ON_PRIMARY, "primary has carrier"
    else:
        phase, why = Phase.ON_STANDBY, "primary lost carrier"

    if f.error:
        phase, health = Phase.FAILED, Health.FAILED
        why = f.error
    elif not f.standby_carrier and not usable_primary:
        health = Health.FAILED
        why = "no member has carrier"
    elif want == f.primary:
        health = Health.HEALTHY
    else:
        health = Health.DEGRADED
    return Decision(phase, health, want, f.active != want, why)
