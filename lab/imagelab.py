"""The lab with a Debian image booted by systemd (`lab.image`) instead of
virtme-run's shared root.

`ImageLab(topology, image)` is a `lab.vm.Lab`: the same peer (one UDP socket
per NIC on 127.0.0.1), QMP (hot-plug, link, and what live migration needs),
and the same control channel, served in the guest by the lab's helper, which
the image runs as a systemd service (lab-helper.service) started when its
virtio-serial port appears.  Nothing is shared with the host: no 9p, the
guest's files are reached through the channel.

Also on the machine, for the orchestrators of later tiers: qemu-guest-agent on
its own virtio-serial port (`qga()`, `guest_exec()`), a server socket here that
QEMU connects to like the others.

Every boot keeps in its work dir: the serial console (`console.log`), the
journal as journald forwards it to the second serial port (`journal-console.log`,
there even if the guest hangs) and, on request (`save_journal()`, done for a
failing test), `journalctl -b` of the boot.  `keep(dest)` copies them out.

Live migration: the guest's disk is a qcow2 overlay every QEMU process of it
opens (shared storage, as on a hypervisor cluster), so the running guest can
move to another QEMU process on this machine.  `start_destination()` starts
one with `-incoming defer` (a `Host`: its own work dir, QMP, control and
guest-agent sockets, and its own loopback socket per NIC, which the peer binds
as new paths named `<nic>@h<N>`), `migrate(dest)` moves the guest over a unix
socket, and `hand_over(dest)` makes the destination the lab's QEMU (the
methods of `lab.vm.Lab` then act on it) and quits the source.  Nobody tells
the peer: it learns the guest's new paths from its frames, as a switch does
(QEMU's self-announcement after the move, RARP, is the first).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lab import image as image_mod
from lab.topology import Backend, Topology, qemu_args
from lab.vm import Lab, LabError, QmpEvent, _Control, _free_udp_port, accel, file_tail

log = logging.getLogger("lab.image")

GUEST_LOG_DIR = "/var/log/lab"
KEPT = ("console.log", "journal-console.log", "journal.txt", "qemu-stderr.log", "command")
#: QEMU's migration speed limit, bytes/s: none to speak of (libvirt's default
#: is unlimited too; QEMU's own is 32 MiB/s)
MIGRATION_BANDWIDTH = 1 << 40


@dataclass
class Host:
    """One QEMU process of the guest: the boot's (h0) or a migration
    destination (h1, h2, ...), as a hypervisor host runs it."""

    index: int
    dir: Path  # its sockets and logs (h0: the lab's work dir)
    backends: dict[str, Backend] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)  # NIC id -> the peer's path for it here
    events: list[QmpEvent] = field(default_factory=list)  # every QMP event of this process
    proc: Optional[asyncio.subprocess.Process] = None
    qmp: Any = None
    qmp_task: Optional[asyncio.Task[None]] = None
    ctl: Optional[_Control] = None
    ctl_server: Optional[asyncio.AbstractServer] = None
    qga: Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
    qga_server: Optional[asyncio.AbstractServer] = None
    qga_connected: Optional[asyncio.Event] = None
    devices: dict[str, str] = field(default_factory=dict)  # NIC id -> port on its command line
    state: str = "new"  # new, incoming, running, source (migrated away), quit

    @property
    def name(self) -> str:
        return f"h{self.index}"

    @property
    def migrate_uri(self) -> str:
        return f"unix:{self.dir / 'migrate.sock'}"


def path_name(nic_id: str, host_index: int) -> str:
    """The peer's path for a NIC on a host: the NIC id on the boot's host,
    `<nic>@h<N>` on a migration's destination N."""
    return nic_id if host_index == 0 else f"{nic_id}@h{host_index}"


