"""The command line's side of guestfail's D-Bus API (guestfail.agent.server
is the daemon's): one call, synchronous, None when there is no bus or no
daemon on it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from typing import Any, Optional

from guestfail.core.errors import NotFound, SystemRefused

log = logging.getLogger(__name__)

BUS_NAME = "io.github.guestfail1"
OBJECT_PATH = "/io/github/guestfail1"
INTERFACE = "io.github.guestfail1.Agent"
ERR_NOT_FOUND = "io.github.guestfail1.Error.NotFound"


def available() -> bool:
    """Is a D-Bus library there (else there is no daemon to ask)?"""
    return any(importlib.util.find_spec(m) is not None for m in ("dbus_fast", "dbus_next"))


async def _call(member: str, signature: str, body: list[Any], timeout: float) -> Optional[dict[str, Any]]:
    try:
        from dbus_fast import BusType, Message, MessageType
        from dbus_fast.aio import MessageBus
    except ImportError:  # pragma: no cover - the fallback for older distributions
        from dbus_next import BusType, Message, MessageType  # type: ignore[no-redef]
        from dbus_next.aio import MessageBus  # type: ignore[no-redef]

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
