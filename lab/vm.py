"""The lab: a real guest kernel under QEMU, driven from the host.

`Lab(topology).start()` boots Debian's kernel with virtme-run on this machine's
own root file system (shared read-only, so the project's venv and code are
visible in the guest), gives each NIC a UDP backend on 127.0.0.1 whose other
end is the lab's `Peer`, and returns once the guest helper said it is ready.

Everything a test does is a method here, synchronous, with a deadline:
QMP (plug, unplug, link), commands and waits in the guest (over a
virtio-serial port; waits are woken by netlink or inotify in the guest),
and the peer's counters.  `close()` always leaves no QEMU process, socket
or temporary directory behind.

The host-side sockets are servers that QEMU connects to (QMP and the control
port): no polling for a socket file to appear.
"""

from __future__ import annotations

import asyncio
import atexit
import compileall
import contextlib
import glob
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

from lab.peer import Peer
from lab.topology import Backend, Nic, Topology, device_props, qemu_args, root_port_address

log = logging.getLogger("lab")
logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = float(os.environ.get("GUESTFAIL_LAB_BOOT_TIMEOUT", "300"))


# Every lab not closed yet: closed at interpreter exit, whatever happened
# (a test that failed or timed out still leaves no QEMU behind).
_LIVE: weakref.WeakSet[Lab] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for lab in list(_LIVE):
        lab.close()


def compile_checkout() -> None:
    """Byte-compile this checkout's packages before a guest runs them: the
    guest sees them read-only over 9p and cannot write its own .pyc, so
    without this every start in the guest compiles every module again
    (measured: `import guestfail.agent.daemon` took 12-26 s in a TCG guest)."""
    for pkg in ("guestfail", "lab"):
        compileall.compile_dir(str(REPO / pkg), quiet=1)


def file_tail(path: Path, lines: int, missing: str) -> str:
    """The last `lines` lines of a log the lab keeps, or `missing`."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return missing
    return "\n".join(text.splitlines()[-lines:])


class LabError(RuntimeError):
    """The lab itself failed (QEMU, the guest helper, a deadline)."""


class GuestError(LabError):
    """A request to the guest failed."""


def guest_kernel() -> str:
    """The guest kernel: $GUESTFAIL_LAB_KERNEL, else the newest Debian one."""
    env = os.environ.get("GUESTFAIL_LAB_KERNEL")
    if env:
        return env
    found = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not found:
        raise LabError(
            "no guest kernel: install Debian's linux-image-amd64 (.ci/run does) or set GUESTFAIL_LAB_KERNEL"
        )
    return found[-1]


def accel() -> str:
    """tcg by default: nested KVM hangs on these machines.  GUESTFAIL_LAB_ACCEL=kvm
    where it works (about ten times faster)."""
    return os.environ.get("GUESTFAIL_LAB_ACCEL", "tcg")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Completed:
    argv: list[str]
    rc: Optional[int]
    out: str
    err: str

    def check(self) -> Completed:
        if self.rc != 0:
            raise GuestError(
                f"{shlex.join(self.argv)} exited {self.rc}\nstdout: {self.out}\nstderr: {self.err}"
            )
        return self


@dataclass
class QmpEvent:
    t_ns: int
    name: str
    data: dict[str, Any]


class _Loop:
    """One asyncio loop in a thread; the lab's sockets all live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lab-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class _Control:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))


