"""The bond backend: an active-backup bond, configured over netlink (sysfs
where pyroute2 has no mapping).  Implements guestfail.core.interfaces.Backend."""

from __future__ import annotations

import logging
from typing import Optional

from guestfail.core.config import Config
from guestfail.core.model import Link
from guestfail.core.steps import CreateMaster
from guestfail.system.netlink import Rtnl
from guestfail.system.sysfs import Sysfs

log = logging.getLogger(__name__)


class BondBackend:
    """An active-backup bond, configured over netlink (sysfs where pyroute2
    has no mapping)."""

    kind = "bond"

    def __init__(self, cfg: Config, netlink: Rtnl, sysfs: Sysfs) -> None:
        self.cfg = cfg
        self.nl = netlink
        self.sysfs = sysfs

    def create_master(self, step: CreateMaster) -> int:
        opts = self.cfg.bond
        idx = self.nl.create_bond(
            step.name,
            step.mac,
            step.mtu,
            miimon=opts.miimon,
            fail_over_mac=step.fail_over_mac,
            num_peer_notif=opts.num_peer_notif,
            all_slaves_active=1 if opts.all_slaves_active == "on" else 0,
        )
        self._finish(idx, step)
        return idx

    def _finish(self, idx: int, step: CreateMaster) -> None:
        self.nl.set(idx, f"set the alias of {step.name}", ifalias=step.marker)
        # The first notification after a switch goes out at once; later ones
        # (num_peer_notif > 1) one per miimon tick.  0 = miimon's default.
        try:
            self.sysfs.set_bonding_option(step.name, "peer_notif_delay", "0")
        except OSError as e:  # kernels before 5.7 have no such option
            log.debug("peer_notif_delay not set on %s: %s", step.name, e)

    def adopt_master(self, master: Link, step: CreateMaster) -> None:
        self._finish(master.ifindex, step)

    def close(self) -> None:
        pass

    def enslave(self, link: int, name: str, master: int, master_name: str) -> None:
        self.nl.set_master(link, name, master, master_name)

    def release(self, link: int, name: str, master: int, master_name: str) -> None:
        self.nl.set_master(link, name, 0, master_name)

    def set_primary(self, master: int, master_name: str, slave: Optional[int], slave_name: str) -> None:
        what = (
            f"make {slave_name} the primary of {master_name}"
            if slave
            else f"clear the primary of {master_name}"
        )
        self.nl.set_bond(master, what, bond_primary=slave or 0)

    def set_active(self, master: int, master_name: str, slave: int, slave_name: str) -> None:
        self.nl.set_bond(master, f"make {slave_name} active in {master_name}", bond_active_slave=slave)

    def active(self, master: Link) -> Optional[int]:
        return master.bond.active_slave if master.bond is not None else None

    def delete_master(self, master: int, master_name: str) -> None:
        self.nl.delete_link(master, master_name)
