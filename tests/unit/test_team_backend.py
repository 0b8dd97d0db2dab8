"""The team backend's making of a master, against the fake kernel; teamd's
start (a process) is the boundary, recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestfail.backends.team import TeamBackend
from guestfail.core.config import parse
from guestfail.core.errors import SystemRefused
from guestfail.core.steps import CreateMaster
from guestfail.system import processes
from tests.fakekernel import FakeKernel

STEP = CreateMaster(
    name="ens11", kind="team", mac="02:00:00:00:00:11", mtu=1400, marker="guestfail:1 key=k name=ens11"
)


def backend(tmp_path: Path, k: FakeKernel) -> TeamBackend:
    return TeamBackend(parse(f'[agent]\nstate_dir = "{tmp_path}"\nbackend = "team"\n'), k, tmp_path)


def test_the_master_is_born_with_the_standbys_mac_and_teamd_takes_it_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = FakeKernel()
    started: list[dict[str, Any]] = []

    def start_teamd(teamd: str, dev: str, config: dict[str, Any], take_over: bool) -> int:
        held = k.holder_of(dev)
        started.append({"dev": dev, "take_over": take_over, "mac_then": held.mac if held else None})
        return 4242

    monkeypatch.setattr(processes, "start_teamd", start_teamd)
    idx = backend(tmp_path, k).create_master(STEP)
    master = k.links[idx]
    assert (master.kind, master.mac, master.mtu, master.ifalias) == ("team", STEP.mac, 1400, STEP.marker)
    # teamd found the device there, with its MAC, and took it over
    assert started == [{"dev": "ens11", "take_over": True, "mac_then": STEP.mac}]


def test_a_teamd_that_does_not_start_leaves_no_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = FakeKernel()

    def start_teamd(teamd: str, dev: str, config: dict[str, Any], take_over: bool) -> int:
        raise SystemRefused(f"teamd for {dev} failed (exit 1): no")

    monkeypatch.setattr(processes, "start_teamd", start_teamd)
    with pytest.raises(SystemRefused, match="teamd for ens11 failed"):
        backend(tmp_path, k).create_master(STEP)
    assert k.holder_of("ens11") is None
