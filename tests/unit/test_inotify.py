"""guestfail.system.inotify: waiting for a path whose parent directories do not exist yet."""

from __future__ import annotations

import asyncio
from pathlib import Path

from guestfail.system.inotify import wait_for_path


def test_returns_at_once_for_an_existing_path(tmp_path: Path) -> None:
    (tmp_path / "sock").touch()
    asyncio.run(asyncio.wait_for(wait_for_path(str(tmp_path / "sock")), 5))


def test_wakes_when_the_path_and_its_parents_are_created(tmp_path: Path) -> None:
    target = tmp_path / "run" / "dbus" / "system_bus_socket"

    async def scenario() -> bool:
        waiter = asyncio.ensure_future(wait_for_path(str(target)))
        await asyncio.sleep(0)  # the watch is on tmp_path now
        (tmp_path / "run").mkdir()
        await asyncio.sleep(0.05)
        assert not waiter.done()
        (tmp_path / "run" / "dbus").mkdir()
        await asyncio.sleep(0.05)
        assert not waiter.done()
        target.touch()
        await asyncio.wait_for(waiter, 5)
        return True

    assert asyncio.run(scenario())


def test_the_bus_address_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from guestfail.system import inotify

    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS", raising=False)
    assert inotify.system_bus_socket() == "/run/dbus/system_bus_socket"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/x/bus,guid=12")
    assert inotify.system_bus_socket() == "/tmp/x/bus"
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:abstract=/tmp/dbus-1")
    assert inotify.system_bus_socket() is None
    assert inotify.system_bus_up()
