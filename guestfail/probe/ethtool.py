"""The ethtool ioctl for the probe's report: a netdev's driver, driver
version and firmware version (ETHTOOL_GDRVINFO, what `ethtool -i` shows)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from dataclasses import dataclass

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
# struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32],
# bus_info[32], erom_version[32], reserved2[12], five u32 counters
_DRVINFO = struct.Struct("I32s32s32s32s32s12s5I")


@dataclass(frozen=True)
class DrvInfo:
    driver: str = ""
    version: str = ""
    firmware: str = ""
    bus_info: str = ""


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_drvinfo(raw: bytes) -> DrvInfo:
    f = _DRVINFO.unpack(raw[: _DRVINFO.size])
    return DrvInfo(driver=_text(f[1]), version=_text(f[2]), firmware=_text(f[3]), bus_info=_text(f[4]))


def drvinfo(ifname: str) -> DrvInfo:
    """DrvInfo() if the device does not answer (a virtual device, no permission)."""
    buf = ctypes.create_string_buffer(_DRVINFO.pack(ETHTOOL_GDRVINFO, *([b""] * 6), 0, 0, 0, 0, 0))
    ifreq = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf)).ljust(40, b"\0")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return DrvInfo()
    return parse_drvinfo(buf.raw)
