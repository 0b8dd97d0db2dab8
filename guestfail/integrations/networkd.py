"""systemd-networkd: the master is matched by the .network file that matched
the standby by its name and its hardware (the integration for netplan, and so
for cloud-init's netplan output, Ubuntu's way).

netplan writes, for ``match: {macaddress: M}`` with ``set-name: X``, a
.network file whose [Match] section says ``Name=X`` and
``PermanentMACAddress=M`` (cloud-init on Azure adds ``Driver=``).  The master
guestfail makes takes the name X and the MAC M, but a bond or team has no
permanent MAC and another driver: no file matches it, networkd leaves it
unconfigured, and the address guestfail moved onto it disappears when its
DHCP lifetime ends.

So for every .network file in networkd's search path whose [Match] names the
standby (``Name=``) and also matches on what the master cannot have
(``PermanentMACAddress=``, ``Driver=``, ``Path=``), guestfail writes a
drop-in into /run/systemd/network/<file>.d/ that clears those and matches
the current MAC instead (``MACAddress=M``, which the master has).  The
members match too by MAC, but the package's 05-guestfail-members.network
sorts first and keeps them unmanaged.  Then networkd is asked to reload (at
boot it has not started yet and reads the drop-in when it does).  The
drop-ins are in /run: gone at the next boot, when guestfail writes them again
before network-pre.target.

`dropin_for` decides (pure); `ensure_dropins` reads and writes the files;
the reload goes over D-Bus.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail.core.interfaces import AfterRunOnly, Outcome

log = logging.getLogger(__name__)

#: networkd's search path for .network files, highest priority first
NETWORK_DIRS = (
    Path("/etc/systemd/network"),
    Path("/run/systemd/network"),
    Path("/usr/local/lib/systemd/network"),
    Path("/usr/lib/systemd/network"),
    Path("/lib/systemd/network"),
)
DROPIN_DIR = Path("/run/systemd/network")
DROPIN_NAME = "50-guestfail-master.conf"
#: [Match] keys a master cannot satisfy for its standby
HARDWARE_KEYS = ("PermanentMACAddress", "Driver", "Path")
HEADER = "# Written by guestfail: the master that carries {name} matches this file too (guestfail.networkd)\n"


def parse_match(text: str) -> dict[str, list[str]]:
    """The [Match] section of a .network file: key -> values (a value list is
    space-separated; an empty assignment clears what came before)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != "Match" or "=" not in line:
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        if not value:
            out[key] = []
        else:
            out.setdefault(key, []).extend(value.split())
    return out


def names_match(patterns: list[str], name: str) -> bool:
    """networkd's Name= (globs; a leading ! inverts the list)."""
    if not patterns:
        return False
    if patterns[0].startswith("!"):
        return not any(fnmatch.fnmatchcase(name, p.lstrip("!")) for p in patterns)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def dropin_for(match: dict[str, list[str]], standby: str, mac: str) -> Optional[str]:
    """The drop-in that lets the master (named `standby`, MAC `mac`) match a
    file with this [Match] section, or None if none is needed."""
    if not names_match(match.get("Name", []), standby):
        return None  # matches by something else (or not by name): not tied to the name
    hardware = [k for k in HARDWARE_KEYS if match.get(k)]
    if not hardware:
        return None  # by name (and maybe the current MAC): the master matches already
    lines = [HEADER.format(name=standby).rstrip("\n"), "[Match]"]
    lines += [f"{k}=" for k in hardware]
    if "MACAddress" not in match:
        lines.append(f"MACAddress={mac}")
    return "\n".join(lines) + "\n"


def network_files(dirs: tuple[Path, ...] = NETWORK_DIRS) -> list[Path]:
    """The .network files networkd reads (a name in an earlier directory
    hides the same name in a later one)."""
    seen: dict[str, Path] = {}
    for d in dirs:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for f in entries:
            if f.suffix == ".network" and f.name not in seen and f.is_file():
                seen[f.name] = f
    return [seen[n] for n in sorted(seen)]


def ensure_dropins(
    masters: dict[str, str],
    dirs: tuple[Path, ...] = NETWORK_DIRS,
    dropin_dir: Path = DROPIN_DIR,
) -> list[Path]:
    """For every master (name -> MAC): write the drop-ins it needs.  Returns
    the drop-ins written or changed (nothing when they are in place)."""
    changed = []
    for f in network_files(dirs):
        try:
            match = parse_match(f.read_text(errors="replace"))
        except OSError:
            continue
        for name, mac in sorted(masters.items()):
            text = dropin_for(match, name, mac)
            if text is None:
                continue
            target = dropin_dir / f"{f.name}.d" / DROPIN_NAME
            try:
                if target.read_text() == text:
                    continue
            except OSError:
                pass
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, target)
            except OSError as e:
                log.warning(
                    "systemd-networkd: cannot write %s (%s): %s may stay unconfigured", target, e, name
                )
                continue
            log.info("systemd-networkd: %s matches %s too (%s)", name, f, target)
            changed.append(target)
    return changed


def reload(bus_factory: Callable[[], Any]) -> None:
    """Ask a running networkd to read its files again (no-op when it does not run)."""
    from guestfail.system.dbus import BusError
    from guestfail.system.inotify import system_bus_up

    if not system_bus_up():
        return  # early boot: networkd reads the files when it starts
    bus = bus_factory()
    try:
        if not bus.has_owner("org.freedesktop.network1"):
            return
        bus.call(
            "org.freedesktop.network1",
            "/org/freedesktop/network1",
            "org.freedesktop.network1.Manager",
            "Reload",
            what="systemd-networkd Reload",
        )
        log.info("systemd-networkd reloaded")
    except BusError as e:
        log.warning("systemd-networkd not reloaded: %s", e)
    finally:
        close = getattr(bus, "close", None)
        if close is not None:
            close()


class NetworkdIntegration(AfterRunOnly):
    """The reconciler's hook: after a run that gave standbys' names to
    masters, the .network files that matched the standbys match the masters."""

    name = "systemd-networkd"

    def after_run(self, out: Outcome, kept: dict[str, dict[str, Any]]) -> None:
        if not out.renamed:
            return
        masters = {
            link.name: link.mac for link in out.snap.links.values() if link.name in out.renamed and link.kind
        }
        if ensure_dropins(masters):
            from guestfail.integrations.ifupdown import bus_client

            reload(bus_client)