def host_topology(topo: Topology, plugged: dict[str, str], macs: dict[str, str]) -> Topology:
    """The topology a destination starts with: the NICs plugged now, at the
    ports and with the MACs they have now, on the command line (a migration
    needs the same devices on both sides); the others to be hot-plugged."""
    nics = tuple(
        dataclasses.replace(
            n,
            at_boot=n.id in plugged,
            port=plugged.get(n.id, n.port),
            mac=macs.get(n.id, n.mac) if n.id in plugged else n.mac,
        )
        for n in topo.nics
    )
    return dataclasses.replace(topo, nics=nics)


class ImageLab(Lab):
    def __init__(
        self,
        topology: Topology,
        img: image_mod.Image,
        *,
        name: str = "image",
        seed: Optional[Path] = None,
        append: str = "",
        boot_timeout: Optional[float] = None,
    ) -> None:
        kw: dict[str, Any] = {} if boot_timeout is None else {"boot_timeout": boot_timeout}
        super().__init__(topology, name=name, **kw)
        self.image = img
        self.seed = seed
        self.append = append
        self._qga: Optional[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = None
        self._qga_server: Optional[asyncio.AbstractServer] = None
        self._qga_lock: Optional[asyncio.Lock] = None
        self._qga_connected: Optional[asyncio.Event] = None
        h0 = Host(0, self.workdir, backends=self.backends, paths={n.id: n.id for n in topology.nics})
        h0.devices = dict(self.plugged)
        self.hosts: list[Host] = [h0]
        self.current: Host = self.hosts[0]
        self._macs: dict[str, str] = {}  # NIC id -> the MAC it was plugged with (device_add)
        self._disk = self.workdir / "disk.qcow2"

    # ------------------------------------------------------------ paths

    @property
    def console_log(self) -> Path:
        return self.current.dir / "console.log"

    @property
    def stderr_log(self) -> Path:
        return self.current.dir / "qemu-stderr.log"

    @property
    def journal_console_log(self) -> Path:
        return self.current.dir / "journal-console.log"

    def path(self, nic_id: str) -> str:
        """The peer's path for a NIC of the host the guest runs on now."""
        self.topo.nic(nic_id)
        return path_name(nic_id, self.current.index)

    def guest_path(self, name: str) -> str:
        """Where the guest keeps a file of this lab (logs of spawned processes)."""
        return f"{GUEST_LOG_DIR}/{name}"

    def log_tail(self, key: str, lines: int = 30) -> str:
        try:
            text = self.read_file(self.guest_path(f"{key}.log"))
        except LabError as e:
            return f"({key}.log unreadable: {e})"
        if text is None:
            return f"(no {key}.log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------ boot

    def _command(self) -> list[str]:
        image_mod.overlay(self.image, self._disk)
        return self.host_command(self.hosts[0], self.topo)

    def host_command(self, host: Host, topo: Topology, incoming: bool = False) -> list[str]:
        """QEMU's command line on `host`: the same machine on every host, with
        the host's own sockets and logs (`incoming`: a migration's
        destination, waiting for `migrate-incoming`)."""
        disk = self._disk
        w = host.dir
        cmd = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            accel(),
            "-m",
            self.topo.memory,
            "-smp",
            str(self.topo.cpus),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            f"root=/dev/vda rw console=ttyS0 {self._cloud_init_arg()}{self.append}".strip(),
            "-drive",
            f"file={disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-chardev",
            f"file,id=con0,path={w / 'console.log'}",
            "-serial",
            "chardev:con0",
            "-chardev",
            f"file,id=jrn0,path={w / 'journal-console.log'}",
            "-serial",
            "chardev:jrn0",
            # the guest's early entropy (systemd, Python's hash seed) without waiting
            "-device",
            "virtio-rng-pci",
        ]
        if self.seed is not None:
            cmd += ["-drive", f"file={self.seed},if=virtio,format=raw,readonly=on"]
        cmd += qemu_args(topo, host.backends, str(w / "qmp.sock"), str(w / "ctl.sock"))
        # qemu-guest-agent on the lab's virtio-serial bus (labser, made by qemu_args)
        cmd += [
            "-chardev",
            f"socket,id=labqga,path={w / 'qga.sock'}",
            "-device",
            "virtserialport,bus=labser.0,name=org.qemu.guest_agent.0,chardev=labqga",
        ]
        if incoming:
            cmd += ["-incoming", "defer"]
        return cmd

    async def _start(self) -> None:
        h0 = self.hosts[0]
        self._qga_lock = asyncio.Lock()
        self._qga_connected = h0.qga_connected = asyncio.Event()
        self._qga_server = h0.qga_server = await asyncio.start_unix_server(
            functools.partial(self._on_qga, h0), path=str(self.workdir / "qga.sock"), limit=1 << 24
        )
        await super()._start()
        h0.proc, h0.qmp, h0.qmp_task = self._proc, self._qmp, self._qmp_task
        h0.ctl, h0.ctl_server = self._ctl, self._ctl_server
        h0.state = "running"

    async def _on_qga(self, host: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host.qga = (reader, writer)
        if host is self.current:
            self._qga = host.qga
        assert host.qga_connected is not None
        host.qga_connected.set()

    async def _qmp_listen(self) -> None:
        """The boot's QEMU (vm.Lab starts this task): its events, by host."""
        await self._listen(self.hosts[0], self._qmp)

    async def _listen(self, host: Host, client: Any) -> None:
        """Record a QEMU process's events on its host and, while the guest
        runs there, in `qmp_events` (what `wait_qmp_event` looks at)."""
        from qemu.qmp import EventListener

        listener = EventListener()
        with client.listen(listener):
            async for msg in listener:
                ev: dict[str, Any] = dict(msg)
                event = QmpEvent(time.monotonic_ns(), str(ev["event"]), dict(ev.get("data") or {}))
                assert self._event_cond is not None
                async with self._event_cond:
                    host.events.append(event)
                    if host is self.current:
                        self.qmp_events.append(event)
                    self._event_cond.notify_all()

    def wait_booted(self, timeout: float = 300) -> str:
        """Wait until systemd finished booting; returns `is-system-running`
        ("running", or "degraded" when a unit failed)."""
        r = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
        state = r.out.strip()
        if state not in ("running", "degraded"):
            raise LabError(f"the guest did not finish booting: {state!r} {r.err}")
        return state

    # ------------------------------------------------------------ files

    def put_file(self, src: Path, dest: str, mode: Optional[int] = None) -> None:
        """Copy a host file (binary) into the guest."""
        kw: dict[str, Any] = {"path": dest, "b64": base64.b64encode(src.read_bytes()).decode()}
        if mode is not None:
            kw["mode"] = mode
        self.request("write_file", **kw)

    def journal(self, *args: str, timeout: float = 120) -> str:
        """`journalctl -b --no-pager` of this boot (with `args`)."""
        r = self.run("journalctl", "-b", "--no-pager", *args, check=False, timeout=timeout)
        return r.out

    def save_journal(self) -> Optional[Path]:
        """This boot's journal into the work dir (journal.txt), if the guest answers."""
        try:
            text = self.journal("-o", "short-monotonic", timeout=90)
        except Exception as e:
            log.warning("no journal from the guest: %s", e)
            return None
        path = self.workdir / "journal.txt"
        path.write_text(text)
        return path

    def keep(self, dest: Path) -> Path:
        """Copy this boot's console, journal and command line to `dest` (a
        migration destination's own files to `dest`/h<N>)."""
        dest.mkdir(parents=True, exist_ok=True)
        for host in self.hosts:
            to = dest if host.index == 0 else dest / host.name
            to.mkdir(exist_ok=True)
            for name in KEPT:
                src = host.dir / name
                if src.exists():
                    shutil.copy2(src, to / name)
        if self.current.index != 0 and (self.workdir / "journal.txt").exists():
            shutil.copy2(self.workdir / "journal.txt", dest / "journal.txt")
        return dest

    def journal_console_tail(self, lines: int = 80) -> str:
        return file_tail(self.journal_console_log, lines, "(no journal console)")

    # ------------------------------------------------------------ qemu-guest-agent

    async def _qga_call(self, cmd: str, args: Optional[dict[str, Any]], timeout: float) -> Any:
        assert self._qga_lock is not None and self._qga_connected is not None
        await asyncio.wait_for(self._qga_connected.wait(), timeout)
        assert self._qga is not None
        reader, writer = self._qga
        async with self._qga_lock:
            # guest-sync first: whatever an earlier, abandoned call left in the
            # channel is read and dropped up to the reply carrying our id
            sync_id = time.monotonic_ns() & 0x7FFFFFFF
            sync = {"execute": "guest-sync", "arguments": {"id": sync_id}}
            writer.write((json.dumps(sync) + "\n").encode())
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout)
                if not line:
                    raise LabError("qemu-guest-agent channel closed")
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("return") == sync_id:
                        break
            msg: dict[str, Any] = {"execute": cmd}
            if args:
                msg["arguments"] = args
            writer.write((json.dumps(msg) + "\n").encode())
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), timeout))
        if "error" in reply:
            raise LabError(f"qemu-guest-agent {cmd}: {reply['error']}")
        return reply.get("return")

    def qga(self, cmd: str, args: Optional[dict[str, Any]] = None, timeout: float = 60) -> Any:
        """One qemu-guest-agent command (guest-ping, guest-exec, ...)."""
        return self.on_loop(self._qga_call(cmd, args, timeout), timeout + 10)

    def guest_exec(self, argv: list[str], timeout: float = 60) -> tuple[int, str, str]:
        """Run a program in the guest through qemu-guest-agent's guest-exec:
        (exit code, stdout, stderr).  Waits on the agent's status, which
        answers at once: polled every 100 ms, bounded by `timeout`."""
        pid = self.qga("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"]
        deadline = time.monotonic() + timeout
        while True:
            st = self.qga("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
                err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
                return int(st.get("exitcode", -1)), out, err
            if time.monotonic() > deadline:
                raise LabError(f"guest-exec {argv} did not exit within {timeout} s")
            time.sleep(0.1)

    # ------------------------------------------------------------ hot-plug

    def _cloud_init_arg(self) -> str:
        """Without a NoCloud seed, cloud-init is off for the boot, as for a
        guest it has no part in: the image lists one datasource, and
        ds-identify takes a list of one as found, so cloud-init ran, found
        no seed, and 25.1 (Debian 13) failed its units for it."""
        return "" if self.seed is not None else "cloud-init=disabled "

    def plug(
        self, nic_id: str, port: Optional[str] = None, mac: str = "", wait: bool = True, second: bool = False
    ) -> str:
        self._macs[nic_id] = mac or self.topo.nic(nic_id).mac  # a destination starts with it
        return super().plug(nic_id, port, mac, wait, second)

    # ------------------------------------------------------------ live migration

    def start_destination(self, devices: Optional[dict[str, str]] = None, timeout: float = 60) -> Host:
        """Start another QEMU process for this guest, waiting for a migration
        (`-incoming defer`, then `migrate-incoming` on a unix socket of its
        own, with QMP's migration events on).  `devices`: NIC id -> port of
        the NICs on its command line (default: those plugged now, where they
        are); each NIC gets a loopback socket of its own, which the peer
        binds as a new path (`path_name`)."""
        devs = dict(self.plugged if devices is None else devices)
        for nic_id, port in devs.items():
            self.topo.nic(nic_id)
            self.topo.port(port)
        if len(set(devs.values())) != len(devs):
            raise LabError(f"two NICs on one port: {devs}")
        return self.on_loop(self._start_destination(devs, timeout), timeout + 15)

    async def _start_destination(self, devices: dict[str, str], timeout: float) -> Host:
        from qemu.qmp import QMPClient

        host = Host(len(self.hosts), self.workdir / f"h{len(self.hosts)}", devices=devices)
        host.dir.mkdir()
        self.hosts.append(host)
        for nic in self.topo.nics:
            path = path_name(nic.id, host.index)
            peer_port = self.peer.add_path(path)
            qemu_port = _free_udp_port()
            host.backends[nic.id] = Backend(qemu_port=qemu_port, peer_port=peer_port)
            host.paths[nic.id] = path
            self.peer.set_remote(path, qemu_port)
        host.qmp = QMPClient(f"{self.name}-{host.name}")
        await host.qmp.start_server(str(host.dir / "qmp.sock"))
        host.ctl_server = await asyncio.start_unix_server(
            functools.partial(self._on_host_ctl, host), path=str(host.dir / "ctl.sock"), limit=1 << 24
        )
        host.qga_connected = asyncio.Event()
        host.qga_server = await asyncio.start_unix_server(
            functools.partial(self._on_qga, host), path=str(host.dir / "qga.sock"), limit=1 << 24
        )
        topo = host_topology(self.topo, devices, self._macs)
        cmd = self.host_command(host, topo, incoming=True)
        (host.dir / "command").write_text(shlex.join(cmd) + "\n")
        log.info("destination %s: %s", host.name, host.dir)
        with open(host.dir / "qemu-stderr.log", "wb") as err:
            host.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
            )
        exited = asyncio.ensure_future(host.proc.wait())
        accepted = asyncio.ensure_future(host.qmp.accept())
        done, _ = await asyncio.wait({exited, accepted}, timeout=timeout, return_when="FIRST_COMPLETED")
        exited.cancel()
        if accepted not in done:
            accepted.cancel()
            raise LabError(
                f"destination {host.name}: QEMU did not connect to QMP: {_tail(host.dir / 'qemu-stderr.log')}"
            )
        await accepted
        host.qmp_task = asyncio.create_task(self._listen(host, host.qmp))
        await host.qmp.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        await host.qmp.execute("migrate-incoming", {"uri": host.migrate_uri})
        host.state = "incoming"
        return host

    async def _on_host_ctl(
        self, host: Host, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A destination's end of the control channel.  It shares the
        requests in flight with the source's: a request sent before the
        guest moved is answered here once it runs here."""
        base = self.hosts[0].ctl if self._ctl is None else self._ctl
        ctl = _Control(reader, writer) if base is None else _Control(reader, writer, base.pending, base.ids)
        host.ctl = ctl
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("event") == "ready":  # the guest's helper started again
                    log.warning("%s: the guest's helper (re)started: %s", host.name, msg)
                    continue
                fut = ctl.pending.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            if host is self.current:  # a destination that never ran the guest fails nothing
                for fut in ctl.pending.values():
                    if not fut.done():
                        fut.set_exception(LabError("guest control channel closed"))

    async def _host_event(
        self,
        host: Host,
        name: str,
        pred: Optional[Callable[[dict[str, Any]], bool]],
        after_ns: int,
        timeout: float,
    ) -> QmpEvent:
        try:
            return await asyncio.wait_for(self._event_in(host.events, name, pred, after_ns), timeout)
        except asyncio.TimeoutError:
            raise LabError(f"{host.name}: no QMP event {name} within {timeout} s") from None

    def wait_host_event(
        self,
        host: Host,
        name: str,
        pred: Optional[Callable[[dict[str, Any]], bool]] = None,
        after_ns: int = 0,
        timeout: float = 30,
    ) -> QmpEvent:
        """Like `wait_qmp_event`, on one host's QEMU whether the guest runs there or not."""
        return self.on_loop(self._host_event(host, name, pred, after_ns, timeout), timeout + 5)

    def host_qmp(
        self, host: Host, cmd: str, args: Optional[dict[str, Any]] = None, timeout: float = 30
    ) -> Any:
        """A QMP command to one host's QEMU."""
        if host.qmp is None or host.state == "quit":
            raise LabError(f"{host.name} has no QEMU")
        return self.on_loop(host.qmp.execute(cmd, args or {}), timeout)

    def migrate(self, dest: Host, timeout: float = 300) -> dict[str, Any]:
        """Move the running guest to `dest` (from `start_destination`): QMP
        `migrate` on the QEMU it runs on, then wait until that one says
        `completed` and `dest` resumed the guest (RESUME).  Returns the
        source's `query-migrate` (total time, downtime, RAM).  The lab still
        talks to the source until `hand_over`."""
        return self.on_loop(self._migrate(dest, timeout), timeout + 15)

    async def _migrate(self, dest: Host, timeout: float) -> dict[str, Any]:
        src = self.current
        if dest.state != "incoming":
            raise LabError(f"{dest.name} is not waiting for a migration ({dest.state})")
        assert src.qmp is not None
        await src.qmp.execute(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        await src.qmp.execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH})
        t0 = time.monotonic_ns()
        await src.qmp.execute("migrate", {"uri": dest.migrate_uri})
        ends = ("completed", "failed", "cancelled")
        end = await self._host_event(src, "MIGRATION", lambda d: d.get("status") in ends, t0, timeout)
        info: dict[str, Any] = await src.qmp.execute("query-migrate")
        if end.data.get("status") != "completed":
            raise LabError(
                f"migration {src.name} -> {dest.name} {end.data.get('status')}: "
                f"{info.get('error-desc', info)}; destination: {_tail(dest.dir / 'qemu-stderr.log')}"
            )
        left = max(1.0, timeout - (time.monotonic_ns() - t0) / 1e9)
        await self._host_event(dest, "RESUME", None, t0, left)
        src.state, dest.state = "source", "running"
        return info

    def hand_over(self, dest: Host, timeout: float = 60) -> None:
        """The guest runs on `dest` now: QMP, the control channel, the guest
        agent and `plugged` are dest's from here on, and the source QEMU
        (paused since the migration ended) quits, as libvirt ends it."""
        self.on_loop(self._hand_over(dest), timeout)

    async def _hand_over(self, dest: Host) -> None:
        src = self.current
        if dest.state != "running":
            raise LabError(f"{dest.name} does not run the guest ({dest.state})")
        assert self._event_cond is not None and dest.qmp_task is not None
        if src.ctl is not None:  # what is in flight is answered on dest's channel
            src.ctl.pending = {}
        async with self._event_cond:
            self.current = dest
            self._proc, self._qmp, self._qmp_task = dest.proc, dest.qmp, dest.qmp_task
            self._ctl_server = dest.ctl_server
            if dest.ctl is not None:
                self._ctl = dest.ctl
            self._qga, self._qga_server, self._qga_connected = dest.qga, dest.qga_server, dest.qga_connected
            self.backends = dest.backends
            self.plugged = dict(dest.devices)
            self.qmp_events = sorted([*self.qmp_events, *dest.events], key=lambda e: e.t_ns)
            self._event_cond.notify_all()
        await self._quit(src)

    async def _quit(self, host: Host) -> None:
        """End a QEMU process that does not run the guest (any more)."""
        host.state = "quit"
        if host.qmp_task is not None:
            host.qmp_task.cancel()
        proc = host.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(host.qmp.execute("quit"), 5)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if host.qmp is not None:
            with contextlib.suppress(Exception):
                await host.qmp.disconnect()
        if host.ctl is not None:
            host.ctl.writer.close()
        for server in (host.ctl_server, host.qga_server):
            if server is not None:
                server.close()
        if host.qga is not None:
            host.qga[1].close()

    # ------------------------------------------------------------ teardown

    async def _shutdown(self) -> None:
        # QEMU processes that do not run the guest first: quickly, so a slow
        # poweroff of the guest cannot leave them behind
        for host in self.hosts:
            if host is not self.current and host.state != "quit":
                if host.proc is not None and host.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(host.proc.pid, signal.SIGKILL)
                await self._quit(host)
        await super()._shutdown()
        if self._qga is not None:
            self._qga[1].close()
        if self._qga_server is not None:
            self._qga_server.close()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path.name})"
