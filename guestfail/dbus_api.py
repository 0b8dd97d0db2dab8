"""The D-Bus API (dbus-fast; dbus-next has the same API and is the fallback).

Name ``io.github.guestfail1`` on the system bus, object ``/io/github/guestfail1``,
interface ``io.github.guestfail1.Agent``:

* ``Status() -> s``: the status document (JSON), as ``guestfail status --json``;
* ``Rescan() -> s``: observe and reconcile now; answers with the status;
* ``Switch(s pair, s member) -> s``: ``member`` is ``standby``/``primary`` or a
  member's name; answers with the pair (JSON);
* ``PrepareUnplug(s primary, d timeout) -> s``: move the pair to its standby
  and answer once the kernel confirms it, so the VF can be removed without loss;
* signals ``PairCreated(s)``, ``PairRemoved(s)``, ``Refused(s)`` (JSON) and
  ``ActiveChanged(s pair, s from, s to, s reason, d latency_ms)``;
* properties ``Version`` and ``Health``.

Who may do what is the bus policy's job (``packaging/dbus/``): anyone may
read, only root may change.  Errors are ``io.github.guestfail1.Error.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any, Optional

from guestfail.errors import GuestfailError, NotFound, SystemRefused

if TYPE_CHECKING:
    from guestfail.daemon import Daemon

try:
    from dbus_fast import BusType, DBusError, Message, MessageType, Variant
    from dbus_fast.aio import MessageBus
    from dbus_fast.constants import PropertyAccess
    from dbus_fast.service import ServiceInterface, dbus_property, method, signal
except ImportError:  # pragma: no cover - the fallback for older distributions
    from dbus_next import BusType, DBusError, Message, MessageType, Variant  # type: ignore[no-redef]
    from dbus_next.aio import MessageBus  # type: ignore[no-redef]
    from dbus_next.constants import PropertyAccess  # type: ignore[no-redef]
    from dbus_next.service import (  # type: ignore[no-redef]
        ServiceInterface,
        dbus_property,
        method,
        signal,
    )

log = logging.getLogger(__name__)

BUS_NAME = "io.github.guestfail1"
OBJECT_PATH = "/io/github/guestfail1"
INTERFACE = "io.github.guestfail1.Agent"
ERR_NOT_FOUND = "io.github.guestfail1.Error.NotFound"
ERR_REFUSED = "io.github.guestfail1.Error.Refused"
ERR_FAILED = "io.github.guestfail1.Error.Failed"


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
    def __init__(self, daemon: Daemon) -> None:
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
    def __init__(self, daemon: Daemon) -> None:
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
        elif name in ("PairCreated", "PairRemoved", "Refused"):
            getattr(self.iface, name)(json.dumps(payload))

    async def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()


# ------------------------------------------------------------------ client


async def _call(member: str, signature: str, body: list[Any], timeout: float) -> Optional[dict[str, Any]]:
    try:
        bus = await asyncio.wait_for(MessageBus(bus_type=BusType.SYSTEM).connect(), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, EOFError) as e:
        log.debug("no system bus: %s", e)
        return None
    try:
        reply = await asyncio.wait_for(
            bus.call(
                Message(
                    destination=BUS_NAME,
                    path=OBJECT_PATH,
                    interface=INTERFACE,
                    member=member,
                    signature=signature,
                    body=body,
                )
            ),
            timeout,
        )
    except asyncio.TimeoutError:
        raise SystemRefused(f"the daemon did not answer {member} within {timeout:.0f} s") from None
    finally:
        bus.disconnect()
    if reply.message_type == MessageType.ERROR:
        err = reply.error_name or ""
        text = reply.body[0] if reply.body else err
        if err in (
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        ):
            return None
        if err == ERR_NOT_FOUND:
            raise NotFound(text)
        if err == "org.freedesktop.DBus.Error.AccessDenied":
            raise SystemRefused(f"{member}: access denied by the bus policy (only root may do that)")
        raise SystemRefused(f"{member}: {text}")
    doc = json.loads(reply.body[0])
    return doc if isinstance(doc, dict) else None


def call(member: str, signature: str, body: list[Any], timeout: float = 30.0) -> Optional[dict[str, Any]]:
    """Call the daemon; None if there is no bus or no daemon on it."""
    return asyncio.run(_call(member, signature, body, timeout))


def call_status() -> Optional[dict[str, Any]]:
    return call("Status", "", [], timeout=5.0)


# ------------------------------------------------------------------ other services


class BusError(SystemRefused):
    """A service answered with a D-Bus error, or not at all."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name


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
        msg = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
        result: list[Any] = self._run(self._call(msg, what or f"{destination} {member}"))
        return result

    def start_transient_unit(self, unit: str, properties: list[tuple[str, str, Any]]) -> None:
        """systemd runs a transient unit (properties: (name, signature, value))."""
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

    def unit_loaded(self, unit: str) -> bool:
        """Whether systemd has `unit` loaded (it ran, or runs, in this boot)."""
        try:
            self.call(
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
                return False
            raise
        return True

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


# ------------------------------------------------------------------ teamd


TEAMD_NAME = "org.libteam.teamd.{dev}"
TEAMD_PATH = "/org/libteam/teamd"
TEAMD_INTERFACE = "org.libteam.teamd"
TeamdError = BusError


class TeamdClient:
    """teamd's D-Bus interface (``teamd -D``); replies are JSON text."""

    def __init__(self, bus: Optional[BusClient] = None) -> None:
        self.bus = bus or BusClient()

    def call(self, dev: str, member: str, signature: str = "", body: Optional[list[Any]] = None) -> Any:
        reply = self.bus.call(
            TEAMD_NAME.format(dev=dev),
            TEAMD_PATH,
            TEAMD_INTERFACE,
            member,
            signature,
            body,
            f"teamd {dev}: {member}",
        )
        return reply[0] if reply else None

    def running(self, dev: str) -> bool:
        return self.bus.has_owner(TEAMD_NAME.format(dev=dev))

    def state(self, dev: str) -> dict[str, Any]:
        doc = json.loads(self.call(dev, "StateDump"))
        return doc if isinstance(doc, dict) else {}

    def close(self) -> None:
        self.bus.close()


class NameWatcher:
    """Calls `callback(name, owned)` on the daemon's loop whenever a
    well-known name on the system bus gains or loses its owner
    (NameOwnerChanged): how the daemon learns that NetworkManager started."""

    def __init__(self, names: list[str], callback: Any) -> None:
        self.names = names
        self.callback = callback
        self.bus: Any = None

    async def start(self) -> None:
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
