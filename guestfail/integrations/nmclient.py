"""NetworkManager keeps configuring the guest after a pair is built.

net_failover's master is a plain Ethernet device with the standby's name, so
a NetworkManager profile "DHCP on ens11" simply follows it.  A bond master is
not Ethernet: NetworkManager will not activate an ethernet profile on it, and
it would leave the master "connected (externally)" with nobody renewing the
lease.  So, over NetworkManager's D-Bus API (never by writing its files),
guestfail gives each master a profile of its own:

* type bond, interface-name = the master, the bond options guestfail set (so
  activation changes nothing), never autoconnected, kept in memory only (it
  goes with a reboot or `guestfail release`, and guestfail makes it again);
* its IPv4 and IPv6 settings are those of the profile that was active on the
  standby when the pair was built; failing that, of a stored ethernet profile
  for the standby (by interface name or MAC); failing that, DHCP and SLAAC,
  which is what NetworkManager's automatic "Wired connection" does;
* the members carry NM_UNMANAGED (the udev rule).  A VF is claimed before it
  appears, so NetworkManager never manages it.  NetworkManager reads that
  mark only when a device appears, and the standby was its own device, with
  the user's profile active on it: left alone, NetworkManager keeps running
  that profile's DHCP on the renamed, enslaved standby (and adds the lease
  to it) until the DHCP times out, then detaches it from the bond (measured
  in the lab).  So guestfail hands the standby over: it sets it unmanaged
  (runtime only, as `nmcli device set X managed no`; NetworkManager then lets
  go without removing anything) before its first step on it, and managed
  again once it is enslaved, with a port profile of guestfail's (in memory,
  never autoconnected: type ethernet, master = the master, slave-type bond)
  activated on it.  NetworkManager then holds it as a bond port, which gets
  no IP configuration.  It cannot stay unmanaged: NetworkManager starts no
  DHCP on a bond with no port it knows (measured: the master stays in
  ip-config).

`guestfail release` deletes these profiles; NetworkManager then activates the
user's own profile on the standby, which has its name back.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Optional

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from guestfail.system.dbus import BusClient, BusError

log = logging.getLogger(__name__)

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
NM_IFACE = "org.freedesktop.NetworkManager"
SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
SETTINGS_IFACE = "org.freedesktop.NetworkManager.Settings"
CONNECTION_IFACE = "org.freedesktop.NetworkManager.Settings.Connection"
DEVICE_IFACE = "org.freedesktop.NetworkManager.Device"
ACTIVE_IFACE = "org.freedesktop.NetworkManager.Connection.Active"
STATE_UNMANAGED = 10  # NM_DEVICE_STATE_UNMANAGED
STATE_PREPARE = 40  # NM_DEVICE_STATE_PREPARE
SETTLE_SECONDS = 10.0
ADD_IN_MEMORY = 0x2
PROFILE_PREFIX = "guestfail "
COPIED = ("ipv4", "ipv6")


class _NotYet(Exception):
    pass


def _variant(sig: str, value: Any) -> Any:
    try:
        from dbus_fast import Variant
    except ImportError:  # pragma: no cover
        from dbus_next import Variant  # type: ignore[no-redef]
    return Variant(sig, value)


def settings_to_json(value: Any) -> Any:
    """NetworkManager settings (a{sa{sv}} with dbus-fast Variants, nested)
    as JSON, for the journal (pure)."""
    if hasattr(value, "signature") and hasattr(value, "value"):
        return {"$variant": value.signature, "value": settings_to_json(value.value)}
    if isinstance(value, dict):
        return {str(k): settings_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [settings_to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    return value


def settings_from_json(value: Any) -> Any:
    """The inverse of settings_to_json (pure)."""
    if isinstance(value, dict):
        if "$variant" in value:
            return _variant(str(value["$variant"]), settings_from_json(value["value"]))
        if "$bytes" in value:
            return bytes.fromhex(str(value["$bytes"]))
        return {k: settings_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [settings_from_json(v) for v in value]
    return value


def profile_id(master: str) -> str:
    return f"{PROFILE_PREFIX}{master}"


def bond_profile(
    master: str, ip_from: Optional[dict[str, Any]], bond_options: dict[str, str], uid: str
) -> dict[str, dict[str, Any]]:
    """The profile for a master (pure): `ip_from` is a profile's settings
    (a{sa{sv}} as dbus-fast returns it) whose ipv4/ipv6 sections are copied."""
    profile: dict[str, dict[str, Any]] = {
        "connection": {
            "id": _variant("s", profile_id(master)),
            "uuid": _variant("s", uid),
            "type": _variant("s", "bond"),
            "interface-name": _variant("s", master),
            "autoconnect": _variant("b", False),
        },
        "bond": {"options": _variant("a{ss}", dict(bond_options))},
    }
    for section in COPIED:
        if ip_from and section in ip_from:
            # drop what belongs to the old device's runtime, keep the intent
            profile[section] = {k: v for k, v in ip_from[section].items() if k not in ("dhcp-iaid",)}
        else:
            profile[section] = {"method": _variant("s", "auto")}
    return profile


def port_profile_id(master: str, port: str) -> str:
    return f"{profile_id(master)} port {port}"


def port_profile(master: str, port: str, uid: str) -> dict[str, dict[str, Any]]:
    """A bond port profile: NetworkManager attaches `port` to `master` and
    gives it no IP configuration (pure)."""
    return {
        "connection": {
            "id": _variant("s", port_profile_id(master, port)),
            "uuid": _variant("s", uid),
            "type": _variant("s", "802-3-ethernet"),
            "interface-name": _variant("s", port),
            "master": _variant("s", master),
            "slave-type": _variant("s", "bond"),
            "autoconnect": _variant("b", False),
        },
    }


def _find(profiles: list[tuple[str, dict[str, Any]]], cid: str) -> Optional[str]:
    """The path of the profile whose id is `cid` (the last one, if several)."""
    path: Optional[str] = None
    for p, settings in profiles:
        found = settings.get("connection", {}).get("id")
        if found is not None and found.value == cid:
            path = p
    return path


def bond_options(mode_opts: dict[str, str]) -> dict[str, str]:
    return {"mode": "active-backup", **mode_opts}


class NetworkManager:
    """The NetworkManager D-Bus calls guestfail needs."""

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus

    def running(self) -> bool:
        return self.bus.has_owner(NM)

    def _call(
        self, path: str, iface: str, member: str, sig: str = "", body: Optional[list[Any]] = None
    ) -> list[Any]:
        return self.bus.call(NM, path, iface, member, sig, body, f"NetworkManager {member}")

    def device(self, ifname: str) -> Optional[str]:
        try:
            (path,) = self._call(NM_PATH, NM_IFACE, "GetDeviceByIpIface", "s", [ifname])
        except BusError:
            return None
        return str(path)

    def set_managed(self, ifname: str, managed: bool) -> bool:
        """Set NetworkManager's runtime Managed flag on `ifname` (what `nmcli
        device set X managed no|yes` does) unless it is so already; True if
        it changed something."""
        dev = self.device(ifname)
        if dev is None:
            return False
        unmanaged = int(self.bus.get_property(NM, dev, DEVICE_IFACE, "State")) == STATE_UNMANAGED
        if unmanaged != managed:
            return False
        self.bus.set_property(NM, dev, DEVICE_IFACE, "Managed", "b", managed)
        return True

    def applied(self, ifname: str) -> Optional[dict[str, Any]]:
        """The settings of the profile active on `ifname` now, if any."""
        dev = self.device(ifname)
        if dev is None:
            return None
        try:
            settings, _version = self._call(dev, DEVICE_IFACE, "GetAppliedConnection", "u", [0])
        except BusError:
            return None
        return dict(settings)

    def profiles(self) -> list[tuple[str, dict[str, Any]]]:
        (paths,) = self._call(SETTINGS_PATH, SETTINGS_IFACE, "ListConnections")
        out = []
        for p in paths:
            try:
                (settings,) = self._call(p, CONNECTION_IFACE, "GetSettings")
            except BusError:
                continue  # deleted meanwhile
            out.append((str(p), dict(settings)))
        return out

    def stored_for(
        self, ifname: str, mac: str, profiles: list[tuple[str, dict[str, Any]]]
    ) -> Optional[dict[str, Any]]:
        """A user's ethernet profile meant for the standby."""
        for _path, s in profiles:
            conn = s.get("connection", {})
            if conn.get("type") is None or conn["type"].value != "802-3-ethernet":
                continue
            name = conn.get("interface-name")
            eth = s.get("802-3-ethernet", {})
            addr = eth.get("mac-address")
            if name is not None and name.value == ifname:
                return s
            if addr is not None and ":".join(f"{b:02x}" for b in addr.value) == mac:
                return s
        return None

    def ensure_master_profile(
        self,
        master: str,
        captured: Optional[dict[str, Any]],
        standby_name: str,
        standby_mac: str,
        options: dict[str, str],
    ) -> Optional[str]:
        """Add and activate the master's profile unless it is there; returns
        the profile's path when it made one."""
        profiles = self.profiles()
        path = _find(profiles, profile_id(master))
        made = path is None
        if path is None:
            ip_from = captured or self.stored_for(standby_name, standby_mac, profiles)
            profile = bond_profile(master, ip_from, bond_options(options), str(uuid.uuid4()))
            added, _result = self._call(
                SETTINGS_PATH,
                SETTINGS_IFACE,
                "AddConnection2",
                "a{sa{sv}}ua{sv}",
                [profile, ADD_IN_MEMORY, {}],
            )
            path = str(added)
            src = "the standby's active profile" if captured else "a stored profile" if ip_from else "DHCP"
            log.info("NetworkManager: %s for %s (addresses from %s)", profile_id(master), master, src)
        self._activate(path, master)
        return path if made else None

    def ensure_port(self, master: str, port: str) -> None:
        """`port` becomes NetworkManager's port of `master` (see the module
        doc): add its in-memory port profile unless it is there, activate it."""
        path = _find(self.profiles(), port_profile_id(master, port))
        if path is None:
            added, _result = self._call(
                SETTINGS_PATH,
                SETTINGS_IFACE,
                "AddConnection2",
                "a{sa{sv}}ua{sv}",
                [port_profile(master, port, str(uuid.uuid4())), ADD_IN_MEMORY, {}],
            )
            path = str(added)
        dev = self.device(port)
        if dev is None:
            raise BusError(f"NetworkManager does not know {port}")
        active = self.bus.get_property(NM, dev, DEVICE_IFACE, "ActiveConnection")
        if active != "/" and self.bus.get_property(NM, active, ACTIVE_IFACE, "Connection") == path:
            return
        self._call(NM_PATH, NM_IFACE, "ActivateConnection", "ooo", [path, dev, "/"])
        log.info("NetworkManager: %s for %s", port_profile_id(master, port), port)

    def _activate(self, path: str, master: str) -> None:
        """Activate the profile on the master unless it is active there, and
        return once NetworkManager has left the master's previous (external)
        connection behind: members enslaved before that are detached by it.
        NetworkManager learns about a new link asynchronously and tells where
        an activation stands only through properties: a short bounded wait
        (tenacity), 50 ms at a time."""
        asked = False

        def check() -> None:
            nonlocal asked
            dev = self.device(master)
            if dev is None:
                raise _NotYet(f"NetworkManager does not know {master} yet")
            active = self.bus.get_property(NM, dev, DEVICE_IFACE, "ActiveConnection")
            conn = self.bus.get_property(NM, active, ACTIVE_IFACE, "Connection") if active != "/" else "/"
            if conn != path:
                if not asked:
                    try:
                        self._call(NM_PATH, NM_IFACE, "ActivateConnection", "ooo", [path, dev, "/"])
                    except BusError as e:
                        # e.g. "strictly unmanaged" until udev has finished
                        # with the new master: ask again
                        raise _NotYet(str(e)) from None
                    asked = True
                raise _NotYet(f"{profile_id(master)} is not active on {master} yet")
            if int(self.bus.get_property(NM, dev, DEVICE_IFACE, "State")) < STATE_PREPARE:
                raise _NotYet(f"NetworkManager has not started on {master} yet")

        try:
            for attempt in Retrying(
                stop=stop_after_delay(SETTLE_SECONDS),
                wait=wait_fixed(0.05),
                retry=retry_if_exception_type(_NotYet),
                reraise=True,
            ):
                with attempt:
                    check()
        except _NotYet as e:
            raise BusError(f"{e} after {SETTLE_SECONDS:.0f} s") from None

    def delete_master_profiles(self, masters: Optional[set[str]] = None) -> list[str]:
        gone = []
        for path, s in self.profiles():
            cid = s.get("connection", {}).get("id")
            if cid is None or not cid.value.startswith(PROFILE_PREFIX):
                continue
            master = cid.value[len(PROFILE_PREFIX) :].split(" port ", 1)[0]
            if masters is not None and master not in masters:
                continue
            self._call(path, CONNECTION_IFACE, "Delete")
            if " port " not in cid.value:
                gone.append(master)
        return gone
