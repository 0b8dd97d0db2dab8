"""Ordered removal: pciehp's attention-button records as each kernel
version words them, /dev/kmsg's record format (read from a FIFO standing in
for it), and the daemon on the in-memory kernel moving a pair to its
standby at the press and back at a cancelling second press."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from guestfail.agent.buttons import AttentionButtons
from guestfail.agent.daemon import Daemon
from guestfail.agent.flight import State
from guestfail.core.button import ButtonEvent, button_event
from guestfail.system.kmsg import Kmsg, parse

from .test_daemon import daemon, event, primary_of, reconciled, the_pair
from .test_reconcile import World

PORT = "+pci:0000:00:10.1"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # Linux 6.5 and later
        ("pcieport 0000:00:10.1: pciehp: Slot(5001): Button press: will power off in 5 sec", False),
        ("pcieport 0000:00:10.1: pciehp: Slot(5001): Button press: canceling request to power off", True),
        # Linux 4.2 to 6.4 (Debian 12's 6.1)
        ("pcieport 0000:00:10.1: pciehp: Slot(5001): Powering off due to button press", False),
        ("pcieport 0000:00:10.1: pciehp: Slot(5001): Action canceled due to button press", True),
        # older pciehp, and shpchp
        ("shpchp 0000:01:00.0: PCI slot #5001 - powering off due to button press", False),
        ("shpchp 0000:01:00.0: PCI slot #5001 - action canceled due to button press", True),
    ],
)
def test_every_kernels_wording_of_the_button(text: str, want: bool) -> None:
    assert button_event(0, text, PORT) == ButtonEvent("5001", want, "0000:00:10.1")
    assert ButtonEvent("5001", want).reason() == (
        "attention button on slot 5001 pressed again: removal cancelled"
        if want
        else "attention button on slot 5001"
    )


@pytest.mark.parametrize(
    "text",
    [
        "pcieport 0000:00:10.1: pciehp: Slot(5001): Button press: will power on in 5 sec",
        "pcieport 0000:00:10.1: pciehp: Slot(5001) Powering on due to button press",
        "pcieport 0000:00:10.1: pciehp: Slot(5001): Button cancel",
        "pcieport 0000:00:10.1: pciehp: Slot(5001): Card not present",
    ],
)
def test_other_pciehp_records_are_no_ordered_removal(text: str) -> None:
    assert button_event(0, text) is None


def test_only_the_kernel_can_press_the_button() -> None:
    """What user space writes to /dev/kmsg has facility 1 (user) at least."""
    assert button_event(1, "pciehp: Slot(5001): Powering off due to button press") is None


def test_kmsg_records_are_split_with_their_fields() -> None:
    chunk = (
        b"6,812,51409000,-;pcieport 0000:00:10.1: pciehp: Slot(5001): Powering off due to button press\n"
        b" SUBSYSTEM=pci\n DEVICE=+pci:0000:00:10.1\n"
        b"14,813,51409100,-;a message from user space\n"
    )
    (r1, r2) = parse(chunk)
    assert (r1.facility, r1.level, r1.seq) == (0, 6, 812)
    assert r1.field("DEVICE") == "+pci:0000:00:10.1" and r1.field("SUBSYSTEM") == "pci"
    assert (r2.facility, r2.level, r2.text) == (1, 6, "a message from user space")


def test_kmsg_is_read_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    k = Kmsg(str(fifo))
    w = os.open(fifo, os.O_WRONLY)
    try:
        assert k.read() == ([], 0)
        os.write(
            w, b"6,1,2,-;pcieport 0000:00:10.1: pciehp: Slot(7): Button press: will power off in 5 sec\n"
        )
        (rec,), lost = k.read()
        assert lost == 0 and rec.seq == 1 and "Slot(7)" in rec.text
    finally:
        os.close(w)
        k.close()
    with pytest.raises(FileNotFoundError):
        Kmsg(str(tmp_path / "none"))


# ------------------------------------------------------------------ the daemon


def paired(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.configured_standby()
    w.vf(slot="5001")
    return w


def press(d: Daemon, slot: str = "5001", cancel: bool = False) -> None:
    d.buttons.on_event(ButtonEvent(slot, cancel))


async def settled(d: Daemon) -> None:
    await d.buttons.settle()
    await d.switcher.settle()


def active(w: World) -> str:
    idx = w.link("ens11").bond["active_slave"]
    return str(w.k.links[idx].name)


def test_a_press_moves_the_pair_to_its_standby_and_a_second_press_back(tmp_path: Path) -> None:
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            rec = the_pair(d)
            assert rec.primary_slot == "5001" and active(w) == "ens11npf"
            press(d)
            await settled(d)
            assert active(w) == "ens11nsby" and rec.drained
            assert primary_of(w) is None  # the bond does not go back by itself
            sw = rec.history[-1]
            assert (sw.frm, sw.to, sw.reason, sw.by) == (
                "ens11npf",
                "ens11nsby",
                "attention button on slot 5001",
                "guestfail",
            )
            assert d.status()["pairs"][0]["last_switch"]["reason"] == "attention button on slot 5001"

            n = d.reconciling.runs
            press(d, cancel=True)
            await settled(d)
            assert active(w) == "ens11npf" and not rec.drained
            assert rec.history[-1].reason == "attention button on slot 5001 pressed again: removal cancelled"
            await reconciled(d, n)
            assert primary_of(w) == w.link("ens11npf").ifindex  # preferred again

    asyncio.run(go())


def test_the_signal_carries_the_button_as_the_reason(tmp_path: Path) -> None:
    w = paired(tmp_path)
    seen: list[tuple[str, dict[str, object]]] = []

    async def go() -> None:
        async with daemon(w) as d:
            d.subscribe(lambda name, payload: seen.append((name, payload)))
            press(d)
            await settled(d)

    asyncio.run(go())
    (_name, payload), *_ = [x for x in seen if x[0] == "ActiveChanged"]
    assert payload["reason"] == "attention button on slot 5001" and payload["to"] == "ens11nsby"


def test_the_vf_removed_after_the_press_ends_the_drain(tmp_path: Path) -> None:
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            rec = the_pair(d)
            press(d)
            await settled(d)
            n = d.reconciling.runs
            gone = event(w, "ens11npf")
            w.k.remove(w.link("ens11npf").ifindex)
            d.on_link_event(type(gone)(True, gone.link, gone.t_ns))
            await reconciled(d, n)
            assert not rec.drained and rec.primary is None
            assert d.switcher.flight(rec).drain_timer is None
            assert active(w) == "ens11nsby"
            assert [s.reason for s in rec.history][-1] == "attention button on slot 5001"

    asyncio.run(go())


def test_a_press_elsewhere_or_without_a_standby_changes_nothing(tmp_path: Path) -> None:
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            rec = the_pair(d)
            press(d, "5002")  # another slot
            press(d, "5001", cancel=True)  # a cancel without a press
            await settled(d)
            assert active(w) == "ens11npf" and not rec.drained
            w.k.set_carrier(w.link("ens11nsby").ifindex, False)
            d.on_link_event(event(w, "ens11nsby"))
            press(d)  # nothing to move to
            await settled(d)
            assert active(w) == "ens11npf" and not rec.drained and len(rec.history) == 0

    asyncio.run(go())


def test_the_press_is_read_from_the_kernels_log(tmp_path: Path) -> None:
    """From the log's file descriptor to the switch, through the event loop."""
    w = paired(tmp_path)
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)

    async def go() -> None:
        async with daemon(w) as d:
            buttons = AttentionButtons(d.switcher, d.pairs.values, d.request_reconcile, str(fifo))
            loop = asyncio.get_running_loop()
            buttons.start(loop)
            assert buttons.state == f"watched ({fifo})"
            writer = os.open(fifo, os.O_WRONLY)
            try:
                changed = d.switcher.flight(the_pair(d)).changed
                os.write(
                    writer,
                    b"6,90,5,-;pcieport 0000:00:10.1: pciehp: Slot(5001): Powering off due to button press\n"
                    b" SUBSYSTEM=pci\n DEVICE=+pci:0000:00:10.1\n",
                )
                await asyncio.wait_for(changed.wait(), 10)  # the drain began
                await buttons.settle()
                await d.switcher.settle()
                assert active(w) == "ens11nsby"
            finally:
                os.close(writer)
                buttons.close(loop)

    asyncio.run(go())


