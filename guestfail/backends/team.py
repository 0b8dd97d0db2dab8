"""The team backend: the same pairs under a team master driven by teamd.

One teamd per master, started with an activebackup runner, its D-Bus
interface on, and --no-quit-destroy so that teamd exiting never removes the
master (the kernel's team driver keeps forwarding on the active port).  The
daemon watches each teamd's pid; when one exits, the pair is reported failed
and the next reconciliation starts teamd again with --take-over: the same
master, never a second one.

teamd chooses by port priority: the primary (VF) gets PRIMARY_PRIO, the
standby 0; a drained pair has equal priorities, so teamd does not switch back
on its own.  guestfail switches at once with runner.active_port.

Port MACs (`hwaddr_policy`): with `[team] hwaddr_policy = "auto"` the pair's
fail_over_mac decides as for the bond: same MACs -> "same_all" (every port
carries the master's MAC), different MACs -> "by_active" (the master takes the
active port's MAC; ports keep theirs, which VFs that may not change their MAC
need).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from guestfail.core.config import Config
from guestfail.core.errors import GuestfailError
from guestfail.core.interfaces import AfterRunOnly, Outcome
from guestfail.core.model import Link
from guestfail.core.plan import master_of
from guestfail.core.steps import CreateMaster
from guestfail.system import processes
from guestfail.system.dbus import BusClient, BusError
from guestfail.system.netlink import Rtnl, ifindex_of

log = logging.getLogger(__name__)

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


PRIMARY_PRIO = 100
HWADDR_BY_FAIL_OVER_MAC = {0: "same_all", 1: "by_active", 2: "only_active"}


def teamd_config(cfg: Config, dev: str, mac: str, fail_over_mac: int) -> dict[str, Any]:
    """teamd's configuration for a pair's master (pure)."""
    policy = cfg.team.hwaddr_policy
    if policy == "auto":
        policy = HWADDR_BY_FAIL_OVER_MAC.get(fail_over_mac, "same_all")
    return {
        "device": dev,
        "hwaddr": mac,
        "runner": {"name": "activebackup", "hwaddr_policy": policy},
        "link_watch": {
            "name": "ethtool",
            "delay_up": cfg.team.link_watch_delay_up,
            "delay_down": cfg.team.link_watch_delay_down,
        },
    }


class TeamBackend:
    kind = "team"

    def __init__(
        self, cfg: Config, netlink: Rtnl, state_dir: Path, client: Optional[TeamdClient] = None
    ) -> None:
        self.cfg = cfg
        self.nl = netlink
        self.configs = state_dir / "teamd"
        self._client = client

    @property
    def client(self) -> TeamdClient:
        if self._client is None:
            self._client = TeamdClient()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # ------------------------------------------------------------ Backend

    def create_master(self, step: CreateMaster) -> int:
        """The device is made here, born with the standby's MAC, and its
        teamd takes it over.  Made by teamd, it was born with a random MAC
        that teamd replaced a moment later; udev's MACAddressPolicy=persistent
        could replace it again after that (seen in the image tier: the master
        kept a MAC of udev's, and its DHCP client got another address).  A
        teamd that does not start leaves no device behind."""
        config = teamd_config(self.cfg, step.name, step.mac, step.fail_over_mac)
        self._save(step.name, config)
        idx = self.nl.create_team(step.name, step.mac, step.mtu)
        try:
            processes.start_teamd(self.cfg.team.teamd, step.name, config, take_over=True)
        except GuestfailError:
            try:
                self.nl.delete_link(idx, step.name)
            except GuestfailError as e:  # teamd's failure is the one to report
                log.warning("%s stays without its teamd: %s", step.name, e)
            raise
        self.nl.set(idx, f"set the alias of {step.name}", ifalias=step.marker)
        return idx

    def adopt_master(self, master: Link, step: CreateMaster) -> None:
        """A team left unmarked by a crash: its teamd (started with the saved
        configuration) is checked by the reconciliation like any other."""
        if self._load(step.name) is None:
            self._save(step.name, teamd_config(self.cfg, step.name, step.mac, step.fail_over_mac))
        self.nl.set(master.ifindex, f"set the MTU of {step.name}", mtu=step.mtu)
        self.nl.set(master.ifindex, f"set the alias of {step.name}", ifalias=step.marker)

    def enslave(self, link: int, name: str, master: int, master_name: str) -> None:
        self.client.call(master_name, "PortAdd", "s", [name])

    def release(self, link: int, name: str, master: int, master_name: str) -> None:
        try:
            self.client.call(master_name, "PortRemove", "s", [name])
        except TeamdError:
            # no teamd to ask: take the port out of the team in the kernel
            self.nl.set_master(link, name, 0, master_name)

    def set_primary(self, master: int, master_name: str, slave: Optional[int], slave_name: str) -> None:
        if slave is not None:
            self._prio(master_name, slave_name, PRIMARY_PRIO)
            return
        for port in self.ports(master_name):
            self._prio(master_name, port, 0)

    def set_active(self, master: int, master_name: str, slave: int, slave_name: str) -> None:
        self.client.call(master_name, "StateItemValueSet", "ss", ["runner.active_port", slave_name])

    def active(self, master: Link) -> Optional[int]:
        try:
            name = self.client.call(master.name, "StateItemValueGet", "s", ["runner.active_port"])
        except TeamdError:
            return None
        return ifindex_of(self.nl, str(name)) if name else None

    def delete_master(self, master: int, master_name: str) -> None:
        pid = processes.teamd_pid(master_name)
        if pid is not None:
            processes.stop(pid)
        self.nl.delete_link(master, master_name)
        (self.configs / f"{master_name}.json").unlink(missing_ok=True)

    # ------------------------------------------------------------ teamd's life

    def ports(self, dev: str) -> list[str]:
        ports = self.client.state(dev).get("ports", {})
        return sorted(ports) if isinstance(ports, dict) else []

    def check(self, master: Link, slaves: list[Link], primary: Optional[int]) -> Optional[str]:
        """Make sure teamd runs for `master`; start it again (taking over the
        device and its ports) if it does not.  Returns what was wrong, if
        anything."""
        if self.client.running(master.name):
            return None
        config = self._load(master.name) or teamd_config(
            self.cfg, master.name, master.mac, 0 if all(s.hw_mac == master.mac for s in slaves) else 1
        )
        config["ports"] = {s.name: {"prio": PRIMARY_PRIO if s.ifindex == primary else 0} for s in slaves}
        processes.start_teamd(self.cfg.team.teamd, master.name, config, take_over=True)
        return f"teamd for {master.name} was not running: started again"

    def pids(self, masters: list[Link]) -> dict[str, int]:
        out = {}
        for m in masters:
            pid = processes.teamd_pid(m.name)
            if pid is not None:
                out[m.name] = pid
        return out

    def _prio(self, dev: str, port: str, prio: int) -> None:
        self.client.call(dev, "PortConfigUpdate", "ss", [port, json.dumps({"prio": prio})])

    def _save(self, dev: str, config: dict[str, Any]) -> None:
        self.configs.mkdir(parents=True, exist_ok=True)
        (self.configs / f"{dev}.json").write_text(json.dumps(config))

    def _load(self, dev: str) -> Optional[dict[str, Any]]:
        try:
            doc = json.loads((self.configs / f"{dev}.json").read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None


class TeamdSupervision(AfterRunOnly):
    """Each team master has its teamd: started again (taking the device
    over) where it is missing; the pids go to the daemon, which watches them."""

    name = "teamd"

    def __init__(self, backend: TeamBackend) -> None:
        self.backend = backend

    def after_run(self, out: Outcome, kept: dict[str, dict[str, Any]]) -> None:
        masters = []
        for p in out.result.pairings:
            master = master_of(p.key, p.standby, out.snap)
            if master is None or master.kind != "team":
                continue
            masters.append(master)
            try:
                note = self.backend.check(master, out.snap.slaves_of(master.ifindex), p.primary)
            except GuestfailError as e:
                out.errors[p.key] = str(e)
                continue
            if note:
                log.warning("%s", note)
        if masters:
            out.pids.update(self.backend.pids(masters))
