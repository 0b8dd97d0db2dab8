"""guestfail.ifupdown: which DHCP clients follow a name, and how they run again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guestfail.integrations import ifupdown
from guestfail.integrations.ifupdown import Client, clients_for, parse_argv, transient_properties, unit_name
from guestfail.system import processes

# what ifupdown 0.8 (Debian 12/13) runs for `iface ens11 inet dhcp`
IFUP = [
    "/sbin/dhclient", "-4", "-v", "-i", "-pf", "/run/dhclient.ens11.pid",
    "-lf", "/var/lib/dhcp/dhclient.ens11.leases", "-I",
    "-df", "/var/lib/dhcp/dhclient6.ens11.leases", "ens11",
]  # fmt: skip


def test_ifupdowns_client_is_parsed() -> None:
    c = parse_argv(42, IFUP)
    assert c == Client(42, tuple(IFUP), "ens11", "/run/dhclient.ens11.pid")


def test_option_values_are_not_interfaces() -> None:
    c = parse_argv(1, ["dhclient", "-e", "FOO=ens3", "-H", "myhost", "-cf", "/x.conf", "eth0"])
    assert c is not None and c.interface == "eth0" and c.pidfile is None


def test_not_clients() -> None:
    assert parse_argv(1, ["dhclient", "-r", "-pf", "/run/x.pid", "ens11"]) is None  # a release command
    assert parse_argv(1, ["dhclient", "-x", "ens11"]) is None
    assert parse_argv(1, ["dhclient", "eth0", "eth1"]) is None  # two interfaces: not ifupdown's
    assert parse_argv(1, ["dhclient", "-v"]) is None
    assert parse_argv(1, ["/usr/sbin/dhcpcd", "ens11"]) is None


def test_only_clients_of_the_moved_names() -> None:
    a = parse_argv(10, IFUP)
    b = parse_argv(5, ["dhclient", "-pf", "/run/dhclient.ens4.pid", "ens4"])
    assert a is not None and b is not None
    assert clients_for({"ens11"}, [b, a]) == [a]
    assert clients_for(set(), [a, b]) == []


def test_unit_names_are_escaped() -> None:
    assert unit_name("ens11", 7) == "guestfail-dhclient-ens11-7.service"
    assert unit_name("a-b.c", 3) == "guestfail-dhclient-a\\x2db.c-3.service"
    assert unit_name(".x y", 3) == "guestfail-dhclient-\\x2ex\\x20y-3.service"


def test_the_transient_unit_runs_the_same_command() -> None:
    c = parse_argv(42, IFUP)
    assert c is not None
    props = {k: (sig, v) for k, sig, v in transient_properties(c, "ens11")}
    assert props["ExecStart"] == ("a(sasb)", [["/sbin/dhclient", IFUP, False]])
    assert props["Type"] == ("s", "forking")
    assert props["PIDFile"] == ("s", "/run/dhclient.ens11.pid")


def _proc(tmp: Path, pid: int, comm: str, argv: list[str]) -> None:
    d = tmp / str(pid)
    d.mkdir()
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def test_processes_are_found_by_command_name(tmp_path: Path) -> None:
    _proc(tmp_path, 12, "dhclient", IFUP)
    _proc(tmp_path, 13, "bash", ["bash"])
    (tmp_path / "self").mkdir()
    assert processes.find_by_name("dhclient", tmp_path) == [(12, IFUP)]


class FakeBus:
    def __init__(self, states: dict[str, str] | None = None) -> None:
        self.started: list[tuple[str, list[Any]]] = []
        self.restarted: list[str] = []
        self.states = states or {}
        self.closed = False

    def unit_state(self, unit: str) -> str | None:
        return self.states.get(unit)

    def restart_unit(self, unit: str) -> None:
        self.restarted.append(unit)

    def start_transient_unit(self, unit: str, props: list[Any]) -> None:
        self.started.append((unit, props))

    def close(self) -> None:
        self.closed = True


def test_follow_kills_and_starts_again(monkeypatch: Any) -> None:
    """`auto ens11`: networking.service's dhclient is moved."""
    killed: list[int] = []
    monkeypatch.setattr(processes, "find_by_name", lambda comm: [(42, IFUP), (43, ["dhclient", "ens4"])])
    monkeypatch.setattr(processes, "cgroup", lambda pid: "0::/system.slice/networking.service\n")
    monkeypatch.setattr(ifupdown, "interfaces_allowed", lambda klass: set())
    monkeypatch.setattr(processes, "kill", killed.append)
    bus = FakeBus()
    lines = ifupdown.follow({"ens11": 9}, lambda: bus)
    assert killed == [42]
    assert [u for u, _ in bus.started] == ["guestfail-dhclient-ens11-9.service"]
    assert lines == ["dhclient for ens11 follows the name (guestfail-dhclient-ens11-9.service)"]
    assert bus.closed


def test_allow_hotplug_restarts_ifupdowns_unit_and_leaves_its_client(monkeypatch: Any) -> None:
    """`allow-hotplug ens11`: ifup@ens11.service (bound to the device named
    ens11) is restarted; its dhclient is ifupdown's to stop."""
    killed: list[int] = []
    monkeypatch.setattr(processes, "find_by_name", lambda comm: [(42, IFUP)])
    monkeypatch.setattr(
        processes, "cgroup", lambda pid: "0::/system.slice/system-ifup.slice/ifup@ens11.service\n"
    )
    monkeypatch.setattr(processes, "kill", killed.append)
    monkeypatch.setattr(ifupdown, "interfaces_allowed", lambda klass: {"ens11"})
    bus = FakeBus({"ifup@ens11.service": "deactivating"})
    assert ifupdown.follow({"ens11": 9}, lambda: bus) == ["ifup@ens11.service restarted"]
    assert killed == [] and bus.started == []
    assert bus.restarted == ["ifup@ens11.service"]
    # started after the name moved (at boot): left alone
    bus = FakeBus({"ifup@ens11.service": "active"})
    assert ifupdown.follow({"ens11": 9}, lambda: bus) == []
    assert bus.restarted == []


def test_unit_of_a_cgroup() -> None:
    assert ifupdown.unit_of("0::/system.slice/system-ifup.slice/ifup@ens11.service\n") == "ifup@ens11.service"
    assert ifupdown.unit_of("0::/system.slice/networking.service\n") == "networking.service"
    assert ifupdown.unit_of("0::/init.scope\n") == "init.scope"
    assert ifupdown.unit_of("") == ""


def test_allow_lines_and_sources(tmp_path: Path) -> None:
    (tmp_path / "interfaces.d").mkdir()
    (tmp_path / "interfaces").write_text(
        "source interfaces.d/*\nauto lo\nallow-hotplug ens11 # the standby\niface ens11 inet dhcp\n"
    )
    (tmp_path / "interfaces.d" / "x").write_text("allow-hotplug ens12\nallow-auto ens13\n")
    assert ifupdown.interfaces_allowed("hotplug", str(tmp_path / "interfaces")) == {"ens11", "ens12"}


def test_follow_without_clients_needs_no_bus(monkeypatch: Any) -> None:
    monkeypatch.setattr(processes, "find_by_name", lambda comm: [])
    monkeypatch.setattr(ifupdown, "interfaces_allowed", lambda klass: set())

    def no_bus() -> Any:
        raise AssertionError("no bus wanted")

    assert ifupdown.follow({"ens11": 9}, no_bus) == []
