from __future__ import annotations

from dbus_fast import Variant

from guestfail.nm import bond_options, bond_profile, profile_id

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
