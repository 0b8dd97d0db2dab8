"""The system bus, for any service (dbus-fast; dbus-next has the same API and
is the fallback): synchronous calls from any thread (`BusClient`), owner
changes of well-known names (`NameWatcher`).  Nothing here knows guestfail's
own API (guestfail.agent.server) or the services it talks to
(guestfail.integrations.nmclient, guestfail.backends.team).

Without a D-Bus library this module still imports (the bond backend,
`status`, `check-config` and `release` work without one), and every call
raises `BusError` saying the library is missing.  The rest of guestfail
imports it only where D-Bus is wanted: the library's import costs start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Optional

from guestfail.core.errors import SystemRefused

if TYPE_CHECKING:
    pass

try:
    from dbus_fast import BusType, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus
except ImportError:  # pragma: no cover - the fallback for older distributions
    try:
        from dbus_next import BusType, Message, MessageType, Variant  # type: ignore[no-redef]
        from dbus_next.aio import MessageBus  # type: ignore[no-redef]
    except ImportError:
        MessageBus = None  # type: ignore[assignment,misc]

NO_LIBRARY = "no D-Bus library (python3-dbus-fast) is installed"

log = logging.getLogger(__name__)


class BusError(SystemRefused):
    """A service answered with a D-Bus error, or not at all."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


def _need_library(what: str) -> None:
    if MessageBus is None:
        raise BusError(f"{what}: {NO_LIBRARY}")


class BusClient:
    """Synchronous calls to services on the system bus (teamd,
    NetworkManager), usable from any thread: the connection lives on an event
    loop of its own."""

    def __init__(self, timeout: float = 10.0) -> None:
        import threading

        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gf-dbus-client", daemon=True)
        self._thread.start()
        self._bus: Any = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout + 5)

    async def _connect(self) -> Any:
        if self._bus is None or not self._bus.connected:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        return self._bus

    async def _call(self, msg: Any, what: str) -> list[Any]:
        try:
            bus = await asyncio.wait_for(self._connect(), self.timeout)
        except (OSError, asyncio.TimeoutError, ValueError, EOFError) as e:
            raise BusError(f"{what}: no system bus ({e})") from None
        try:
            reply = await asyncio.wait_for(bus.call(msg), self.timeout)
        except asyncio.TimeoutError:
            raise BusError(f"{what}: no answer within {self.timeout:.0f} s") from None
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            detail = f": {text}" if text else ""
            raise BusError(f"{what} failed: {reply.error_name}{detail}", reply.error_name or "")
        return list(reply.body)

    def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Optional[list[Any]] = None,
        what: str = "",
    ) -> list[Any]:
        what = what or f"{destination} {member}"
        _need_library(what)
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        result: list[Any] = self._run(self._call(msg, what))
        return result

    def start_transient_unit(self, unit: str, properties: list[tuple[str, str, Any]]) -> None:
        """systemd runs a transient unit (properties: (name, signature, value))."""
        _need_library(f"start {unit}")
        props = [(k, Variant(sig, v)) for k, sig, v in properties]
        self.call(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            [unit, "replace", props, []],
            f"start {unit}",
        )

    def unit_state(self, unit: str) -> Optional[str]:
        """A unit's ActiveState ("active", "deactivating", "inactive", ...),
        None if systemd has not loaded it (it did not run in this boot)."""
        try:
            (path,) = self.call(
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "GetUnit",
                "s",
                [unit],
                f"get {unit}",
            )
        except BusError as e:
            if e.name == "org.freedesktop.systemd1.NoSuchUnit":
                return None
            raise
        return str(
            self.get_property(
                "org.freedesktop.systemd1", path, "org.freedesktop.systemd1.Unit", "ActiveState"
            )
        )

    def restart_unit(self, unit: str) -> None:
        """systemctl restart, without waiting for the job."""
        self.call(
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "RestartUnit",
            "ss",
            [unit, "replace"],
            f"restart {unit}",
        )

    def get_property(self, destination: str, path: str, interface: str, name: str) -> Any:
        (value,) = self.call(
            destination, path, "org.freedesktop.DBus.Properties", "Get", "ss", [interface, name]
        )
        return value.value

    def set_property(
        self, destination: str, path: str, interface: str, name: str, sig: str, value: Any
    ) -> None:
        _need_library(f"{destination} set {name}")
        self.call(
            destination,
            path,
            "org.freedesktop.DBus.Properties",
            "Set",
            "ssv",
            [interface, name, Variant(sig, value)],
            f"{destination} set {name}",
        )

    def has_owner(self, name: str) -> bool:
        try:
            (owned,) = self.call(
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                "NameHasOwner",
                "s",
                [name],
            )
        except BusError:
            return False
        return bool(owned)

    def close(self) -> None:
        async def shut() -> None:
            if self._bus is not None:
                self._bus.disconnect()

        with contextlib.suppress(Exception):
            self._run(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class NameWatcher:
    """Calls `callback(name, owned)` on the daemon's loop whenever a
    well-known name on the system bus gains or loses its owner
    (NameOwnerChanged): how the daemon learns that NetworkManager started."""

    def __init__(self, names: list[str], callback: Any) -> None:
        self.names = names
        self.callback = callback
        self.bus: Any = None

    async def start(self) -> None:
        _need_library(f"watching {', '.join(self.names)}")
        self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        for name in self.names:
            rule = (
                "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                f"member='NameOwnerChanged',arg0='{name}'"
            )
            await self.bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[rule],
                )
            )
        self.bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Any) -> None:
        if msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged":
            name, _old, new = msg.body
            if name in self.names:
                self.callback(name, bool(new))

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()