def test_a_log_that_cannot_be_read_is_said_in_the_status(tmp_path: Path) -> None:
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            d.buttons.path = str(tmp_path / "no-kmsg")
            d.buttons.start(asyncio.get_running_loop())
            state = d.status()["daemon"]["attention_button"]
            assert state.startswith(f"not seen: {tmp_path / 'no-kmsg'}: No such file or directory")
            assert "handled when it goes" in state

    asyncio.run(go())


def test_a_press_before_the_pair_is_ready_moves_it_once_it_is(tmp_path: Path) -> None:
    """The daemon's records may be a moment behind the kernel (the press
    came while the pair was being built, or the standby had no carrier):
    the press is looked at again as they change, until its slot goes off."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            rec = the_pair(d)
            sby = w.link("ens11nsby").ifindex
            w.k.set_carrier(sby, False)
            d.on_link_event(event(w, "ens11nsby"))
            press(d)
            await settled(d)
            assert not rec.drained and "5001" in d.buttons.waiting
            w.k.set_carrier(sby, True)
            n = d.reconciling.runs
            d.request_reconcile("the standby's carrier is back")
            await reconciled(d, n)
            await settled(d)
            assert rec.drained and active(w) == "ens11nsby" and not d.buttons.waiting
            assert rec.history[-1].reason == "attention button on slot 5001"

            # a press for a slot without a pair is forgotten once the slot went off
            press(d, "5002")
            d.buttons.waiting["5002"] = (d.buttons.waiting["5002"][0], 0.0)  # its 5 s are over
            d.buttons.retry()
            assert "5002" not in d.buttons.waiting

    asyncio.run(go())


def test_a_press_during_a_switch_in_flight_moves_the_pair_once_it_is_answered(tmp_path: Path) -> None:
    """The lab's run: the press came while the reconciliation that built the
    pair had its switch to the VF in flight; the switcher refuses a drain
    beside it, so the press waits for that switch's answer."""
    w = paired(tmp_path)

    async def go() -> None:
        async with daemon(w) as d:
            rec = the_pair(d)
            f = d.switcher.flight(rec)
            f.go(State.SWITCHING, "the reconciliation's switch")
            press(d)
            await asyncio.sleep(0)  # the drain's task runs up to its wait
            task = d.buttons._drains["5001"]
            assert not task.done() and not rec.drained  # waiting, not refused
            f.go(State.STEADY, "answered")
            await settled(d)
            assert rec.drained and active(w) == "ens11nsby"
            assert rec.history[-1].reason == "attention button on slot 5001"

    asyncio.run(go())
