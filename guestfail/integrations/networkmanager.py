"""NetworkManager as an integration (guestfail.core.interfaces.Integration):
it keeps configuring the guest after a pair is built.  Why and how is in
guestfail.integrations.nmclient, which makes the D-Bus calls."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Callable, Optional

from guestfail.core.config import Config, fail_over_mac_name
from guestfail.core.errors import GuestfailError
from guestfail.core.interfaces import Outcome
from guestfail.core.model import Snapshot
from guestfail.core.plan import PairSpec

log = logging.getLogger(__name__)


def bond_options(miimon: int, fail_over_mac: str, num_peer_notif: int, primary: str) -> dict[str, str]:
    """The bond options of a master's NetworkManager profile: the ones
    guestfail set, so that activating the profile changes nothing."""
    options = {
        "miimon": str(miimon),
        "fail_over_mac": fail_over_mac,
        "primary_reselect": "always",
        "num_grat_arp": str(num_peer_notif),
    }
    if primary:
        options["primary"] = primary
    return options


def dbus_library() -> bool:
    """Is a D-Bus library there (dbus-fast, or dbus-next on older systems)?"""
    return any(importlib.util.find_spec(m) is not None for m in ("dbus_fast", "dbus_next"))


class NetworkManagerIntegration:
    """The standby is NetworkManager's device: it is handed over before
    guestfail touches it and handed back as a bond port; every master gets a
    profile carrying the standby's IP settings (guestfail.nm)."""

    name = "networkmanager"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._nm: Any = None  # guestfail.nm.NetworkManager, made when first needed
        self.active = False
        self.restarted = False
        self._done: set[str] = set()  # masters whose profile is in place
        self._handback: set[str] = set()  # pair keys whose standby NetworkManager let go
        self._ports_checked = False  # every paired standby's port, once per NetworkManager start

    def notify_restart(self) -> None:
        """NetworkManager (re)started (its bus name changed owner)."""
        self.restarted = True

    @staticmethod
    def unavailable() -> Optional[str]:
        """Why this integration cannot work here, if it cannot."""
        if not dbus_library():
            return "NetworkManager support needs a D-Bus library (python3-dbus-fast): not installed"
        return None

    async def watch(self, started: Callable[[], None]) -> Any:
        """Follow NetworkManager's name on the system bus: every (re)start
        makes it read the members' marks again, so the ports are handed back
        (`started` asks for a reconciliation).  Returns the watcher, or None
        when there is no system bus (then NetworkManager cannot run either)."""
        from guestfail.integrations.nmclient import NM
        from guestfail.system.dbus import NameWatcher

        def changed(_name: str, owned: bool) -> None:
            self.notify_restart()
            if owned:
                started()

        watcher = NameWatcher([NM], changed)
        try:
            await watcher.start()
        except (OSError, ValueError, EOFError) as e:
            log.debug("not watching for NetworkManager: %s", e)
            return None
        return watcher

    def _client(self) -> Any:
        if self._nm is None:
            from guestfail.integrations.nmclient import NetworkManager
            from guestfail.system.dbus import BusClient

            self._nm = NetworkManager(BusClient())
        return self._nm

    # ------------------------------------------------------------ hooks

    def begin(self) -> None:
        nm = self._client()
        self.active = bool(nm.running())
        if self.active and self.restarted:
            self.restarted = False
            self._done.clear()
            self._ports_checked = False

    def capture(self, spec: PairSpec, snap: Snapshot) -> Optional[dict[str, Any]]:
        """What NetworkManager applied to the standby, before it goes."""
        if not self.active:
            return None
        from guestfail.integrations.nmclient import settings_to_json

        applied = self._client().applied(snap.links[spec.standby].name)
        return {"applied": settings_to_json(applied)} if applied is not None else None

    def before_touch(self, spec: PairSpec, snap: Snapshot) -> None:
        """NetworkManager lets go of the standby before guestfail touches it."""
        if self.active and self._client().set_managed(snap.links[spec.standby].name, False):
            self._handback.add(spec.key)

    def before_enslave(self, spec: PairSpec, master: int, master_name: str, kept: dict[str, Any]) -> None:
        """NetworkManager takes the master over while it is still empty: it
        detaches the members of a bond it takes over later."""
        if not self.active or master_name in self._done:
            return
        from guestfail.integrations.nmclient import settings_from_json

        options = bond_options(
            self.cfg.bond.miimon, spec.fail_over_mac, self.cfg.bond.num_peer_notif, spec.primary_name or ""
        )
        captured = settings_from_json(kept["applied"]) if "applied" in kept else None
        self._client().ensure_master_profile(master_name, captured, spec.orig_name, spec.mac, options)
        self._done.add(master_name)

    def after_run(self, out: Outcome, kept: dict[str, dict[str, Any]]) -> None:
        """Every master gets its profile, then every standby its port
        profile."""
        if not self.active:
            return
        from guestfail.integrations.nmclient import settings_from_json

        nm = self._client()
        snap = out.snap
        for p in out.result.pairings:
            master = snap.get(out.masters.get(p.key))
            if master is None or master.name in self._done or master.bond is None:
                continue
            sby = snap.links[p.standby]
            orig = (master.marker or {}).get("name", sby.name)
            b = master.bond
            prim = snap.get(b.primary)
            options = bond_options(
                b.miimon, fail_over_mac_name(b.fail_over_mac), b.num_peer_notif, prim.name if prim else ""
            )
            data = kept.get(p.key, {}).get(self.name) or {}
            captured = settings_from_json(data["applied"]) if "applied" in data else None
            try:
                nm.ensure_master_profile(master.name, captured, orig, sby.hw_mac, options)
                self._done.add(master.name)
            except GuestfailError as e:
                log.warning("NetworkManager: no profile for %s: %s", master.name, e)
        self._ports(out)

    def _ports(self, out: Outcome) -> None:
        """Hand back the standbys guestfail took from NetworkManager, as bond
        ports under guestfail's port profile; when NetworkManager (re)starts,
        every paired standby (it reads the member's udev mark then)."""
        nm = self._client()
        everyone = not self._ports_checked
        self._ports_checked = True
        snap = out.snap
        for p in out.result.pairings:
            taken = p.key in self._handback
            if not (taken or everyone):
                continue
            self._handback.discard(p.key)
            sby = snap.get(p.standby)
            master = snap.get(out.masters.get(p.key))
            if sby is None:
                continue
            try:
                if master is None or sby.master != master.ifindex:
                    if taken and nm.set_managed(sby.name, True):
                        log.info("NetworkManager: %s handed back, not paired", sby.name)
                    continue
                if nm.set_managed(sby.name, True):
                    log.info("NetworkManager: %s handed back as a port of %s", sby.name, master.name)
                nm.ensure_port(master.name, sby.name)
            except GuestfailError as e:
                log.warning("NetworkManager: %s not handed back: %s", sby.name, e)
