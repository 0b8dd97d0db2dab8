"""guestfail in a lab guest: this checkout (over the shared root) or the
installed package (GUESTFAIL_LAB_AGENT=installed), and what the package
installs besides the code.  Shared by the vm tests and the benchmarks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lab import pytree
from lab.vm import Lab

REPO = Path(__file__).resolve().parent.parent


def installed() -> bool:
    return os.environ.get("GUESTFAIL_LAB_AGENT") == "installed"


def agent_argv(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `guestfail *args` in the guest."""
    if installed():
        return ["/usr/bin/guestfail", *args], {}
    path = [*pytree.GUEST_PATH, str(REPO)] if pytree.enabled() else [str(REPO)]
    # PYTHONSAFEPATH: the guest's working directory (on 9p) is not searched first
    return [sys.executable, "-m", "guestfail", *args], {"PYTHONPATH": ":".join(path), "PYTHONSAFEPATH": "1"}


def install_files(lab: Lab) -> None:
    """The udev rule and the networkd file, as the package installs them
    (the installed package brings its own)."""
    if installed():
        return
    if pytree.enabled():
        pytree.install(lab)
    rules = (REPO / "udev-rules" / "81-guestfail.rules").read_text()
    lab.write_file("/run/udev/rules.d/81-guestfail.rules", rules)
    network = (REPO / "packaging" / "networkd" / "05-guestfail-members.network").read_text()
    lab.write_file("/run/systemd/network/05-guestfail-members.network", network)
    lab.run("udevadm", "control", "--reload")


def start_system_bus(lab: Lab) -> None:
    """A real system bus in the guest (dbus-daemon), with guestfail's policy
    as the package installs it; teamd's comes with libteam-utils."""
    if not installed():
        policy = (REPO / "packaging" / "dbus" / "io.github.guestfail1.conf").read_text()
        lab.write_file("/etc/dbus-1/system.d/io.github.guestfail1.conf", policy)
    lab.run("mkdir", "-p", "/run/dbus")
    lab.run("dbus-daemon", "--system", "--fork")
