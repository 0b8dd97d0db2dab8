"""Ordered removal (issue 13): with native PCIe hot-plug QEMU's device_del
presses the VF slot's attention button and the guest powers the slot off
5 s later.  guestfail moves the pair to its standby at the press (seen in
the guest kernel's log), so nothing sent from device_del to DEVICE_DELETED
is lost; a second press within the 5 s cancels the removal and the pair
goes back to its VF.  One guest for all of it (the CI budget)."""

from __future__ import annotations

import time

import pytest

from lab import topology
from lab.vm import LabError

from .helpers import STATE_FILE, Guest, replies_on, stream_start, stream_stop


def removal_loses_nothing(g: Guest, master: str, port: str, slot: int, rate: float) -> None:
    """Plug the VF at `port`, stream at `rate`, device_del: nothing sent
    between device_del and DEVICE_DELETED may be lost."""
    npf, nsby = f"{master}npf", f"{master}nsby"
    g.lab.plug("vf0", port=port)
    g.wait_active(master, npf)
    stream = stream_start(g.lab, rate)
    replies_on(g.lab, stream, "vf0", int(rate / 4))
    t0 = time.monotonic_ns()
    took = g.lab.unplug("vf0")  # device_del, then DEVICE_DELETED
    t1 = time.monotonic_ns()
    replies_on(g.lab, stream, "sb0", int(rate / 4))
    report = stream_stop(g.lab, stream)
    window = report.window(t0, t1)
    lost = [(round((r.send_ns - t0) / 1e6), r.sent_path) for r in window.records if r.recv_ns is None]
    assert window.sent > rate * 4, f"the window is the 5 s pciehp waits: {window.sent} sent in {took:.1f} s"
    assert window.lost == 0, f"{rate:g} pps: lost (ms after device_del, path): {lost}"
    assert g.link(master)["linkinfo"]["info_data"]["active_slave"] == nsby
    g.lab.wait_file(STATE_FILE, contains='"primary": null')  # the daemon saw the VF go
    (pair,) = g.state()["pairs"]
    moved = [s for s in pair["history"] if s["reason"] == f"attention button on slot {slot}"]
    assert moved and (moved[-1]["from"], moved[-1]["to"], moved[-1]["by"]) == (npf, nsby, "guestfail")
    assert pair["drained"] is False and pair["primary"] is None  # the VF is gone: the drain did its job


@pytest.mark.basic
def test_the_attention_button_moves_the_pair_before_the_slot_goes_off(boot) -> None:  # type: ignore[no-untyped-def]
    g: Guest = boot(topology.basic(hotplug="native", with_other=False))
    master = g.setup_standby()
    g.start_agent()
    assert g.state()["daemon"]["attention_button"] == "watched (/dev/kmsg)"
    npf = f"{master}npf"

    removal_loses_nothing(g, master, "p2", 5001, 200)
    removal_loses_nothing(g, master, "p3", 5002, 1000)

    # a second press within the 5 s cancels the removal: back to the VF
    g.lab.plug("vf0", port="p2", second=True)
    g.wait_active(master, npf)
    stream = stream_start(g.lab, 200)
    replies_on(g.lab, stream, "vf0", 50)
    t0 = time.monotonic_ns()
    g.lab.qmp("device_del", {"id": "vf0"})  # the first press
    g.lab.press_again("vf0")  # within the 5 s: no waiting in between
    g.wait_active(master, npf, timeout=8)
    # the slot would have gone off 5 s after the first press: it stays
    with pytest.raises(LabError, match="no QMP event DEVICE_DELETED"):
        g.lab.wait_qmp_event("DEVICE_DELETED", after_ns=t0, timeout=8)
    replies_on(g.lab, stream, "vf0", 100)  # the VF carries the traffic again
    report = stream_stop(g.lab, stream)
    assert report.window(t0, time.monotonic_ns()).lost == 0
    assert g.link(npf)["master"] == master
    (pair,) = g.state()["pairs"]
    assert (pair["active"], pair["drained"], pair["state"]) == (npf, False, "healthy")
    reasons = [s["reason"] for s in pair["history"][-2:]]
    assert reasons == [
        "attention button on slot 5001",
        "attention button on slot 5001 pressed again: removal cancelled",
    ]
    assert g.link(master)["linkinfo"]["info_data"]["primary"] == npf  # preferred again
