"""guestfail's D-Bus API (dbus-fast; dbus-next has the same API and is the
fallback).

Name ``io.github.guestfail1`` on the system bus, object ``/io/github/guestfail1``,
interface ``io.github.guestfail1.Agent``:

* ``Status() -> s``: the status document (JSON), as ``guestfail status --json``;
* ``Rescan() -> s``: observe and reconcile now; answers with the status;
* ``Switch(s pair, s member) -> s``: ``member`` is ``standby``/``primary`` or a
  member's name; answers with the pair (JSON);
* ``PrepareUnplug(s primary, d timeout) -> s``: move the pair to its standby
  and answer once the kernel confirms it, so the VF can be removed without loss;
* signals ``PairCreated(s)``, ``Paired(s)`` (a primary joined: its rule and
  why), ``PairRemoved(s)``, ``Refused(s)`` (JSON) and
  ``ActiveChanged(s pair, s from, s to, s reason, d latency_ms)``;
* properties ``Version`` and ``Health``.

The server knows the daemon only as `Commands`.  Who may do what is the bus
policy's job (``packaging/dbus/``): anyone may read, only root may change.
Errors are ``io.github.guestfail1.Error.*``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Protocol

from guestfail.core.errors import GuestfailError, NotFound, SystemRefused

try:
    from dbus_fast import BusType, DBusError
    from dbus_fast.aio import MessageBus
    from dbus_fast.constants import PropertyAccess
    from dbus_fast.service import ServiceInterface, dbus_property, method, signal
except ImportError:  # pragma: no cover - the fallback for older distributions
    from dbus_next import BusType, DBusError  # type: ignore[no-redef]
    from dbus_next.aio import MessageBus  # type: ignore[no-redef]
    from dbus_next.constants import PropertyAccess  # type: ignore[no-redef]
    from dbus_next.service import ServiceInterface, dbus_property, method, signal  # type: ignore[no-redef]

log = logging.getLogger(__name__)

BUS_NAME = "io.github.guestfail1"
OBJECT_PATH = "/io/github/guestfail1"
INTERFACE = "io.github.guestfail1.Agent"
ERR_NOT_FOUND = "io.github.guestfail1.Error.NotFound"
ERR_REFUSED = "io.github.guestfail1.Error.Refused"
ERR_FAILED = "io.github.guestfail1.Error.Failed"


class Commands(Protocol):
    """What the D-Bus API asks of the daemon."""

    def status(self) -> dict[str, Any]: ...

    async def rescan(self) -> None: ...

    async def set_member(self, pair: str, member: str) -> dict[str, Any]: ...

    async def prepare_unplug(self, primary: str, timeout: float = 5.0) -> dict[str, Any]: ...

    def subscribe(self, fn: Callable[[str, dict[str, Any]], None]) -> None: ...


def _dbus_error(e: GuestfailError) -> DBusError:
    name = (
        ERR_NOT_FOUND
        if isinstance(e, NotFound)
        else ERR_REFUSED
        if isinstance(e, SystemRefused)
        else ERR_FAILED
    )
    return DBusError(name, str(e))


class AgentInterface(ServiceInterface):
    def __init__(self, daemon: Commands) -> None:
        super().__init__(INTERFACE)
        self.daemon = daemon

    @method()
    def Status(self) -> "s":
        return json.dumps(self.daemon.status())

    @method()
    async def Rescan(self) -> "s":
        await self.daemon.rescan()
        return json.dumps(self.daemon.status())

    @method()
    async def Switch(self, pair: "s", member: "s") -> "s":
        try:
            return json.dumps(await self.daemon.set_member(pair, member))
        except GuestfailError as e:
            raise _dbus_error(e) from None

    @method()
    async def PrepareUnplug(self, primary: "s", timeout: "d") -> "s":
        try:
            return json.dumps(await self.daemon.prepare_unplug(primary, max(0.1, min(timeout, 60.0))))
        except asyncio.TimeoutError:
            raise DBusError(ERR_FAILED, f"{primary}: not drained within {timeout} s") from None
        except GuestfailError as e:
            raise _dbus_error(e) from None

    @signal()
    def PairCreated(self, payload: str) -> "s":
        return payload

    @signal()
    def Paired(self, payload: str) -> "s":
        return payload

    @signal()
    def PairRemoved(self, payload: str) -> "s":
        return payload

    @signal()
    def Refused(self, payload: str) -> "s":
        return payload

    @signal()
    def ActiveChanged(self, pair: str, frm: str, to: str, reason: str, latency_ms: float) -> "ssssd":
        return [pair, frm, to, reason, latency_ms]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        from guestfail import __version__

        return __version__

    @dbus_property(access=PropertyAccess.READ)
    def Health(self) -> "s":
        return str(self.daemon.status()["health"])


class DBusService:
    def __init__(self, daemon: Commands) -> None:
        self.daemon = daemon
        self.bus: Any = None
        self.iface = AgentInterface(daemon)

    async def start(self) -> None:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        self.bus.export(OBJECT_PATH, self.iface)
        await self.bus.request_name(BUS_NAME)
        self.daemon.subscribe(self._on_event)
        log.info("D-Bus: %s on the system bus", BUS_NAME)

    def _on_event(self, name: str, payload: dict[str, Any]) -> None:
        if name == "ActiveChanged":
            lat = payload.get("latency_ms")
            self.iface.ActiveChanged(
                payload["pair"],
                payload["from"],
                payload["to"],
                payload["reason"],
                float(lat if lat is not None else -1),
            )
        elif name in ("PairCreated", "Paired", "PairRemoved", "Refused"):
            getattr(self.iface, name)(json.dumps(payload))

    async def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
