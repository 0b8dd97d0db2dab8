"""Processes guestfail starts and watches: teamd, one per team master.

Arguments are lists (never a shell); a process's exit is an event (a pidfd the
daemon's loop watches), not something polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail.core.errors import SystemRefused

log = logging.getLogger(__name__)

TEAMD_RUN = Path("/run/teamd")
START_TIMEOUT = 30.0


def teamd_pidfile(dev: str) -> Path:
    return TEAMD_RUN / f"{dev}.pid"


def start_teamd(teamd: str, dev: str, config: dict[str, Any], take_over: bool) -> int:
    """Start teamd for `dev` with its D-Bus interface, leaving the device in
    place when teamd quits (-N), so a crash never takes the network down.
    teamd daemonizes once the device and D-Bus are ready; returns its pid."""
    TEAMD_RUN.mkdir(parents=True, exist_ok=True)
    pidfile = teamd_pidfile(dev)
    argv = [
        teamd,
        "--daemonize",
        "--dbus-enable",
        "--no-quit-destroy",
        f"--team-dev={dev}",
        f"--pid-file={pidfile}",
        f"--config={json.dumps(config, separators=(',', ':'))}",
    ]
    if take_over:
        argv.append("--take-over")
    log.info("starting teamd for %s%s", dev, " (taking over the device)" if take_over else "")
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SystemRefused(f"{teamd} is not installed (Debian: libteam-utils)") from None
    except subprocess.TimeoutExpired:
        raise SystemRefused(f"teamd for {dev} did not start within {START_TIMEOUT:.0f} s") from None
    if p.returncode != 0:
        detail = (p.stderr or p.stdout).strip().splitlines()
        raise SystemRefused(f"teamd for {dev} failed (exit {p.returncode}): {detail[-1] if detail else ''}")
    pid = read_pid(pidfile)
    if pid is None:
        raise SystemRefused(f"teamd for {dev} started but wrote no pid file {pidfile}")
    return pid


def read_pid(path: Path) -> Optional[int]:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def teamd_pid(dev: str) -> Optional[int]:
    return read_pid(teamd_pidfile(dev))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def pidfd(pid: int) -> Optional[int]:
    """A descriptor that becomes readable when `pid` exits (Linux >= 5.3)."""
    try:
        return os.pidfd_open(pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            return None
        raise


class PidWatch:
    """Processes whose exit is an event for the event loop (a pidfd becomes
    readable): how the daemon learns that a teamd died."""

    def __init__(self, loop: asyncio.AbstractEventLoop, exited: Callable[[str], None]) -> None:
        self.loop = loop
        self.exited = exited
        self.watched: dict[str, tuple[int, int]] = {}  # name -> (pid, pidfd)

    def watch(self, name: str, pid: int) -> bool:
        """Follow `pid` under `name`; False if it is gone already."""
        if self.watched.get(name, (None, None))[0] == pid:
            return True
        old = self.watched.pop(name, None)
        if old is not None:  # a new process under that name: the old one is not followed any more
            self.loop.remove_reader(old[1])
            os.close(old[1])
        fd = pidfd(pid)
        if fd is None:
            return False
        self.watched[name] = (pid, fd)
        self.loop.add_reader(fd, self._fired, name, fd)
        return True

    def _fired(self, name: str, fd: int) -> None:
        self.loop.remove_reader(fd)
        os.close(fd)
        if self.watched.get(name, (None, None))[1] == fd:
            self.watched.pop(name)
        self.exited(name)

    def close(self) -> None:
        for _pid, fd in self.watched.values():
            self.loop.remove_reader(fd)
            os.close(fd)
        self.watched.clear()


def find_by_name(comm: str, proc: Path = Path("/proc")) -> list[tuple[int, list[str]]]:
    """(pid, argv) of every process whose command name is `comm`."""
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != comm:
                continue
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # gone, or hidden
            continue
        argv = [a.decode(errors="surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []
        if argv:
            out.append((int(entry.name), argv))
    return out


def cgroup(pid: int, proc: Path = Path("/proc")) -> str:
    """/proc/<pid>/cgroup ("" if gone)."""
    try:
        return (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return ""


def kill(pid: int) -> None:
    """SIGKILL: the process gets no chance to clean up (on purpose)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
