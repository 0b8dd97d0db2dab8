"""The D-Bus policy (packaging/dbus/io.github.guestfail1.conf) in a real
dbus-daemon.

A private system bus runs with Debian's system.conf default policy (its
<policy> elements, taken from /usr/share/dbus-1/system.conf) plus the
policy under test, listening on a socket in a temporary directory.  The real
daemon, `guestfail run`, owns the name; it runs in a fresh network namespace
(nothing to pair there) with its state in the same directory, and says when
it is ready over NOTIFY_SOCKET.  Calls are made as root and, through
setpriv, as nobody (65534).  Every process, the socket and the namespace go
away when a test ends, failed or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from guestfail import __version__
from tests.integration.conftest import (
    DEBIAN_PYTHON,
    PACKAGING,
    REPO,
    log,
    need_debian_python,
    need_root,
    need_tool,
    system_env,
)

POLICY = PACKAGING / "dbus" / "io.github.guestfail1.conf"
SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
NAME = "io.github.guestfail1"
PATH = "/io/github/guestfail1"
IFACE = "io.github.guestfail1.Agent"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
TIMEOUT = 30.0

pytestmark = pytest.mark.netns

# ---------------------------------------------------------------- helpers


class Lines:
    """Complete lines from a child's pipe, waited for with a deadline."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.fd = pipe.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def next(self, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        sel = selectors.DefaultSelector()
        sel.register(self.fd, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"no line within {timeout} s (so far: {self.buf!r})")
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"the process closed its output (so far: {self.buf!r})")
                self.buf += chunk
        finally:
            sel.close()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM: killing it", name)
            proc.kill()
            proc.wait(10)


def bus_config(workdir: Path, socket_path: Path) -> Path:
    """Debian's system bus configuration, minus what a private test bus must
    not have (its socket, user, pid file, service activation, the installed
    policies), plus a socket in `workdir` and the policy under test."""
    root = ET.parse(SYSTEM_CONF).getroot()
    keep = {"type", "auth", "policy", "limit"}
    for child in list(root):
        if child.tag not in keep:
            root.remove(child)
    listen = ET.SubElement(root, "listen")
    listen.text = f"unix:path={socket_path}"
    include = ET.SubElement(root, "include")
    include.text = str(POLICY)
    path = workdir / "bus.conf"
    doctype = (
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
    )
    path.write_text(doctype + ET.tostring(root, encoding="unicode") + "\n")
    return path


# A D-Bus client for Debian's python3 (python3-dbus-fast): makes the calls
# given as JSON and prints each reply (or error name) as JSON.
CLIENT = r"""
import asyncio, json, sys
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

def plain(v):
    if isinstance(v, Variant):
        return plain(v.value)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v

async def main(address, calls):
    bus = await MessageBus(bus_address=address).connect()
    out = []
    for c in calls:
        body = [Variant(b["variant"][0], b["variant"][1]) if isinstance(b, dict) else b for b in c["body"]]
        reply = await bus.call(Message(destination=c["dest"], path=c["path"], interface=c["interface"],
                                       member=c["member"], signature=c["signature"], body=body))
        if reply.message_type == MessageType.ERROR:
            out.append({"error": reply.error_name, "message": reply.body[0] if reply.body else ""})
        else:
            out.append({"ok": plain(reply.body)})
    bus.disconnect()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
"""


def call(
    dest: str | None,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    interface: str | None = IFACE,
    path: str = PATH,
) -> dict[str, Any]:
    return {
        "dest": dest,
        "path": path,
        "interface": interface,
        "member": member,
        "signature": signature,
        "body": body or [],
    }


def agent(member: str, signature: str = "", body: list[Any] | None = None) -> dict[str, Any]:
    return call(NAME, member, signature, body)


def props(member: str, signature: str, body: list[Any]) -> dict[str, Any]:
    return call(NAME, member, signature, body, interface="org.freedesktop.DBus.Properties")


def bus_daemon(member: str, signature: str = "", body: list[Any] | None = None) -> dict[str, Any]:
    return call(
        "org.freedesktop.DBus", member, signature, body, "org.freedesktop.DBus", "/org/freedesktop/DBus"
    )


