"""What the daemon is made of, chosen by the configuration: the backend
that drives its masters, and whether NetworkManager is worked with."""

from __future__ import annotations

from pathlib import Path

from guestfail.backends.bond import BondBackend
from guestfail.core.config import Config
from guestfail.core.errors import SystemRefused
from guestfail.core.interfaces import Backend
from guestfail.integrations.networkmanager import dbus_library
from guestfail.system.netlink import Rtnl
from guestfail.system.sysfs import Sysfs


def make_backend(cfg: Config, nl: Rtnl, sysfs: Sysfs, state_dir: Path) -> Backend:
    if cfg.backend == "team":
        if not dbus_library():
            raise SystemRefused(
                "agent.backend = team drives teamd over D-Bus, and no D-Bus library "
                "(python3-dbus-fast) is installed"
            )
        from guestfail.backends.team import TeamBackend

        return TeamBackend(cfg, nl, state_dir)
    return BondBackend(cfg, nl, sysfs)


def networkmanager_wanted(cfg: Config) -> bool:
    # a team profile in NetworkManager would start a teamd of its own
    return cfg.networkmanager == "auto" and cfg.backend == "bond"
