"""Waiting for a file to appear, woken by inotify (no polling).

The daemon starts before the system bus at boot (its unit is ordered before
network-pre.target, the bus socket comes after sysinit.target) and connects to
the bus once its socket exists: `wait_for_path(SYSTEM_BUS_SOCKET)`.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from typing import Optional

SYSTEM_BUS_SOCKET = "/run/dbus/system_bus_socket"


def system_bus_socket() -> Optional[str]:
    """The system bus's socket path: DBUS_SYSTEM_BUS_ADDRESS's unix:path= if
    set (None for another kind of address: nothing to wait for), else the
    standard one."""
    address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if not address:
        return SYSTEM_BUS_SOCKET
    for part in address.split(";")[0].split(":", 1)[-1].split(","):
        if part.startswith("path="):
            return part[len("path=") :]
    return None


def system_bus_up() -> bool:
    """Whether the system bus can be connected to (its socket exists)."""
    path = system_bus_socket()
    return path is None or os.path.exists(path)


IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_DELETE_SELF = 0x400
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")


def _libc() -> ctypes.CDLL:
    # the C library the interpreter is linked with (find_library would run ldconfig)
    return ctypes.CDLL(None, use_errno=True)


class _Watch:
    """One inotify instance watching the nearest existing ancestor of a path."""

    def __init__(self) -> None:
        self.libc = _libc()
        fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.wd: Optional[int] = None

    def watch_nearest(self, path: str) -> None:
        """Watch the deepest existing directory on the way to `path`."""
        d = os.path.dirname(path)
        while not os.path.isdir(d):
            d = os.path.dirname(d)
        if self.wd is not None:
            self.libc.inotify_rm_watch(self.fd, self.wd)
        wd = self.libc.inotify_add_watch(self.fd, d.encode(), IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
        self.wd = wd

    def drain(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


async def wait_for_path(path: str) -> None:
    """Return once `path` exists (its parent directories may not exist yet)."""
    if os.path.exists(path):
        return
    loop = asyncio.get_running_loop()
    w = _Watch()
    woken = asyncio.Event()
    loop.add_reader(w.fd, woken.set)
    try:
        while True:
            w.watch_nearest(path)
            if os.path.exists(path):  # created between the check and the watch
                return
            await woken.wait()
            woken.clear()
            w.drain()
    finally:
        loop.remove_reader(w.fd)
        w.close()
