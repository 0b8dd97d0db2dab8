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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Optional

from lab import image as image_mod
from lab.topology import Topology, qemu_args
from lab.vm import Lab, LabError, accel

log = logging.getLogger("lab.image")

GUEST_LOG_DIR = "/var/log/lab"
KEPT = ("console.log", "journal-console.log", "journal.txt", "qemu-stderr.log", "command")


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

    # ------------------------------------------------------------ paths

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def stderr_log(self) -> Path:
        return self.workdir / "qemu-stderr.log"

    @property
    def journal_console_log(self) -> Path:
        return self.workdir / "journal-console.log"

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
        disk = image_mod.overlay(self.image, self.workdir / "disk.qcow2")
        w = self.workdir
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
            f"root=/dev/vda rw console=ttyS0 {self.append}".strip(),
            "-drive",
            f"file={disk},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-chardev",
            f"file,id=con0,path={self.console_log}",
            "-serial",
            "chardev:con0",
            "-chardev",
            f"file,id=jrn0,path={self.journal_console_log}",
            "-serial",
            "chardev:jrn0",
            # the guest's early entropy (systemd, Python's hash seed) without waiting
            "-device",
            "virtio-rng-pci",
        ]
        if self.seed is not None:
            cmd += ["-drive", f"file={self.seed},if=virtio,format=raw,readonly=on"]
        cmd += qemu_args(self.topo, self.backends, str(w / "qmp.sock"), str(w / "ctl.sock"))
        # qemu-guest-agent on the lab's virtio-serial bus (labser, made by qemu_args)
        cmd += [
            "-chardev",
            f"socket,id=labqga,path={w / 'qga.sock'}",
            "-device",
            "virtserialport,bus=labser.0,name=org.qemu.guest_agent.0,chardev=labqga",
        ]
        return cmd

    async def _start(self) -> None:
        self._qga_lock = asyncio.Lock()
        self._qga_connected = asyncio.Event()
        self._qga_server = await asyncio.start_unix_server(
            self._on_qga, path=str(self.workdir / "qga.sock"), limit=1 << 24
        )
        await super()._start()

    async def _on_qga(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._qga = (reader, writer)
        assert self._qga_connected is not None
        self._qga_connected.set()

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
        """Copy this boot's console, journal and command line to `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            src = self.workdir / name
            if src.exists():
                shutil.copy2(src, dest / name)
        return dest

    def journal_console_tail(self, lines: int = 80) -> str:
        try:
            text = self.journal_console_log.read_text(errors="replace")
        except OSError:
            return "(no journal console)"
        return "\n".join(text.splitlines()[-lines:])

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

    # ------------------------------------------------------------ teardown

    async def _shutdown(self) -> None:
        await super()._shutdown()
        if self._qga is not None:
            self._qga[1].close()
        if self._qga_server is not None:
            self._qga_server.close()
