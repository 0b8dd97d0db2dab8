"""Helpers of the `vm` tier: every test boots the lab's guest kernel and asserts on what
the guest kernel and the lab's peer report, not on guestfail's own word.

GUESTFAIL_LAB_AGENT=installed runs the agent from the installed package
(/usr/bin/guestfail with the distribution's Python libraries) instead of this
checkout.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lab.agent import agent_argv, install_files, start_system_bus
from lab.vm import Lab, guest_kernel

#: the daemon's state file
STATE_FILE = "/run/guestfail/state.json"

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG_PATH = "/etc/guestfail/guestfail.toml"
GUEST_IP = "192.0.2.2"
PEER_IP = "192.0.2.1"


def lab_available() -> Optional[str]:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    try:
        guest_kernel()
    except Exception as e:
        return str(e)
    return None


@dataclass
class Guest:
    """A booted lab with guestfail's helpers."""

    lab: Lab
    agents: int = 0
    scope_before: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------- agent
    def install(self) -> None:
        install_files(self.lab)

    def start_system_bus(self) -> None:
        start_system_bus(self.lab)

    def wait_team_active(self, master: str, port: str, timeout: float = 60) -> None:
        self.lab.wait_net(
            [{"team_active": master, "eq": port}], timeout=timeout, what=f"{port} active in {master}"
        )

    def team_state(self, master: str) -> dict[str, Any]:
        out = self.lab.run("teamdctl", master, "state", "dump").out
        state: dict[str, Any] = json.loads(out)
        return state

    def write_config(self, text: str) -> None:
        self.lab.write_file(CONFIG_PATH, text)

    def start_agent(
        self,
        config: Optional[str] = None,
        *extra: str,
        wait: bool = True,
        dbus: bool = False,
        env: Optional[dict[str, str]] = None,
    ) -> str:
        if config is not None:
            self.write_config(config)
        self.agents += 1
        key = f"agent{self.agents}"
        argv, agent_env = agent_argv("-vv", "run", *([] if dbus else ["--no-dbus"]), *extra)
        self.lab.spawn(key, argv, env={**agent_env, **(env or {})}, notify=True)
        if wait:
            self.lab.wait_notify(key, "READY=1", timeout=240)
        return key

    def stacks(self, key: str) -> str:
        """The Python stacks of a guest process started as `key` (py-spy,
        from the host's venv over the shared root): for failure reports."""
        pid = self.lab.pid(key)
        spy = Path(sys.executable).parent / "py-spy"
        if not pid or not spy.exists():
            return "(no stacks: no such process or no py-spy)"
        r = self.lab.run(str(spy), "dump", "--pid", str(pid), check=False, timeout=120)
        return str(r.out or r.err)

    def kill_agent(self, key: str, sig: str = "SIGKILL") -> Optional[int]:
        self.lab.signal(key, sig)
        return self.lab.wait_proc(key, timeout=30)

    def guestfail(self, *args: str, check: bool = False, env: Optional[dict[str, str]] = None) -> Any:
        argv, agent_env = agent_argv(*args)
        # TCG: Python starts slowly
        return self.lab.run(*argv, env={**agent_env, **(env or {})}, check=check, timeout=300)

    def status(self) -> dict[str, Any]:
        r = self.guestfail("status", "--json", "--no-dbus")
        assert r.rc in (0, 3, 4), r
        doc: dict[str, Any] = json.loads(r.out)
        return doc

    def state(self) -> dict[str, Any]:
        """The daemon's state file (what `status` reads, without starting
        the CLI's Python)."""
        text = self.lab.read_file(STATE_FILE)
        assert text is not None, f"no {STATE_FILE}"
        doc: dict[str, Any] = json.loads(text)
        return doc

    # ----------------------------------------------------------- kernel
    def link(self, name: str) -> dict[str, Any]:
        out = self.lab.run("ip", "-j", "-d", "addr", "show", "dev", name).out
        entry: dict[str, Any] = json.loads(out)[0]
        return entry

    def links(self) -> dict[str, dict[str, Any]]:
        return self.lab.links()

    def wait_active(self, master: str, slave: str, timeout: float = 60) -> None:
        self.lab.wait_net(
            [{"link": master, "attr": "active_slave", "eq": slave}],
            timeout=timeout,
            what=f"{slave} active in {master}",
        )

    def udev(self, name: str) -> dict[str, str]:
        out = self.lab.run("udevadm", "info", "--query=property", f"/sys/class/net/{name}").out
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def setup_standby(self, nic: str = "sb0", ip: str = GUEST_IP) -> str:
        name = self.lab.ifname(nic)
        self.lab.run("ip", "link", "set", name, "up")
        self.lab.run("ip", "addr", "add", f"{ip}/24", "dev", name)
        self.lab.run("ip", "route", "add", "198.51.100.0/24", "via", PEER_IP, "dev", name)
        return name

    # ----------------------------------------------------------- scope
    def out_of_scope(self) -> dict[str, Any]:
        """What guestfail must never touch: loopback and every NIC that is
        nobody's pair (the topology's "other" role)."""
        names = ["lo"] + [self.lab.ifname(n.id) for n in self.lab.topo.nics if n.role == "other"]
        out = {}
        for name in names:
            entry = self.link(name)
            for volatile in ("stats", "stats64", "operstate", "linkinfo"):
                entry.pop(volatile, None)
            out[name] = entry
        return out


# ------------------------------------------------------------------ traffic


def stream_start(lab: Lab, rate_pps: float = 200) -> Any:
    async def start() -> Any:
        return lab.peer.start_stream(rate_pps)

    return lab.on_loop(start(), timeout=10)


def stream_stop(lab: Lab, stream: Any, grace: float = 1.0) -> Any:
    return lab.on_loop(lab.peer.stop_stream(stream, grace), timeout=grace + 30)


def peer_wait(lab: Lab, predicate: Callable[[Any], bool], timeout: float, what: str = "") -> None:
    lab.on_loop(lab.peer.wait_for(predicate, timeout, what), timeout=timeout + 10)


def replies_on(lab: Lab, stream: Any, path: str, n: int, timeout: float = 30) -> None:
    """Wait until `n` more replies of `stream` came back over `path`."""
    base: int = stream.report().replies_per_path.get(path, 0)

    def enough(_: Any) -> bool:
        got: int = stream.report().replies_per_path.get(path, 0)
        return got >= base + n

    peer_wait(lab, enough, timeout, f"{n} replies over {path}")