class Lab:
    def __init__(
        self,
        topology: Topology,
        *,
        name: str = "lab",
        boot_timeout: float = BOOT_TIMEOUT,
        qemu_bin: str = "",
    ) -> None:
        topology.validate()
        # another QEMU than this machine's (lab.qemu10's wrapper: QEMU 10 for igb)
        self.qemu_bin = qemu_bin
        self.topo = topology
        self.boot_timeout = boot_timeout
        _LIVE.add(self)
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"guestfail-{name}-"))
        self.peer = Peer()
        self.backends: dict[str, Backend] = {}
        self.plugged: dict[str, str] = {n.id: n.port for n in topology.nics if n.at_boot}
        self.qmp_events: list[QmpEvent] = []
        self._loop = _Loop()
        self._proc: Optional[asyncio.subprocess.Process] = None
        self._qmp: Any = None
        self._ctl: Optional[_Control] = None
        self._ctl_server: Optional[asyncio.AbstractServer] = None
        self._ready: Optional[asyncio.Future[dict[str, Any]]] = None
        self._event_cond: Optional[asyncio.Condition] = None
        self.boot_seconds: Optional[float] = None
        self.guest_info: dict[str, Any] = {}
        self._closed = False

    # ------------------------------------------------------------ paths

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def stderr_log(self) -> Path:
        """Where QEMU's stderr goes (virtme-run prints the guest's console there)."""
        return self.console_log

    def guest_path(self, name: str) -> str:
        """A path in the shared work dir, the same in guest and host."""
        return str(self.workdir / name)

    # ------------------------------------------------------------ boot

    def start(self) -> Lab:
        compile_checkout()
        try:
            self._loop.call(self._start(), timeout=self.boot_timeout + 30)
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self) -> list[str]:
        qmp_path = str(self.workdir / "qmp.sock")
        ctl_path = str(self.workdir / "ctl.sock")
        extra = qemu_args(self.topo, self.backends, qmp_path, ctl_path)
        helper = [sys.executable, str(REPO / "lab" / "guest_helper.py")]
        virtme_run = shutil.which("virtme-run") or str(Path(sys.executable).parent / "virtme-run")
        cmd = [
            virtme_run,
            "--kimg",
            guest_kernel(),
            "--mods",
            "auto",
            "--disable-microvm",
            "--force-9p",
            "--memory",
            self.topo.memory,
            "--cpus",
            str(self.topo.cpus),
            "--rwdir",
            str(self.workdir),
            # the guest's own writable /etc and /var (tmpfs over the host's):
            # configs, network managers' state
            "--overlay-rwdir",
            "/etc",
            "--overlay-rwdir",
            "/var",
            "--script-sh",
            shlex.join(helper),
            # the kernel's warnings and worse (hung tasks, lockups, WARN
            # splats) go to the console log; virtme-ng's script mode would
            # otherwise print no console at all
            "--show-boot-console",
            "--kopt",
            "loglevel=5",
            # the kernel where every boot puts it: an instruction pointer in
            # a hung guest's report maps to /proc/kallsyms of any other boot
            "--kopt",
            "nokaslr",
        ]
        if accel() != "kvm":
            cmd.append("--disable-kvm")
        if self.qemu_bin:
            cmd += ["--qemu-bin", self.qemu_bin]
        # virtme-run takes everything after --qemu-opts as QEMU arguments.
        return [*cmd, "--qemu-opts", *extra]

    async def _start(self) -> None:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        self._event_cond = asyncio.Condition()
        for nic in self.topo.nics:
            peer_port = self.peer.add_path(nic.id)
            qemu_port = _free_udp_port()
            self.backends[nic.id] = Backend(qemu_port=qemu_port, peer_port=peer_port)
            self.peer.set_remote(nic.id, qemu_port)
        await self.peer.start()

        from qemu.qmp import QMPClient

        self._qmp = QMPClient(self.name)
        await self._qmp.start_server(str(self.workdir / "qmp.sock"))
        self._ready = loop.create_future()
        self._ctl_server = await asyncio.start_unix_server(
            self._on_ctl, path=str(self.workdir / "ctl.sock"), limit=1 << 24
        )
        cmd = self._command()
        (self.workdir / "command").write_text(shlex.join(cmd) + "\n")
        log.info("booting %s (%s): %s", guest_kernel(), accel(), self.workdir)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        with (
            open(self.stderr_log, "wb") as console,
            open(self.workdir / "stdout.log", "wb") as out,
        ):
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=console,
                env=env,
                start_new_session=True,
            )
        exited = asyncio.ensure_future(self._proc.wait())
        accepted = asyncio.ensure_future(self._qmp.accept())
        done, _ = await asyncio.wait({exited, accepted}, timeout=60, return_when="FIRST_COMPLETED")
        if accepted not in done:
            accepted.cancel()
            raise LabError(f"QEMU did not connect to QMP: {self.console_tail()}")
        await accepted
        self._qmp_task = asyncio.ensure_future(self._qmp_listen())
        waiting: set[asyncio.Future[Any]] = {exited, self._ready}
        done, _ = await asyncio.wait(waiting, timeout=self.boot_timeout, return_when="FIRST_COMPLETED")
        if self._ready not in done:
            raise LabError(
                f"guest not ready after {time.monotonic() - t0:.0f} s "
                f"(exited: {exited.done()}): {self.console_tail()}"
            )
        self.guest_info = self._ready.result()
        self.boot_seconds = time.monotonic() - t0
        log.info("guest ready in %.1f s (kernel %s)", self.boot_seconds, self.guest_info.get("kernel"))

    async def _qmp_listen(self) -> None:
        from qemu.qmp import EventListener

        listener = EventListener()
        with self._qmp.listen(listener):
            async for msg in listener:
                ev: dict[str, Any] = dict(msg)
                assert self._event_cond is not None
                async with self._event_cond:
                    self.qmp_events.append(
                        QmpEvent(time.monotonic_ns(), str(ev["event"]), dict(ev.get("data") or {}))
                    )
                    self._event_cond.notify_all()

    async def _on_ctl(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctl = _Control(reader, writer)
        self._ctl = ctl
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("event") == "ready":
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(msg)
                    continue
                fut = ctl.pending.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            for fut in ctl.pending.values():
                if not fut.done():
                    fut.set_exception(LabError("guest control channel closed"))

    # ------------------------------------------------------------ guest requests

    async def _request(self, op: str, timeout: float, **kw: Any) -> dict[str, Any]:
        ctl = self._ctl
        if ctl is None:
            raise LabError("guest not connected")
        rid = next(iter(ctl.ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        ctl.pending[rid] = fut
        ctl.writer.write((json.dumps({"id": rid, "op": op, **kw}) + "\n").encode())
        await ctl.writer.drain()
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            ctl.pending.pop(rid, None)
            raise LabError(f"guest did not answer {op} within {timeout:.0f} s") from None
        if "error" in reply:
            raise GuestError(f"{op} failed in the guest: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def request(self, op: str, timeout: float = 60, **kw: Any) -> dict[str, Any]:
        return self._loop.call(self._request(op, timeout, **kw), timeout + 15)

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        env: Optional[dict[str, str]] = None,
        input: str = "",
    ) -> Completed:
        r = self.request(
            "run",
            timeout=timeout + 5,
            argv=list(argv),
            timeout_=timeout,
            env=env or {},
            input=input,
        )
        res = Completed(list(argv), r["rc"], r["out"], r["err"])
        return res.check() if check else res

    def spawn(
        self,
        key: str,
        argv: list[str],
        env: Optional[dict[str, str]] = None,
        log_name: str = "",
        notify: bool = False,
    ) -> int:
        """Start a process in the guest; its output goes to <workdir>/<key>.log.
        With notify=True it gets a NOTIFY_SOCKET (sd_notify) to wait_notify on."""
        logfile = self.guest_path(log_name or f"{key}.log")
        r = self.request("spawn", key=key, argv=argv, env=env or {}, log=logfile, notify=notify)
        return int(r["pid"])

    def wait_notify(self, key: str, contains: str = "READY=1", timeout: float = 60) -> list[str]:
        r = self.request("wait_notify", timeout=timeout + 5, key=key, contains=contains, timeout_=timeout)
        if not r["ok"]:
            raise LabError(
                f"{key} sent no {contains!r} within {timeout} s (got {r['messages']}): {self.log_tail(key)}"
            )
        return list(r["messages"])

    def log_tail(self, key: str, lines: int = 30) -> str:
        try:
            text = (self.workdir / f"{key}.log").read_text(errors="replace")
        except OSError:
            return f"(no {key}.log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, key: str, sig: str = "SIGTERM") -> None:
        self.request("signal", key=key, sig=sig)

    def wait_proc(self, key: str, timeout: float = 30) -> Optional[int]:
        """The process's exit status, or None if it still runs after `timeout`."""
        rc = self.request("wait_proc", timeout=timeout + 5, key=key, timeout_=timeout)["rc"]
        return None if rc is None else int(rc)

    def pid(self, key: str) -> Optional[int]:
        """The guest pid of a process started with spawn(), if it still runs."""
        pid = self.request("pid", key=key)["pid"]
        return None if pid is None else int(pid)

    def write_file(self, path: str, content: str, mode: Optional[int] = None) -> None:
        kw: dict[str, Any] = {"path": path, "content": content}
        if mode is not None:
            kw["mode"] = mode
        self.request("write_file", **kw)

    def read_file(self, path: str) -> Optional[str]:
        c = self.request("read_file", path=path)["content"]
        return None if c is None else str(c)

    def wait_net(self, clauses: list[dict[str, Any]], timeout: float = 30, what: str = "") -> dict[str, Any]:
        """Wait until every clause holds in the guest; clauses are
        {"link": name, "attr": exists|carrier|master|active_slave|operstate|..., "eq"|"ne": v}."""
        r = self.request("wait_net", timeout=timeout + 5, clauses=clauses, timeout_=timeout)
        if not r["ok"]:
            raise LabError(f"timed out after {timeout} s waiting for {what or clauses}: saw {r['seen']}")
        return r

    def wait_file(self, path: str, contains: str = "", timeout: float = 30) -> None:
        r = self.request("wait_file", timeout=timeout + 5, path=path, contains=contains, timeout_=timeout)
        if not r["ok"]:
            raise LabError(f"timed out waiting for {path} to contain {contains!r}")

    def links(self) -> dict[str, dict[str, Any]]:
        """`ip -j -d addr show` in the guest, by interface name."""
        out = self.run("ip", "-j", "-d", "addr", "show").out
        return {entry["ifname"]: entry for entry in json.loads(out)}

    def ifname(self, nic_id: str) -> str:
        """The guest's current name for a NIC, found by its PCIe root port."""
        port = self.plugged.get(nic_id)
        if port is None:
            raise LabError(f"{nic_id} is not plugged")
        where = self._below(port)
        r = self.request("find_links", **where)
        names: list[str] = r["names"]
        if len(names) != 1:
            raise LabError(f"{nic_id}: expected one netdev under {where}, found {names}")
        return names[0]

    def root_port_address(self, port_id: str) -> str:
        dev, fn = root_port_address([p.id for p in self.topo.root_ports()].index(port_id))
        return f"0000:00:{dev:02x}.{fn}"

    def _below(self, port_id: str) -> dict[str, Any]:
        """How the guest helper finds what sits behind a port: a root port
        by its address; a switch's downstream port (its bus number is the
        guest's to give) by its slot."""
        port = self.topo.port(port_id)
        return {"slot": str(port.slot)} if port.switch else {"rp": self.root_port_address(port_id)}

    # ------------------------------------------------------------ QMP

    def qmp(self, cmd: str, args: Optional[dict[str, Any]] = None, timeout: float = 30) -> Any:
        return self._loop.call(self._qmp.execute(cmd, args or {}), timeout)

    def wait_nic(self, nic_id: str, timeout: float = 60) -> str:
        """Wait until the guest has the NIC's netdev and udev is done with it
        (named, properties set); returns its name."""
        where = self._below(self.plugged[nic_id])
        r = self.request("wait_nic", timeout=timeout + 5, timeout_=timeout, **where)
        if not r["ok"]:
            raise LabError(
                f"{nic_id} did not appear in the guest below {where} within {timeout} s: {r['seen']}"
            )
        return str(r["seen"][0])

    def plug(
        self, nic_id: str, port: Optional[str] = None, mac: str = "", wait: bool = True, second: bool = False
    ) -> str:
        """device_add; returns once QEMU acknowledged it and (wait=True) the
        guest has the netdev, named by udev.  Returns the guest's name or "".
        `second`: a second function in the slot (a pci-testdev, no driver),
        so that its slot's attention button can be pressed again
        (press_again)."""
        nic: Nic = self.topo.nic(nic_id)
        port = port or nic.port
        if nic_id in self.plugged:
            raise LabError(f"{nic_id} is already plugged at {self.plugged[nic_id]}")
        if port in self.plugged.values():
            raise LabError(f"port {port} is taken")
        props = device_props(self.topo, nic, port, mac)
        if second:
            # function 0 comes last: QEMU announces the slot when it arrives
            self.qmp(
                "device_add", {"driver": "pci-testdev", "id": f"{nic_id}-fn1", "bus": port, "addr": "0.1"}
            )
            props.update(addr="0.0", multifunction="on")
        self.qmp("device_add", props)
        self.plugged[nic_id] = port
        return self.wait_nic(nic_id) if wait else ""

    def press_again(self, nic_id: str, timeout: float = 4) -> None:
        """Press the attention button of a NIC's slot a second time, while
        the guest blinks its power indicator after device_del's press (the
        guest then cancels the removal).  QEMU (6.2 and later) refuses a
        second device_del of a device within 5 s, and any while the power
        indicator blinks, so: the guest helper sets the indicator back to on
        once it blinks, and device_del of the slot's second function (plug's
        `second`) presses the button."""
        port = self.topo.port(self.plugged[nic_id])
        if port.switch:
            raise LabError("press_again: root ports only")
        self.request("slot_power_indicator_on", rp=self.root_port_address(port.id), timeout_=timeout)
        self.qmp("device_del", {"id": f"{nic_id}-fn1"})

    def unplug(self, nic_id: str, timeout: float = 60) -> float:
        """device_del, then wait for QEMU's DEVICE_DELETED (the guest released
        it).  Returns the seconds that took."""
        if nic_id not in self.plugged:
            raise LabError(f"{nic_id} is not plugged")
        t0 = time.monotonic_ns()
        self.qmp("device_del", {"id": nic_id})
        self.wait_qmp_event(
            "DEVICE_DELETED", lambda d: d.get("device") == nic_id, after_ns=t0, timeout=timeout
        )
        del self.plugged[nic_id]
        return (time.monotonic_ns() - t0) / 1e9

    def set_link(self, nic_id: str, up: bool) -> None:
        self.qmp("set_link", {"name": nic_id, "up": up})

    async def _event_in(self, events: list[QmpEvent], name: str, pred: Any, after_ns: int) -> QmpEvent:
        """The first event `name` at or after `after_ns` in `events` (a list
        the QMP readers append to) that `pred` accepts, once there is one."""
        assert self._event_cond is not None
        async with self._event_cond:
            while True:
                for ev in events:
                    if ev.t_ns >= after_ns and ev.name == name and (pred is None or pred(ev.data)):
                        return ev
                await self._event_cond.wait()

    def wait_qmp_event(self, name: str, pred: Any = None, after_ns: int = 0, timeout: float = 30) -> QmpEvent:
        waiter = self._event_in(self.qmp_events, name, pred, after_ns)
        try:
            return self._loop.call(asyncio.wait_for(waiter, timeout), timeout + 5)
        except asyncio.TimeoutError:
            raise LabError(f"no QMP event {name} within {timeout} s") from None

    # ------------------------------------------------------------ peer

    def on_loop(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        """Run a coroutine (e.g. a Peer method) on the lab's loop."""
        return self._loop.call(coro, timeout)

    # ------------------------------------------------------------ teardown

    def kernel_trouble(self, lines: int = 100) -> str:
        """The console from the kernel's first warning, lockup, stall or hung
        task on (its tail keeps only the last of them)."""
        try:
            text = self.console_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console log)"
        marks = ("Oops", "BUG:", "WARNING:", "stall", "lockup", "blocked for more than", "Call Trace")
        first = next((i for i, x in enumerate(text) if any(m in x for m in marks)), None)
        if first is None:
            return "(no kernel warning on the console)"
        return "\n".join(text[first : first + lines])

    def vcpu_report(self) -> str:
        """Where QEMU says the guest's vCPUs are (a guest that answers
        nothing: spinning in its kernel, or halted and waiting)."""
        out = []
        for cmd in ("info status", "info cpus", "info registers -a"):
            try:
                text = self.qmp("human-monitor-command", {"command-line": cmd}, timeout=10)
            except Exception as e:  # a report for a failure: never raise from it
                text = f"({type(e).__name__}: {e})"
            lines = str(text).splitlines()
            if cmd.startswith("info registers"):  # the instruction pointers and modes only
                lines = [x for x in lines if x.startswith(("CPU#", "RAX", "RIP", "CS ="))]
            out.append(f"QEMU {cmd}:\n" + "\n".join(lines))
        return "\n".join(out)

    def net_report(self) -> str:
        """The guest's network as a failed test left it: counters of every
        link, qdiscs and filters, where the interrupts went.  A stalled
        receive path shows as a NIC whose counters stand still while the
        peer sends.  A guest that does not answer costs one 15-s wait."""
        out = []
        cmds: list[tuple[str, ...]] = [
            ("ip", "-s", "-d", "link"),
            ("tc", "-s", "qdisc"),
            ("grep", "-E", "CPU|virtio|vmxnet|eth|ens|enp", "/proc/interrupts"),
            ("cat", "/proc/net/softnet_stat"),
        ]
        try:
            links = json.loads(self.run("ip", "-j", "link", "show", timeout=15).out)
            names = [e["ifname"] for e in links if e.get("link_type") == "ether"]
        except Exception as e:  # a report for a failure: never raise from it
            return f"({type(e).__name__}: {e})"
        for n in names:
            cmds.append(("tc", "-s", "filter", "show", "dev", n, "ingress"))
        for argv in cmds:
            try:
                r = self.run(*argv, check=False, timeout=15)
                text = (r.out + r.err).rstrip()
            except Exception as e:
                text = f"({type(e).__name__}: {e})"
            out.append(f"$ {' '.join(argv)}\n{text}")
        return "\n".join(out)

    def console_tail(self, lines: int = 40) -> str:
        return file_tail(self.console_log, lines, "(no console log)")

    def kernel_log_tail(self, lines: int = 60) -> str:
        """The guest kernel's log, asked of the guest (virtme-ng's script
        mode prints no console); the console's tail when the guest does not
        answer."""
        try:
            r = self.run("dmesg", check=False, timeout=15)
        except LabError as e:
            return f"({e})\n{self.console_tail(lines)}\n{self.vcpu_report()}"
        return "\n".join(r.out.splitlines()[-lines:]) or self.console_tail(lines)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        with contextlib.suppress(Exception):
            self._loop.call(self._shutdown(), timeout=60)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self._loop.call(self._reap(), timeout=10)
        self._loop.stop()
        self.peer.close()
        if os.environ.get("GUESTFAIL_LAB_KEEP"):
            log.warning("lab files kept in %s", self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def _shutdown(self) -> None:
        if self._ctl is not None and self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._request("poweroff", 10)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 30)
        if self._proc is not None and self._proc.returncode is None and self._qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._qmp.execute("quit"), 5)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
        if getattr(self, "_qmp_task", None) is not None:
            self._qmp_task.cancel()
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                await self._qmp.disconnect()
        if self._ctl is not None:
            self._ctl.writer.close()
        if self._ctl_server is not None:
            self._ctl_server.close()

    async def _reap(self) -> None:
        if self._proc is not None:
            await self._proc.wait()
