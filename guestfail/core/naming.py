"""Interface names for masters and members.  Pure.

Policy "kernel" (the default) does what net_failover does: the master takes
the standby's name, so the guest's existing network config now configures the
master; the standby becomes ``<name>nsby`` and the primary ``<name>npf``.

Linux names are at most 15 *bytes*.  When ``<name><suffix>`` would be longer,
the name is cut to ``15 - len(suffix) - 4`` bytes (never inside a UTF-8
character) and four hex digits of the CRC-32 of the whole name are put
before the suffix: ``enp0s31f6longer`` -> ``enp0s31`` + ``1b3c`` + ``nsby``.
The result is the same on every run and differs for names that share a prefix.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Optional

from guestfail.core.config import IFNAMSIZ, ifname_problem

STANDBY_SUFFIX = "nsby"
PRIMARY_SUFFIX = "npf"
MAX = IFNAMSIZ - 1
HASH_LEN = 4


def _cut(name: str, max_bytes: int) -> str:
    raw = name.encode("utf-8", "surrogateescape")[:max_bytes]
    # drop a partial UTF-8 sequence at the end
    return raw.decode("utf-8", "ignore")


def with_suffix(base: str, suffix: str) -> str:
    """`base` + `suffix`, shortened by the documented rule to fit 15 bytes."""
    if len((base + suffix).encode("utf-8", "surrogateescape")) <= MAX:
        return base + suffix
    digest = f"{zlib.crc32(base.encode('utf-8', 'surrogateescape')):08x}"[:HASH_LEN]
    head = _cut(base, MAX - len(suffix) - HASH_LEN)
    return head + digest + suffix


def standby_name(base: str) -> str:
    return with_suffix(base, STANDBY_SUFFIX)


def primary_name(base: str) -> str:
    return with_suffix(base, PRIMARY_SUFFIX)


def fit(name: str) -> str:
    """`name` if it is short enough, else cut by the documented rule: its
    first 11 bytes and four hex digits of the CRC-32 of the whole name."""
    return with_suffix(name, "")


def master_from_template(template: str, standby: str, taken: Iterable[str]) -> str:
    """The first name the template gives (n = 0, 1, ...) that is free, cut to
    15 bytes by the documented rule where it is longer.  ValueError when the
    template gives no usable name (checked at config load for its
    characters; here only when every name is taken)."""
    used = set(taken)
    for n in range(1024):
        name = fit(template.format(n=n, standby=standby))
        if ifname_problem(name) is None and name not in used:
            return name
        if "{n" not in template:
            break
    raise ValueError(f"no free master name from template {template!r} for {standby}")


TEMP_PREFIX = "gftmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name[len(TEMP_PREFIX) :].isdigit()


def temp_name(ifindex: int) -> str:
    """Name of a master while it is being set up (before it takes the
    standby's name); unique because the standby's ifindex is."""
    return f"{TEMP_PREFIX}{ifindex}"[:MAX]


def check_free(name: str, owner: Optional[int], names_by_index: dict[int, set[str]]) -> Optional[int]:
    """The ifindex that already holds `name` (as name or altname), unless it
    is `owner` itself; None when the name is free."""
    for idx, names in names_by_index.items():
        if idx != owner and name in names:
            return idx
    return None
