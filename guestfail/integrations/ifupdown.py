"""ifupdown's DHCP client follows the name: the integration for Debian's
ifupdown + isc-dhcp-client (what `iface X inet dhcp` in
/etc/network/interfaces runs).

ifupdown starts ``dhclient ... X`` for the interface called X.  dhclient
binds its packet socket to X's ifindex once, when it starts.  When guestfail
pairs X, the master takes the name X and the standby becomes ``Xnsby``: the
running dhclient keeps sending and listening on the standby, a member of the
bond.  Its broadcasts leave by the standby's own path whatever member is
active, and the replies that come back over the VF never reach it: it cannot
renew, rebinds over the member, and when the lease ends, dhclient-script
flushes the address from X (the master).  The same happens the other way
when `guestfail release` gives the standby its name back.

So after guestfail gave a name to another link (a master took the standby's
name, or the standby got it back), every dhclient started for that name
before is started again, bound to the link that has the name now, with the
same arguments: same pid file and lease file, so it asks for the same
address (INIT-REBOOT) and `ifdown X` stops it as before.  The old process is
killed with SIGKILL: it must neither release the lease nor let
dhclient-script flush the address from X.  The new one runs in a transient
systemd unit (``guestfail-dhclient-<X>-<ifindex>.service``, started over
D-Bus), not in guestfail's own sandboxed cgroup: it needs what dhclient
needs (port 68, writing /var/lib/dhcp and /etc/resolv.conf) and outlives a
restart of guestfail.

With ``allow-hotplug X`` (Debian's cloud images), systemd runs the client
in ``ifup@X.service``, which is bound to the device called X: when the
standby gives the name up, systemd stops the unit (``ifdown X``: the lease is
released, the address flushed), and nothing brings X up again when the
master gets the name by a rename (ifupdown's udev hook only acts on "add").
For those guestfail restarts ``ifup@X.service`` when systemd is stopping or
has stopped it (a restart job follows the stop): ifupdown runs DHCP on the
master, with an outage of one DHCP exchange at pairing.  One that is active
was started after the name moved (at boot, after network-pre.target) and is
left alone, and so is its dhclient.

`clients_for` and `parse_argv` decide (pure); `follow` acts through the
processes and D-Bus surfaces.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from guestfail.core.interfaces import AfterRunOnly, Outcome
from guestfail.system import processes
from guestfail.system.inotify import system_bus_up

log = logging.getLogger(__name__)

DHCLIENT = "dhclient"

# dhclient's options that take a value (isc-dhcp-client 4.4): the interface
# names are the arguments left
_WITH_VALUE = frozenset(
    {
        "-pf",
        "-lf",
        "-cf",
        "-sf",
        "-s",
        "-g",
        "-p",
        "-e",
        "-df",
        "-H",
        "-F",
        "-V",
        "-D",
        "-C",
        "--timeout",
        "--request-options",
        "--decline-wait-time",
        "--address-prefix-len",
        "--dad-wait-time",
        "--prefix-len-hint",
    }
)
# a dhclient run with these is a one-shot command (release, stop), not a client
_ONE_SHOT = frozenset({"-r", "-x", "--version"})


@dataclass(frozen=True)
class Client:
    """A running dhclient for one interface."""

    pid: int
    argv: tuple[str, ...]
    interface: str
    pidfile: Optional[str]
    unit: str = ""  # the systemd unit it runs in (from its cgroup)


def parse_argv(pid: int, argv: list[str]) -> Optional[Client]:
    """The client a dhclient command line runs, or None (not one interface,
    or not a running client)."""
    if not argv or os.path.basename(argv[0]) != DHCLIENT:
        return None
    names: list[str] = []
    pidfile = None
    i = 1
    while i < len(argv):
        a = argv[i]
        if a in _ONE_SHOT:
            return None
        if a in _WITH_VALUE:
            if a == "-pf" and i + 1 < len(argv):
                pidfile = argv[i + 1]
            i += 2
            continue
        if not a.startswith("-"):
            names.append(a)
        i += 1
    if len(names) != 1:
        return None
    return Client(pid, tuple(argv), names[0], pidfile)


def clients_for(names: Iterable[str], clients: Iterable[Client]) -> list[Client]:
    """The clients to start again: those running for one of `names`, except
    those of ifupdown's hotplug units (systemd restarts those, see `ifup_unit`)."""
    wanted = set(names)
    return sorted(
        (c for c in clients if c.interface in wanted and c.unit != ifup_unit(c.interface)),
        key=lambda c: c.pid,
    )


def escape(text: str) -> str:
    """`text` escaped for a unit name, as systemd-escape does."""
    out = []
    for i, ch in enumerate(text.encode()):
        c = chr(ch)
        if c.isascii() and (c.isalnum() or c in ":_" or (c == "." and i > 0)):
            out.append(c)
        elif c == "/":
            out.append("-")
        else:
            out.append(f"\\x{ch:02x}")
    return "".join(out)


def unit_name(interface: str, ifindex: int) -> str:
    """The transient unit that runs a client for `interface` on link `ifindex`."""
    return f"guestfail-dhclient-{escape(interface)}-{ifindex}.service"


def ifup_unit(interface: str) -> str:
    """ifupdown's unit for an allow-hotplug interface."""
    return f"ifup@{escape(interface)}.service"


