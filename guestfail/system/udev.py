"""udev: device properties and processed net events (pyudev).

Events come from udev's own netlink group ("udev" source), so a device is only
reported after udev has run its rules on it: renamed, marked unmanaged.  This
is how guestfail gives udev the time netvsc grants it with VF_TAKEOVER_INT.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

#: properties guestfail keeps in its snapshot (and shows in status)
KEPT = (
    "ID_NET_DRIVER",
    "ID_NET_NAME",
    "ID_NET_NAME_SLOT",
    "ID_NET_NAME_PATH",
    "ID_NET_MANAGED_BY",
    "NM_UNMANAGED",
    "GUESTFAIL_MEMBER",
    "ID_RENAMING",
)


@dataclass(frozen=True)
class UdevEvent:
    action: str
    name: str
    ifindex: int
    t_ns: int


@dataclass(frozen=True)
class UdevInfo:
    initialized: bool
    properties: tuple[tuple[str, str], ...]


class Udev:
    def __init__(self) -> None:
        import pyudev

        self._pyudev = pyudev
        self.context = pyudev.Context()
        self.monitor: Any = None

    def info(self, ifname: str) -> UdevInfo:
        try:
            dev = self._pyudev.Devices.from_name(self.context, "net", ifname)
        except self._pyudev.DeviceNotFoundError:
            return UdevInfo(False, ())
        props = tuple((k, str(dev.properties[k])) for k in KEPT if k in dev.properties)
        initialized = bool(dev.is_initialized) and ("ID_RENAMING", "1") not in props
        return UdevInfo(initialized, props)

    def start_monitor(self) -> int:
        mon = self._pyudev.Monitor.from_netlink(self.context, source="udev")
        mon.filter_by("net")
        try:
            mon.set_receive_buffer_size(4 << 20)
        except (OSError, ValueError) as e:  # needs privileges; the default is smaller
            log.debug("udev receive buffer left as is: %s", e)
        mon.start()
        self.monitor = mon
        return int(mon.fileno())

    def read(self, now_ns: Any) -> tuple[list[UdevEvent], str]:
        """The events queued now, and why events were lost after them, if
        they were ("" if not): the events read first are still good."""
        out: list[UdevEvent] = []
        lost = ""
        while True:
            try:
                dev: Optional[Any] = self.monitor.poll(timeout=0)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    lost = "udev monitor overrun"  # what was queued still comes
                    continue
                if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return out, lost
                raise
            if dev is None:
                return out, lost
            try:
                ifindex = int(dev.properties.get("IFINDEX", "0"))
            except ValueError:
                ifindex = 0
            out.append(UdevEvent(str(dev.action or ""), str(dev.sys_name), ifindex, now_ns()))


def drop_claims(directory: Path, names: Optional[Iterable[str]] = None) -> None:
    """Take back the claims called `names` (all of them when None): the
    devices are guestfail's no longer (a release)."""
    try:
        have = set(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in have if names is None else have & set(names):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


def write_claims(directory: Path, names: Iterable[str]) -> None:
    """One empty file per claim: a MAC (``02:00:00:00:00:11``) or a PCI
    function (``pci-0000:02:00.0``).  The udev rule tests for
    ``claims/$attr{address}`` and ``claims/pci-$id``.  Stale files go."""
    directory.mkdir(parents=True, exist_ok=True)
    want = set(names)
    have = set(os.listdir(directory))
    drop_claims(directory, have - want)
    for name in want - have:
        (directory / name).touch()
