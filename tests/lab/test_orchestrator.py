"""lab.orchestrator's decisions that need no QEMU: when QEMU's own failover
let go of the primary, and which frame says the guest uses its new VF."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from lab import frames as f
from lab import orchestrator
from lab.imagelab import Host
from lab.vm import LabError, QmpEvent

GUEST = "02:00:00:00:00:11"
OTHER = "02:00:00:00:00:99"


def run_on(events: list[QmpEvent]) -> Any:
    src = Host(0, Path("/nonexistent"), events=events)
    lab: Any = SimpleNamespace(current=src)
    return orchestrator._Run(lab, orchestrator.Plan(qemu_unplugs=True))


def ev(t: int, name: str, **data: Any) -> QmpEvent:
    return QmpEvent(t, name, data)


def test_qemu_failover_unplug_ends_when_wait_unplug_ends() -> None:
    # QEMU keeps a failover primary to plug it back if the migration fails:
    # no DEVICE_DELETED, the migration leaves wait-unplug instead
    run = run_on(
        [
            ev(10, "MIGRATION", status="setup"),
            ev(11, "UNPLUG_PRIMARY", **{"device-id": "vf0"}),
            ev(12, "MIGRATION", status="wait-unplug"),
            ev(6000, "MIGRATION", status="active"),
            ev(7000, "MIGRATION", status="completed"),
        ]
    )
    assert run._wait_unplug_end(0) == 6000


def test_qemu_failover_without_wait_unplug_is_an_error() -> None:
    run = run_on([ev(10, "MIGRATION", status="setup"), ev(20, "MIGRATION", status="completed")])
    with pytest.raises(LabError, match="no wait-unplug"):
        run._wait_unplug_end(0)
    stuck = run_on([ev(12, "MIGRATION", status="wait-unplug")])
    with pytest.raises(LabError, match="never left wait-unplug"):
        stuck._wait_unplug_end(0)


def rarp(mac: str) -> bytes:
    body = bytes.fromhex("0001080006040003") + bytes.fromhex(mac.replace(":", "")) * 2 + bytes(8)
    return f.ethernet(f.BROADCAST_MAC, mac, f.ETH_P_RARP, body)


def test_guest_frames_on_the_new_vf_not_qemus_rarps() -> None:
    handlers: list[Callable[[str, f.Parsed, bytes], None]] = []

    def on_frame(h: Callable[[str, f.Parsed, bytes], None]) -> Callable[[], None]:
        handlers.append(h)
        return lambda: handlers.remove(h)

    lab: Any = SimpleNamespace(peer=SimpleNamespace(on_frame=on_frame))
    seen = orchestrator._GuestFrames(lab, GUEST.upper(), "vf0@h1")

    def receive(path: str, raw: bytes) -> None:
        for h in list(handlers):
            h(path, f.parse(raw), raw)

    receive("vf0@h1", rarp(GUEST))  # QEMU's announcement of the new NIC
    receive("vf0@h1", rarp(GUEST))
    receive("sb0@h1", f.garp(GUEST, "192.0.2.2"))  # the guest, but on the standby
    receive("vf0@h1", f.garp(OTHER, "192.0.2.9"))  # someone else on that path
    assert (seen.first_ns, seen.rarps) == (0, 2)
    receive("vf0@h1", f.garp(GUEST, "192.0.2.2"))
    assert seen.first_ns > 0 and seen.first_kind == "garp"
    first = seen.first_ns
    receive("vf0@h1", f.garp(GUEST, "192.0.2.2"))
    assert seen.first_ns == first
    seen.close()
    assert handlers == []