def unit_of(cgroup: str) -> str:
    """The unit of a /proc/<pid>/cgroup text (cgroup v2: "0::/system.slice/x.service")."""
    for line in cgroup.splitlines():
        path = line.rsplit(":", 1)[-1]
        last = path.rstrip("/").rsplit("/", 1)[-1]
        if last.endswith((".service", ".scope")):
            return last
    return ""


def allowed_in(text: str, klass: str) -> set[str]:
    """Interfaces an /etc/network/interfaces text lists as allow-<klass>
    (its "source" lines are not followed: see `interfaces_allowed`)."""
    out: set[str] = set()
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if words and words[0] == f"allow-{klass}":
            out.update(words[1:])
    return out


def interfaces_allowed(klass: str, path: str = "/etc/network/interfaces") -> set[str]:
    """Every interface /etc/network/interfaces (and the files it sources)
    lists as allow-<klass>."""
    import glob

    out: set[str] = set()
    todo, seen = [path], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        out |= allowed_in(text, klass)
        base = os.path.dirname(p)
        for raw in text.splitlines():
            words = raw.split("#", 1)[0].split()
            if len(words) == 2 and words[0] == "source":
                todo.extend(sorted(glob.glob(os.path.join(base, words[1]))))
    return out


def transient_properties(client: Client, interface: str) -> list[tuple[str, str, Any]]:
    """The transient unit that runs `client` again: (name, D-Bus signature, value)."""
    argv = list(client.argv)
    exe = argv[0] if os.path.isabs(argv[0]) else (shutil.which(argv[0]) or "/sbin/dhclient")
    props: list[tuple[str, str, Any]] = [
        ("Description", "s", f"dhclient for {interface}, bound again after guestfail renamed it"),
        ("ExecStart", "a(sasb)", [[exe, argv, False]]),
        # dhclient forks once it has a lease (or gave up waiting for one)
        ("Type", "s", "forking"),
        ("CollectMode", "s", "inactive-or-failed"),
    ]
    if client.pidfile:
        props.append(("PIDFile", "s", client.pidfile))
    return props


def follow(names: dict[str, int], bus_factory: Callable[[], Any]) -> list[str]:
    """Start every dhclient running for a name in `names` (name -> the ifindex
    that has it now) again, bound to that link.  Returns what was done, one
    line each, for the log.  `bus_factory()` gives a
    `guestfail.system.dbus.BusClient`, made only if there is a client to move."""
    from guestfail.system.dbus import BusError

    if not names:
        return []
    running = []
    for pid, argv in processes.find_by_name(DHCLIENT):
        c = parse_argv(pid, argv)
        if c is not None:
            running.append(dataclasses.replace(c, unit=unit_of(processes.cgroup(pid))))
    moving = clients_for(names, running)
    hotplug = [n for n in sorted(names) if n in interfaces_allowed("hotplug")]
    if not moving and not hotplug:
        return []
    bus = bus_factory()
    try:
        done = [_restart(client, names[client.interface], bus, BusError) for client in moving]
        for name in hotplug:
            unit = ifup_unit(name)
            try:
                state = bus.unit_state(unit)
                if state is None:
                    continue  # ifupdown never brought it up in this boot
                if state in ("active", "activating", "reloading"):
                    # started since the name moved (at boot: after
                    # network-pre.target, on the master): bound to the link
                    # that has the name now
                    continue
                bus.restart_unit(unit)
            except BusError as e:
                log.error("%s not restarted (%s): run 'systemctl restart %s'", unit, e, unit)
                done.append(f"{unit}: not restarted: {e}")
                continue
            log.info("%s restarted: ifupdown configures %s again on the link now called so", unit, name)
            done.append(f"{unit} restarted")
        return done
    finally:
        close = getattr(bus, "close", None)
        if close is not None:
            close()


def _restart(client: Client, ifindex: int, bus: Any, bus_error: type[Exception]) -> str:
    """Kill `client`, run it again in a transient unit; one line for the log."""
    unit = unit_name(client.interface, ifindex)
    processes.kill(client.pid)
    try:
        bus.start_transient_unit(unit, transient_properties(client, client.interface))
    except bus_error as e:
        log.error(
            "dhclient for %s stopped but not started again (%s): run 'ifup --force %s'",
            client.interface,
            e,
            client.interface,
        )
        return f"dhclient for {client.interface}: not started again: {e}"
    log.info(
        "dhclient for %s (pid %d) started again on the link now called so (%s)",
        client.interface,
        client.pid,
        unit,
    )
    return f"dhclient for {client.interface} follows the name ({unit})"


def bus_client() -> Any:
    """A client of the system bus (needs a D-Bus library: only made when a
    client or unit must be moved)."""
    from guestfail.system.dbus import BusClient

    return BusClient(timeout=5.0)


class IfupdownIntegration(AfterRunOnly):
    """The reconciler's hook: after a run that moved names, ifupdown's
    clients follow them (at boot, once the system bus is up)."""

    name = "ifupdown"

    def __init__(self) -> None:
        self.pending: set[str] = set()  # names moved before the system bus was up

    def after_run(self, out: Outcome, kept: dict[str, dict[str, Any]]) -> None:
        names = out.renamed | self.pending
        if not names:
            return
        now = {link.name: link.ifindex for link in out.snap.links.values() if link.name in names}
        if not system_bus_up():
            # systemd is asked over D-Bus, not up yet at boot (the daemon runs
            # before network-pre.target): again after the next run
            self.pending = set(now)
            return
        self.pending = set()
        for line in follow(now, bus_client):
            log.info("%s", line)