@dataclass
class Bus:
    address: str
    workdir: Path

    def calls(self, calls: list[dict[str, Any]], *, as_nobody: bool) -> list[dict[str, Any]]:
        argv = [DEBIAN_PYTHON, "-c", CLIENT, self.address, json.dumps(calls)]
        if as_nobody:
            argv = NOBODY + argv
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=system_env(), timeout=TIMEOUT, check=False
        )
        log.info("%s -> %s %s", [c["member"] for c in calls], proc.stdout, proc.stderr)
        assert proc.returncode == 0, proc.stderr
        out: list[dict[str, Any]] = json.loads(proc.stdout)
        return out

    def call(self, c: dict[str, Any], *, as_nobody: bool) -> dict[str, Any]:
        return self.calls([c], as_nobody=as_nobody)[0]

    def has_owner(self, name: str) -> bool:
        reply = self.call(bus_daemon("NameHasOwner", "s", [name]), as_nobody=False)
        return bool(reply["ok"][0])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tools() -> None:
    need_root()
    for tool, package in (
        ("dbus-daemon", "dbus-daemon"),
        ("setpriv", "util-linux"),
        ("ip", "iproute2"),
    ):
        need_tool(tool, package)
    if not SYSTEM_CONF.exists():
        pytest.skip(f"{SYSTEM_CONF} is missing (apt install dbus-system-bus-common)")
    need_debian_python("dbus_fast", "pyroute2", "pyudev", "tenacity")


@pytest.fixture
def bus(tools: None) -> Iterator[Bus]:
    # The socket's directory must be reachable for nobody: not under pytest's
    # private tmp_path.
    workdir = Path(tempfile.mkdtemp(prefix="guestfail-dbus-"))
    workdir.chmod(0o755)
    proc = None
    try:
        socket_path = workdir / "bus"
        conf = bus_config(workdir, socket_path)
        proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=system_env(),
        )
        assert proc.stdout is not None
        address = Lines(proc.stdout).next()  # printed once it listens
        assert address.startswith(f"unix:path={socket_path}"), address
        yield Bus(address, workdir)
    finally:
        if proc is not None:
            stop(proc, "dbus-daemon")
            assert proc.stderr is not None
            log.info("dbus-daemon stderr: %s", proc.stderr.read().decode(errors="replace"))
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def netns() -> Iterator[str]:
    name = f"guestfail-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, env=system_env())
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, env=system_env())


@pytest.fixture
def daemon(bus: Bus) -> Iterator[subprocess.Popen[bytes]]:
    """`guestfail run` on the private bus, in a fresh network namespace,
    ready (READY=1 arrived on its NOTIFY_SOCKET)."""
    state = bus.workdir / "state"
    cfg = bus.workdir / "guestfail.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{state}"\n')
    notify_path = bus.workdir / "notify"
    with contextlib.ExitStack() as stack:
        notify = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        notify.bind(str(notify_path))
        ns = stack.enter_context(netns())
        errlog = stack.enter_context(open(bus.workdir / "daemon.log", "wb"))
        env = system_env(
            PYTHONPATH=str(REPO),
            DBUS_SYSTEM_BUS_ADDRESS=bus.address,
            NOTIFY_SOCKET=str(notify_path),
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, DEBIAN_PYTHON, "-m", "guestfail", "--config", str(cfg), "run"],
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            env=env,
            cwd=bus.workdir,
        )
        try:
            wait_ready(notify, proc, bus.workdir / "daemon.log")
            yield proc
        finally:
            stop(proc, "guestfail run")
            log.info("guestfail run stderr:\n%s", (bus.workdir / "daemon.log").read_text(errors="replace"))


