"""A pair's switch in flight: its states, the transitions between them,
and what a switch carries while it is out (guestfail.agent.switcher drives
it).

Every change of state goes through `Flight.go()`, which checks it against
TRANSITIONS, logs `old -> new`, wakes whoever waits, and cancels the pair's
timer when the state that armed it is left.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional

log = logging.getLogger(__name__)


class State(str, Enum):
    STEADY = "steady"
    SWITCHING = "switching"
    RETRY = "retry"
    DRAINING = "draining"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STEADY: frozenset({State.SWITCHING, State.DRAINING}),
    State.SWITCHING: frozenset({State.STEADY, State.RETRY}),
    State.RETRY: frozenset({State.STEADY, State.SWITCHING, State.DRAINING}),
    State.DRAINING: frozenset({State.STEADY}),
}


class BadTransition(RuntimeError):
    """A transition the table does not have: a bug in guestfail."""


@dataclass
class Flight:
    """One pair's switch in flight."""

    key: str
    state: State = State.STEADY
    # the event that called for the switch (monotonic ns) and why
    since_ns: Optional[int] = None
    why: str = ""
    # another event arrived while a request was out: decide again after it,
    # timed from that event (the first one's time goes with the first switch)
    dirty: bool = False
    later: Optional[tuple[int, str]] = None
    # the request out: its target, the member active when it was decided,
    # and when the kernel reported the target by itself meanwhile (its
    # miimon or its own reselection was first)
    target: Optional[int] = None
    frm: Optional[int] = None
    kernel_ns: Optional[int] = None
    # (previous active, when) while a new primary the bond already made
    # active is still being enslaved
    joining: Optional[tuple[Optional[int], int]] = None
    timer: Optional[asyncio.TimerHandle] = None
    # undoes a drain whose VF was not removed (agent.drain_timeout); lives
    # as long as the drain, not as a state
    drain_timer: Optional[asyncio.TimerHandle] = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def go(self, new: State, why: str) -> None:
        if new == self.state:
            return
        if new not in TRANSITIONS[self.state]:
            raise BadTransition(f"{self.key}: {self.state.value} -> {new.value} ({why})")
        log.debug("%s: %s -> %s (%s)", self.key, self.state.value, new.value, why)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = new
        self.changed.set()
        self.changed = asyncio.Event()

    def arm(self, delay: float, fire: Callable[[], None]) -> None:
        """A timer that belongs to the current state (cancelled on leaving it)."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, fire)

    def pending(self, t_ns: int, why: str) -> None:
        if self.since_ns is None:
            self.since_ns, self.why = t_ns, why

    def pending_later(self, t_ns: int, why: str) -> None:
        """An event that calls for a switch while one is out."""
        if self.since_ns is None:
            self.pending(t_ns, why)
        elif self.later is None:
            self.later = (t_ns, why)

    def next_switch(self) -> None:
        """The switch out is recorded: what came meanwhile is timed from now on."""
        self.since_ns, self.why = self.later if self.later is not None else (None, "")
        self.later = None

    def clear(self) -> None:
        self.since_ns, self.why = None, ""
        self.later = None
