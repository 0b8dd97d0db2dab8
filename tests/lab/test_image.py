"""lab.image: the flavour layer and the image's identity (no build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import image
from lab.image import Flavour, layer_script


def test_each_stack_enables_only_its_own_service() -> None:
    for stack, unit in (
        ("ifupdown", "networking.service"),
        ("netplan", "systemd-networkd.service"),
        ("networkd", "systemd-networkd.service"),
        ("networkmanager", "NetworkManager.service"),
    ):
        script = layer_script(Flavour("debian12", stack))
        enable = next(x for x in script.splitlines() if "systemctl enable" in x)
        disable = next(x for x in script.splitlines() if "systemctl disable" in x)
        assert unit in enable and unit not in disable, stack


def test_stack_configuration_names_the_standby() -> None:
    assert f"iface {image.STANDBY} inet dhcp" in layer_script(Flavour("debian13", "ifupdown"))
    netplan = layer_script(Flavour("debian13", "netplan"))
    assert f'macaddress: "{image.STANDBY_MAC}"' in netplan and f"set-name: {image.STANDBY}" in netplan
    assert f"Name={image.STANDBY}" in layer_script(Flavour("debian13", "networkd"))


def test_package_installed_only_when_asked() -> None:
    assert "apt-get install" in layer_script(Flavour("debian12", "networkd"))
    assert "apt-get install" not in layer_script(Flavour("debian12", "networkd", package=False))
    assert "/etc/guestfail/guestfail.toml" in layer_script(Flavour("debian12", "networkd", config="[bond]\n"))


def test_bad_flavours_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown network stack 'wicked'"):
        Flavour("debian12", "wicked").validate()
    with pytest.raises(ValueError, match="unknown distribution 'debian11'"):
        image.base_recipe("debian11")


def test_key_follows_the_debs_and_the_flavour(tmp_path: Path) -> None:
    deb = tmp_path / "guestfail_1_all.deb"
    deb.write_bytes(b"one")
    fl = Flavour("debian12", "ifupdown")
    k1 = image.image_key(fl, [deb], [deb.name])
    assert image.image_key(fl, [deb], [deb.name]) == k1
    assert image.image_key(Flavour("debian12", "netplan"), [deb], [deb.name]) != k1
    assert image.image_key(fl, [deb], []) != k1
    deb.write_bytes(b"two")
    assert image.image_key(fl, [deb], [deb.name]) != k1
