"""Unit tests: no root, no kernel changes, no processes.

Any subprocess started from a unit test fails the test (cloud-init does the
same): the boundary is faked with data (sysfs trees, recorded netlink dumps),
never by running the real tools behind the test's back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from guestfail.core.model import IFF_LOWER_UP, IFF_UP, Link

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def _no_subprocess(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("allow_subprocess"):
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unit test started a process: {args[:1]}")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def link(
    ifindex: int,
    name: str,
    *,
    driver: str = "",
    bus: str = "",
    mac: str = "",
    pci: str = "",
    slot: str = "",
    up: bool = True,
    carrier: bool = True,
    **kw: Any,
) -> Link:
    flags = (IFF_UP if up else 0) | (IFF_LOWER_UP if carrier and up else 0)
    return Link(
        ifindex=ifindex,
        name=name,
        driver=driver,
        bus=bus,
        mac=mac,
        perm_mac=mac,
        pci_address=pci,
        slot=slot,
        flags=flags,
        carrier=carrier,
        **kw,
    )


def virtio(ifindex: int, name: str, mac: str, pci: str = "", **kw: Any) -> Link:
    return link(
        ifindex, name, driver="virtio_net", bus="virtio", mac=mac, pci=pci or f"0000:0{ifindex}:00.0", **kw
    )


def vf(
    ifindex: int, name: str, mac: str, slot: str = "", pci: str = "", driver: str = "mlx5_core", **kw: Any
) -> Link:
    return link(
        ifindex, name, driver=driver, bus="pci", mac=mac, pci=pci or f"0000:1{ifindex}:00.0", slot=slot, **kw
    )
