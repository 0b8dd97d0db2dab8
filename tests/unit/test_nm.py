from __future__ import annotations

from dbus_fast import Variant

from guestfail.integrations.nmclient import bond_options, bond_profile, profile_id

STATIC = {
    "connection": {"id": Variant("s", "Wired connection 1"), "type": Variant("s", "802-3-ethernet")},
    "ipv4": {
        "method": Variant("s", "manual"),
        "address-data": Variant(
            "aa{sv}", [{"address": Variant("s", "192.0.2.2"), "prefix": Variant("u", 24)}]
        ),
        "dhcp-iaid": Variant("s", "mac"),
    },
}


def test_profile_copies_the_standbys_ip_settings() -> None:
    p = bond_profile("ens11", STATIC, bond_options({"miimon": "100"}), "u-1")
    assert p["connection"]["id"].value == profile_id("ens11") == "guestfail ens11"
    assert p["connection"]["type"].value == "bond"
    assert p["connection"]["interface-name"].value == "ens11"
    assert p["connection"]["autoconnect"].value is False
    assert p["bond"]["options"].value == {"mode": "active-backup", "miimon": "100"}
    assert p["ipv4"]["method"].value == "manual"
    assert p["ipv4"]["address-data"].value[0]["address"].value == "192.0.2.2"
    assert "dhcp-iaid" not in p["ipv4"]
    # no ipv6 section in the source: NetworkManager's own default (auto)
    assert p["ipv6"]["method"].value == "auto"


def test_without_a_source_profile_it_is_dhcp() -> None:
    p = bond_profile("ens11", None, bond_options({}), "u-2")
    assert (p["ipv4"]["method"].value, p["ipv6"]["method"].value) == ("auto", "auto")


def test_port_profile_makes_a_bond_port_without_ip_settings() -> None:
    from guestfail.integrations.nmclient import port_profile, port_profile_id

    p = port_profile("ens11", "ens11nsby", "u-3")
    c = p["connection"]
    assert c["id"].value == port_profile_id("ens11", "ens11nsby") == "guestfail ens11 port ens11nsby"
    assert (c["type"].value, c["interface-name"].value) == ("802-3-ethernet", "ens11nsby")
    assert (c["master"].value, c["slave-type"].value, c["autoconnect"].value) == ("ens11", "bond", False)
    assert set(p) == {"connection"}  # a port has no ipv4/ipv6 section


class FakeNetworkManager:
    """NetworkManager's side of the system bus: devices by name with their
    state, profiles by path; records what is set and deleted."""

    def __init__(self, states: dict[str, int], profiles: dict[str, str]) -> None:
        self.states = states
        self.profiles = profiles
        self.sets: list[tuple[str, bool]] = []
        self.deleted: list[str] = []

    def call(self, dest: str, path: str, iface: str, member: str, sig: str = "", body=None, what: str = ""):  # type: ignore[no-untyped-def]
        from guestfail.system.dbus import BusError

        if member == "GetDeviceByIpIface":
            if body[0] not in self.states:
                raise BusError("org.freedesktop.NetworkManager.UnknownDevice")
            return [f"/dev/{body[0]}"]
        if member == "ListConnections":
            return [list(self.profiles)]
        if member == "GetSettings":
            return [{"connection": {"id": Variant("s", self.profiles[path])}}]
        if member == "Delete":
            self.deleted.append(self.profiles.pop(path))
            return []
        raise AssertionError(member)

    def get_property(self, dest: str, path: str, iface: str, name: str) -> int:
        assert name == "State"
        return self.states[path.rsplit("/", 1)[1]]

    def set_property(self, dest: str, path: str, iface: str, name: str, sig: str, value: bool) -> None:
        assert (name, sig) == ("Managed", "b")
        self.sets.append((path.rsplit("/", 1)[1], value))


def test_set_managed_changes_only_what_differs() -> None:
    from guestfail.integrations.nmclient import NetworkManager

    bus = FakeNetworkManager({"ens11": 100, "ens11npf": 10}, {})
    nm = NetworkManager(bus)  # type: ignore[arg-type]
    assert nm.set_managed("ens11", False) is True  # activated -> let go
    assert nm.set_managed("ens11npf", False) is False  # unmanaged already (the udev mark)
    assert nm.set_managed("gone0", False) is False  # NetworkManager does not know it
    assert nm.set_managed("ens11npf", True) is True
    assert bus.sets == [("ens11", False), ("ens11npf", True)]


def test_release_deletes_master_and_port_profiles_of_the_named_masters_only() -> None:
    from guestfail.integrations.nmclient import NetworkManager

    bus = FakeNetworkManager(
        {},
        {
            "/p/1": "guestfail ens11",
            "/p/2": "guestfail ens11 port ens11nsby",
            "/p/3": "guestfail ens12",
            "/p/4": "Wired connection 1",
        },
    )
    nm = NetworkManager(bus)  # type: ignore[arg-type]
    assert nm.delete_master_profiles({"ens11"}) == ["ens11"]
    assert bus.deleted == ["guestfail ens11", "guestfail ens11 port ens11nsby"]
    assert sorted(bus.profiles.values()) == ["Wired connection 1", "guestfail ens12"]
