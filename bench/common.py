"""What every benchmark mode shares: progress output, statistics, tables,
and a booted guest with the helpers the modes need (`BenchGuest`).

Everything here drives the lab (`lab.vm.Lab`) the way tests/vm does; the
agent runs from this checkout (GUESTFAIL_LAB_AGENT=installed: the installed
package), on the guest kernel, with traffic on loopback only.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lab.agent import agent_argv, install_files, start_system_bus
from lab.peer import Stream, StreamReport
from lab.topology import Topology
from lab.vm import Completed, Lab, LabError, accel, guest_kernel

REPO = Path(__file__).resolve().parent.parent
GUEST_IP = "192.0.2.2"
PEER_IP = "192.0.2.1"
STATE_JSON = "/run/guestfail/state.json"

# "<master>: active A -> B (reason, by guestfail|kernel in N ms)", as guestfail.agent.switcher logs it
SWITCH_RE = re.compile(
    r"(?P<master>\S+): active (?P<frm>\S+) -> (?P<to>\S+) "
    r"\((?P<reason>.*), by (?P<by>guestfail|kernel)(?: in (?P<ms>[0-9.]+) ms)?"
    r"(?:, request sent at (?P<sent>[0-9.]+) ms)?\)\s*$"
)


# ------------------------------------------------------------------ output


_T0 = time.monotonic()


def say(msg: str) -> None:
    """Progress, on stderr (stdout is for the tables)."""
    el = time.monotonic() - _T0
    print(f"[{time.strftime('%H:%M:%S')} +{el:6.0f}s] {msg}", file=sys.stderr, flush=True)


def now_ns() -> int:
    return time.monotonic_ns()


def sleep_until(t_ns: int) -> None:
    left = (t_ns - now_ns()) / 1e9
    if left > 0:
        time.sleep(left)


@contextmanager
def step(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    say(f"{what} ...")
    yield
    say(f"{what}: done in {time.monotonic() - t0:.1f} s")


def environment() -> dict[str, Any]:
    """What a reader needs to judge the figures: where and how they were taken."""
    try:
        kernel = guest_kernel()
    except Exception as e:  # reported, not fatal: the modes fail later with the lab's own message
        kernel = f"? ({e})"
    load = os.getloadavg()
    return {
        "guest_kernel": kernel,
        "accel": accel(),
        "host_cpus": os.cpu_count(),
        "host_loadavg_at_start": [round(x, 2) for x in load],
        "agent": os.environ.get("GUESTFAIL_LAB_AGENT") or "checkout",
        "python": sys.version.split()[0],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """Linear interpolation between closest ranks (q in 0..100); None if empty."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def spread(values: Sequence[Optional[float]]) -> dict[str, Any]:
    """median, min, max and n of the values that exist."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def fmt_num(v: Optional[float], digits: int = 0) -> str:
    if v is None:
        return "-"
    if digits == 0:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def fmt_spread(s: dict[str, Any], digits: int = 0) -> str:
    """ "med [min-max]", or just the value when min == max or n == 1."""
    if not s or s.get("n", 0) == 0:
        return "-"
    med, lo, hi = s["median"], s["min"], s["max"]
    if s["n"] == 1 or lo == hi:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} [{fmt_num(lo, digits)}-{fmt_num(hi, digits)}]"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> str:
    """A plain-text table (also valid Markdown)."""
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"

    out = []
    if title:
        out += [title, ""]
    out.append(line(headers))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the agent


@dataclass
class Agent:
    key: str
    pid: int
    log_offset: int = 0  # bytes of its log that came before what is being measured


@dataclass(frozen=True)
class SwitchLine:
    master: str
    frm: str
    to: str
    reason: str
    by: str
    ms: Optional[float]
    sent_ms: Optional[float] = None  # event -> guestfail's request out (its own share)


def parse_switches(text: str) -> list[SwitchLine]:
    out = []
    for raw in text.splitlines():
        m = SWITCH_RE.search(raw)
        if m:
            ms, sent = m.group("ms"), m.group("sent")
            out.append(
                SwitchLine(
                    m.group("master"),
                    m.group("frm"),
                    m.group("to"),
                    m.group("reason"),
                    m.group("by"),
                    float(ms) if ms is not None else None,
                    float(sent) if sent is not None else None,
                )
            )
    return out


# ------------------------------------------------------------------ ip monitor

# `ip -ts -d monitor link`: every message starts with "[time] ifindex: name: <FLAGS> ..."
MONITOR_HEAD_RE = re.compile(
    r"^\[(?P<ts>[0-9T:.-]+)\] (?P<deleted>Deleted )?(?P<idx>\d+): "
    r"(?P<name>[^:@\s]+)(?:@\S+)?: <(?P<flags>[^>]*)>"
)
ACTIVE_SLAVE_RE = re.compile(r"\bactive_slave (\S+)")


@dataclass(frozen=True)
class LinkMessage:
    t: float  # seconds (the guest's wall clock, as ip printed it)
    name: str
    flags: frozenset[str]
    deleted: bool
    active_slave: Optional[str]  # for a bond: its active member

    @property
    def carrier(self) -> bool:
        return "UP" in self.flags and "LOWER_UP" in self.flags


def parse_monitor(text: str) -> list[LinkMessage]:
    from datetime import datetime

    out: list[LinkMessage] = []
    head: Optional[re.Match[str]] = None
    body: list[str] = []

    def flush() -> None:
        if head is None:
            return
        t = datetime.strptime(head.group("ts"), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        m = ACTIVE_SLAVE_RE.search(" ".join(body))
        out.append(
            LinkMessage(
                t,
                head.group("name"),
                frozenset(head.group("flags").split(",")),
                bool(head.group("deleted")),
                m.group(1) if m else None,
            )
        )

    for line in text.splitlines():
        m = MONITOR_HEAD_RE.match(line)
        if m:
            flush()
            head, body = m, [line]
        elif head is not None:
            body.append(line)
    flush()
    return out


def carrier_to_active(
    msgs: list[LinkMessage], master: str, vf: str, standby: str, vf_carrier: Optional[bool] = True
) -> dict[str, list[float]]:
    """From the kernel's own messages: ms from the VF's carrier change (lost:
    admin down or no carrier; back: up with carrier) to the bond's next
    report of the member that should then be active.  A bond that already
    had that member active is not counted (nothing to switch); neither is a
    switch the bond reported before the VF's own message."""
    out: dict[str, list[float]] = {"to_standby": [], "to_vf": []}
    carrier = vf_carrier  # before the first message (None: unknown)
    active: Optional[str] = None
    pending: Optional[tuple[str, float]] = None  # (direction, time of the carrier change)
    for m in msgs:
        if m.name == vf and not m.deleted:
            if carrier is not None and m.carrier != carrier:
                pending = ("to_vf" if m.carrier else "to_standby", m.t)
            carrier = m.carrier
        elif m.name == master and m.active_slave is not None:
            if m.active_slave != active and pending is not None:
                direction, t0 = pending
                want = vf if direction == "to_vf" else standby
                if m.active_slave == want:
                    out[direction].append((m.t - t0) * 1000)
                    pending = None
            active = m.active_slave
    return out


