"""Ordered removal: the attention button of a VF's slot was pressed, the
slot goes off in 5 s; the pair moves to its standby now, and back if the
button is pressed again within those 5 s (the removal is cancelled).

The press is seen in the kernel's log (guestfail.system.kmsg; why, and on
which kernels: guestfail.core.button).  Moving is the switcher's drain, as
prepare-unplug's, with the button as its reason; a cancel undoes the drain
and switches back at once.  Where the log cannot be read, `state` says why
and nothing else changes: the VF's removal is handled when it goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, Callable, Optional

from guestfail.agent.flight import State
from guestfail.agent.switcher import Switcher, now_ns
from guestfail.core.button import BUTTON_EXPIRES_S, ButtonEvent, button_event
from guestfail.core.errors import GuestfailError
from guestfail.core.records import PairRecord
from guestfail.system.kmsg import KMSG, Kmsg

log = logging.getLogger(__name__)

#: how long the kernel may take to confirm the switch to the standby
DRAIN_TIMEOUT_S = 5.0
#: pciehp powers the slot off this long after the press
SLOT_OFF_S = 5.0


class AttentionButtons:
    def __init__(
        self,
        switcher: Switcher,
        pairs: Callable[[], Iterable[PairRecord]],
        reconcile: Callable[[str], None],
        path: str = KMSG,
    ) -> None:
        self.switcher = switcher
        self.pairs = pairs
        self.reconcile = reconcile
        self.path = path
        self.kmsg: Optional[Kmsg] = None
        self.state = "not watched"  # for status: daemon.attention_button
        self.pressed: dict[str, str] = {}  # slot -> pair key, between a press and its end
        # slot -> (a press no pair was ready for yet, when its slot goes off)
        self.waiting: dict[str, tuple[ButtonEvent, float]] = {}
        self._drains: dict[str, asyncio.Future[None]] = {}  # slot -> its drain

    # ------------------------------------------------------------ the log

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.kmsg = Kmsg(self.path)
        except OSError as e:
            self.state = f"not seen: {self.path}: {e.strerror or e} (a VF's removal is handled when it goes)"
            log.warning("attention button %s", self.state)
            return
        loop.add_reader(self.kmsg.fileno(), self._readable)
        self.state = f"watched ({self.path})"
        log.info("attention button: %s", self.state)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.kmsg is not None:
            loop.remove_reader(self.kmsg.fileno())
            self.kmsg.close()
            self.kmsg = None

    def _readable(self) -> None:
        assert self.kmsg is not None
        try:
            records, lost = self.kmsg.read()
        except OSError as e:
            log.error("%s: %s; the attention button is no longer watched", self.path, e)
            self.state = f"not seen any more: {self.path}: {e.strerror or e}"
            self.close(asyncio.get_running_loop())
            return
        if lost:
            log.debug("%s: records lost (the ring buffer overran)", self.path)
        for r in records:
            ev = button_event(r.facility, r.text, r.field("DEVICE"))
            if ev is not None:
                self.on_event(ev)

    # ------------------------------------------------------------ events

    def pair_in(self, slot: str) -> Optional[PairRecord]:
        return next((r for r in self.pairs() if r.primary is not None and r.primary_slot == slot), None)

    def on_event(self, ev: ButtonEvent) -> None:
        if ev.cancel:
            self.waiting.pop(ev.slot, None)
            key = self.pressed.pop(ev.slot, None)
            rec = next((r for r in self.pairs() if r.key == key), None) if key else None
            if rec is None:
                log.info("%s: no pair was moved for it", ev.reason())
                return
            self._spawn(ev.slot, self._cancel(rec, ev, self._drains.get(ev.slot)))
            return
        if not self._press(ev):
            # the pair may be a moment behind the kernel (a VF paired a moment
            # ago, a standby's carrier coming back): tried again as the
            # daemon's records change, until the slot goes off
            self.waiting[ev.slot] = (ev, time.monotonic() + SLOT_OFF_S)

    def _press(self, ev: ButtonEvent) -> bool:
        """Move the pair in the slot to its standby, if it can be: True if
        there is nothing more to do about this press."""
        rec = self.pair_in(ev.slot)
        if rec is None or rec.master is None or rec.standby is None or not rec.standby_carrier:
            return False
        self.waiting.pop(ev.slot, None)
        log.info("%s: %s moves to its standby before the slot goes off", ev.reason(), rec.master_name)
        self.pressed[ev.slot] = rec.key
        self._spawn(ev.slot, self._drain(rec, ev))
        return True

    def retry(self) -> None:
        """The daemon's records changed: presses that found no pair ready to
        move are looked at again (until their slot went off)."""
        for slot, (ev, deadline) in list(self.waiting.items()):
            if self._press(ev):
                continue
            if time.monotonic() > deadline:
                del self.waiting[slot]
                rec = self.pair_in(slot)
                if rec is None:
                    log.info("%s: no paired VF there", ev.reason())
                else:
                    log.warning(
                        "%s: %s's standby has no carrier: the VF carried the traffic until it went",
                        ev.reason(),
                        rec.master_name or rec.key,
                    )

    def _spawn(self, slot: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._drains[slot] = task

        def done(t: asyncio.Future[None]) -> None:
            if self._drains.get(slot) is t:
                del self._drains[slot]

        task.add_done_callback(done)

    async def _drain(self, rec: PairRecord, ev: ButtonEvent) -> None:
        # a switch already in flight (the reconciliation's, as a pair is
        # verified) is answered first: the switcher refuses a drain beside it
        f = self.switcher.flight(rec)
        deadline = time.monotonic() + SLOT_OFF_S
        while f.state in (State.SWITCHING, State.DRAINING) and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(f.changed.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        try:
            await self.switcher.drain(rec, DRAIN_TIMEOUT_S, BUTTON_EXPIRES_S, why=ev.reason())
        except GuestfailError as e:
            log.warning("%s: %s", ev.reason(), e)
            self.pressed.pop(ev.slot, None)

    async def _cancel(self, rec: PairRecord, ev: ButtonEvent, before: Optional[asyncio.Future[None]]) -> None:
        """Pressed again: once the drain's own request is back (`before`),
        the pair goes back to its VF at once, and the bond prefers the VF
        again."""
        if before is not None and not before.done():
            await asyncio.wait({before})
        if not rec.drained:
            return
        log.info("%s: %s goes back to its VF", ev.reason(), rec.master_name)
        self.switcher.undrain(rec, ev.reason(), quiet=True)
        self.switcher.evaluate(rec, now_ns(), ev.reason())
        self.reconcile(f"{rec.master_name}: {ev.reason()}")

    async def settle(self) -> None:
        """Until no drain or cancel is in flight (tests)."""
        while self._drains:
            await asyncio.gather(*list(self._drains.values()))