def wait_ready(notify: socket.socket, proc: subprocess.Popen[bytes], errlog: Path) -> None:
    """Wait for READY=1 on the notify socket; fail at once if the daemon dies."""
    deadline = time.monotonic() + TIMEOUT
    sel = selectors.DefaultSelector()
    sel.register(notify, selectors.EVENT_READ)
    try:
        while True:
            # wake up now and then only to notice a dead daemon
            ready = sel.select(min(1.0, max(0.0, deadline - time.monotonic())))
            if ready:
                message = notify.recv(4096).decode()
                log.info("notify: %s", message)
                if "READY=1" in message.split("\n"):
                    return
            if proc.poll() is not None:
                raise AssertionError(f"guestfail run exited {proc.returncode}:\n{errlog.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"guestfail run not ready within {TIMEOUT} s:\n{errlog.read_text()}")
    finally:
        sel.close()


# ---------------------------------------------------------------- tests


def test_root_owns_the_name(bus: Bus, daemon: subprocess.Popen[bytes]) -> None:
    assert bus.has_owner(NAME), "the daemon is ready but does not own the name: the policy refused root?"


def test_anyone_may_read(bus: Bus, daemon: subprocess.Popen[bytes]) -> None:
    status, version, everything, xml, ping = bus.calls(
        [
            agent("Status"),
            props("Get", "ss", [IFACE, "Version"]),
            props("GetAll", "s", [IFACE]),
            call(NAME, "Introspect", interface="org.freedesktop.DBus.Introspectable"),
            call(NAME, "Ping", interface="org.freedesktop.DBus.Peer"),
        ],
        as_nobody=True,
    )
    assert "ok" in status, status
    doc = json.loads(status["ok"][0])
    assert (doc["schema"], doc["source"], doc["daemon"]["running"]) == (1, "daemon", True)
    assert doc["daemon"]["pid"] != os.getpid()
    assert version == {"ok": [__version__]}
    assert everything["ok"][0]["Version"] == __version__
    assert everything["ok"][0]["Health"] == doc["health"]
    assert "PrepareUnplug" in xml["ok"][0]
    assert ping == {"ok": []}


def test_nobody_may_not_change_anything(bus: Bus, daemon: subprocess.Popen[bytes]) -> None:
    replies = bus.calls(
        [
            agent("Rescan"),
            agent("Switch", "ss", ["gf0", "standby"]),
            agent("PrepareUnplug", "sd", ["gf0", 1.0]),
            props("Set", "ssv", [IFACE, "Health", {"variant": ["s", "healthy"]}]),
            # without an interface, the member alone must not get through
            call(NAME, "Rescan", interface=None),
            # nor may anyone but root own the name
            bus_daemon("RequestName", "su", [NAME, 4]),
        ],
        as_nobody=True,
    )
    assert [r.get("error") for r in replies] == [ACCESS_DENIED] * len(replies), replies


def test_root_may_change(bus: Bus, daemon: subprocess.Popen[bytes]) -> None:
    rescan, switch, unplug = bus.calls(
        [
            agent("Rescan"),
            agent("Switch", "ss", ["gf0", "standby"]),
            agent("PrepareUnplug", "sd", ["gf0", 1.0]),
        ],
        as_nobody=False,
    )
    assert "ok" in rescan, rescan
    assert json.loads(rescan["ok"][0])["daemon"]["reconciles"] >= 2  # the start and this rescan
    # the policy lets them through; the daemon answers (there is no pair gf0)
    assert switch["error"] == "io.github.guestfail1.Error.NotFound", switch
    assert unplug["error"] == "io.github.guestfail1.Error.NotFound", unplug


# A stand-in service for the signal test: owns the name as root and emits
# ActiveChanged for every line it reads.
STAND_IN = r"""
import asyncio, sys
from dbus_fast import Message
from dbus_fast.aio import MessageBus

async def main(address):
    bus = await MessageBus(bus_address=address).connect()
    reply = await bus.request_name(sys.argv[2])
    print("owned", reply.value, flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        bus.send(Message.new_signal(sys.argv[3], sys.argv[4], "ActiveChanged", "ssssd",
                                    ["gf0", "eth0npf", "eth0nsby", "test", 1.5]))
        print("sent", flush=True)

asyncio.run(main(sys.argv[1]))
"""

LISTENER = r"""
import asyncio, json, sys
from dbus_fast import MessageType
from dbus_fast.aio import MessageBus

async def main(address):
    bus = await MessageBus(bus_address=address).connect()
    got = asyncio.get_running_loop().create_future()
    def handler(msg):
        if msg.message_type == MessageType.SIGNAL and msg.member == "ActiveChanged" and not got.done():
            got.set_result([msg.interface, msg.path, msg.body])
    bus.add_message_handler(handler)
    await bus.call(__import__("dbus_fast").Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
        member="AddMatch", signature="s", body=["type='signal',sender='" + sys.argv[2] + "'"]))
    print("listening", flush=True)
    print(json.dumps(await got), flush=True)

asyncio.run(main(sys.argv[1]))
"""


def test_only_root_owns_and_anyone_receives_signals(bus: Bus) -> None:
    # nobody cannot take the free name
    assert bus.call(bus_daemon("RequestName", "su", [NAME, 4]), as_nobody=True)["error"] == ACCESS_DENIED
    with contextlib.ExitStack() as stack:
        service = subprocess.Popen(
            [DEBIAN_PYTHON, "-c", STAND_IN, bus.address, NAME, PATH, IFACE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=system_env(),
        )
        stack.callback(stop, service, "stand-in")
        assert service.stdout is not None and service.stdin is not None
        service_out = Lines(service.stdout)
        assert service_out.next() == "owned 1"  # PRIMARY_OWNER
        listener = subprocess.Popen(
            [*NOBODY, DEBIAN_PYTHON, "-c", LISTENER, bus.address, NAME],
            stdout=subprocess.PIPE,
            env=system_env(),
        )
        stack.callback(stop, listener, "listener")
        assert listener.stdout is not None
        listener_out = Lines(listener.stdout)
        assert listener_out.next() == "listening"
        service.stdin.write(b"emit\n")
        service.stdin.flush()
        assert service_out.next() == "sent"
        assert json.loads(listener_out.next()) == [
            IFACE,
            PATH,
            ["gf0", "eth0npf", "eth0nsby", "test", 1.5],
        ]