# ------------------------------------------------------------------ a booted guest


class ReplyCounter:
    """Echo replies per path, counted as they arrive.  `StreamReport` rebuilds
    the whole stream on every call: far too slow as a `wait_for` predicate,
    which runs after every frame, at 1000 packets/s."""

    def __init__(self, lab: Lab) -> None:
        self.counts: dict[str, int] = {}
        self._remove = lab.peer.on_frame(self._on_frame)

    def _on_frame(self, path: str, parsed: Any, _raw: bytes) -> None:
        if parsed.kind == "icmp-echo-reply":
            self.counts[path] = self.counts.get(path, 0) + 1

    def get(self, path: str) -> int:
        return self.counts.get(path, 0)

    def close(self) -> None:
        self._remove()


class BenchGuest:
    """A started `Lab` with what the benchmarks do in and to the guest."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.agents = 0
        self.replies = ReplyCounter(lab)

    @classmethod
    @contextmanager
    def boot(cls, topo: Topology, name: str) -> Iterator[BenchGuest]:
        """Boot a guest; it is torn down (no QEMU left) however the block ends."""
        say(f"booting a guest ({name}; {accel()}: ~20-60 s under TCG)")
        t0 = time.monotonic()
        with Lab(topo, name=name) as lab:
            say(f"guest {name} up in {time.monotonic() - t0:.0f} s")
            g = cls(lab)
            try:
                g.install()
                yield g
            finally:
                g.replies.close()
                say(f"tearing down guest {name}")

    # ----------------------------------------------------------- setup

    def install(self) -> None:
        """What the package installs besides the code (tests/vm does the same)."""
        install_files(self.lab)

    def start_system_bus(self) -> None:
        start_system_bus(self.lab)

    def setup_standby(self, nic: str = "sb0", ip: str = GUEST_IP, prefix: int = 24) -> str:
        name = self.lab.ifname(nic)
        self.lab.run("ip", "link", "set", name, "up")
        self.lab.run("ip", "addr", "add", f"{ip}/{prefix}", "dev", name)
        return name

    def start_agent(
        self,
        *extra: str,
        dbus: bool = False,
        verbose: int = 1,
        wait: bool = True,
        timeout: float = 180,
    ) -> Agent:
        self.agents += 1
        key = f"agent{self.agents}"
        flags = ["-" + "v" * verbose] if verbose else []
        argv, env = agent_argv(*flags, "run", *([] if dbus else ["--no-dbus"]), *extra)
        pid = self.lab.spawn(key, argv, env=env, notify=True)
        if wait:
            self.lab.wait_notify(key, "READY=1", timeout=timeout)
        return Agent(key, pid)

    def stop_agent(self, agent: Agent, sig: str = "SIGTERM") -> Optional[int]:
        self.lab.signal(agent.key, sig)
        return self.lab.wait_proc(agent.key, timeout=60)

    def agent_log(self, agent: Agent) -> str:
        try:
            return (self.lab.workdir / f"{agent.key}.log").read_text(errors="replace")
        except OSError:
            return ""

    def mark_log(self, agent: Agent) -> None:
        """What the agent logs from now on is what `new_log` returns."""
        agent.log_offset = len(self.agent_log(agent).encode())

    def new_log(self, agent: Agent) -> str:
        try:
            with open(self.lab.workdir / f"{agent.key}.log", "rb") as f:
                f.seek(agent.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def guestfail(self, *args: str, check: bool = False, timeout: float = 120) -> Completed:
        argv, env = agent_argv(*args)
        return self.lab.run(*argv, env=env, check=check, timeout=timeout)

    def state(self) -> dict[str, Any]:
        text = self.lab.read_file(STATE_JSON)
        if not text:
            return {}
        doc: dict[str, Any] = json.loads(text)
        return doc

    def diagnostics(self, lines: int = 60) -> dict[str, str]:
        """The tails of the console and of every agent's log, for an error report."""
        out = {"console": self.lab.console_tail(lines)}
        for i in range(1, self.agents + 1):
            out[f"agent{i}"] = self.lab.log_tail(f"agent{i}", lines)
        return out

    # ----------------------------------------------------------- kernel

    def links(self) -> dict[str, dict[str, Any]]:
        return self.lab.links()

    def bonds(self, links: Optional[dict[str, dict[str, Any]]] = None) -> list[str]:
        links = links if links is not None else self.links()
        return sorted(n for n, e in links.items() if e.get("linkinfo", {}).get("info_kind") == "bond")

    def wait_active(self, master: str, slave: str, timeout: float = 60) -> None:
        self.lab.wait_net(
            [{"link": master, "attr": "active_slave", "eq": slave}],
            timeout=timeout,
            what=f"{slave} active in {master}",
        )

    def wait_team_active(self, master: str, port: str, timeout: float = 60) -> None:
        self.lab.wait_net(
            [{"team_active": master, "eq": port}], timeout=timeout, what=f"{port} active in {master}"
        )

    def proc_status(self, pid: int, tid: Optional[int] = None) -> dict[str, str]:
        """/proc/<pid>/status, or one thread's (/proc/<pid>/task/<tid>/status)."""
        path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
        text = self.lab.read_file(path) or ""
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}

    def ctxt_switches(self, pid: int) -> dict[str, int]:
        """Context switches of every thread of a process (/proc/<pid>/status
        counts only its main thread)."""
        out = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
        for tid in self.lab.run("ls", f"/proc/{pid}/task").out.split():
            st = self.proc_status(pid, int(tid))
            for k in out:
                out[k] += int(st.get(k, "0") or 0)
        return out

    def rss_kib(self, pid: int) -> dict[str, Optional[int]]:
        st = self.proc_status(pid)

        def kib(key: str) -> Optional[int]:
            v = st.get(key, "")
            return int(v.split()[0]) if v else None

        return {
            "VmRSS_kib": kib("VmRSS"),
            "VmHWM_kib": kib("VmHWM"),
            "Threads": int(st["Threads"]) if "Threads" in st else None,
            "voluntary_ctxt_switches": int(st["voluntary_ctxt_switches"])
            if "voluntary_ctxt_switches" in st
            else None,
            "nonvoluntary_ctxt_switches": int(st["nonvoluntary_ctxt_switches"])
            if "nonvoluntary_ctxt_switches" in st
            else None,
        }

    def cpu_ticks(self, pid: int) -> tuple[int, int]:
        """utime and stime of a process (clock ticks), from /proc/<pid>/stat."""
        text = self.lab.read_file(f"/proc/{pid}/stat") or ""
        fields = text[text.rindex(")") + 2 :].split()
        # after "pid (comm) ": state is field 3, utime field 14, stime field 15
        return int(fields[11]), int(fields[12])

    def rx_drops(self, name: str) -> dict[str, int]:
        """A NIC's receive-side drop counters (the e1000's missed packets among them)."""
        keys = ("rx_missed_errors", "rx_dropped", "rx_fifo_errors", "rx_over_errors")
        r = self.lab.run("cat", *(f"/sys/class/net/{name}/statistics/{k}" for k in keys), check=False)
        vals = r.out.split()
        if r.rc != 0 or len(vals) != len(keys):
            return {}
        return {k: int(v) for k, v in zip(keys, vals)}

    def open_fds(self, pid: int) -> int:
        return len(self.lab.run("ls", f"/proc/{pid}/fd").out.split())

    # ----------------------------------------------------------- traffic

    def start_stream(self, rate_pps: float) -> Stream:
        async def start() -> Stream:
            return self.lab.peer.start_stream(rate_pps)

        return self.lab.on_loop(start(), timeout=10)

    def stop_stream(self, stream: Stream, grace: float = 1.0) -> StreamReport:
        return self.lab.on_loop(self.lab.peer.stop_stream(stream, grace), timeout=grace + 60)

    def wait_replies(self, path: str, n: int, timeout: float = 30) -> bool:
        """Wait until `n` more echo replies came back over `path`; False on timeout."""
        base = self.replies.get(path)

        def enough(_: Any) -> bool:
            return self.replies.get(path) >= base + n

        try:
            self.lab.on_loop(
                self.lab.peer.wait_for(enough, timeout, f"{n} replies over {path}"), timeout + 10
            )
        except TimeoutError:
            return False
        return True

    def nudge(self) -> None:
        """One datagram from the guest to the peer (UDP echo port): the peer
        learns which path the guest sends on now.  Used only between
        measurements, to restore a steady state a setup does not restore itself."""
        code = f"import socket; socket.socket(2, 2).sendto(b'nudge', ('{PEER_IP}', 7))"
        self.lab.run(sys.executable, "-c", code, check=False)

    def send_broadcasts(self, port: int, n: int, interval: float = 0.005) -> None:
        async def go() -> None:
            import asyncio

            for i in range(n):
                self.lab.peer.send_broadcast(port, b"GFBC%06d" % i)
                await asyncio.sleep(interval)

        self.lab.on_loop(go(), timeout=30 + n * interval * 2)


def guest_python_timer(argv: list[str], env: dict[str, str], n: int) -> str:
    """Python code that runs `argv` n times in the guest and prints the wall
    times (s) as JSON: timed there, without the control channel's round trip."""
    return (
        "import json, os, subprocess, time\n"
        f"argv = {argv!r}\n"
        f"env = dict(os.environ, **{env!r})\n"
        "out = []\n"
        f"for _ in range({n}):\n"
        "    t = time.perf_counter()\n"
        "    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "    out.append(time.perf_counter() - t)\n"
        "print(json.dumps(out))\n"
    )


def require_lab() -> None:
    """Fail early, saying why, where the lab cannot run."""
    import shutil

    if shutil.which("qemu-system-x86_64") is None:
        raise LabError("qemu-system-x86_64 is not installed (.ci/setup installs it)")
    guest_kernel()
