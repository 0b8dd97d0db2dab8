"""Runs inside the lab's guest: serves the host-side test over a virtio-serial
port ("lab.ctl"), one JSON object per line each way.

Standard library only: it must start on any Python the guest has.  Requests
carry an "id" and are served concurrently (a thread each), so the host can wait
for a condition in the guest while it drives QEMU.  Waits are event-driven:
netlink multicast (links, addresses) or inotify (files) wake the check up; a
deadline bounds every wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

PORT_NAME = "lab.ctl"
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV4_ROUTE = 0x40
NETLINK_ROUTE = 0


def find_port(name: str = PORT_NAME) -> str:
    base = "/sys/class/virtio-ports"
    for entry in sorted(os.listdir(base)):
        try:
            with open(os.path.join(base, entry, "name")) as f:
                if f.read().strip() == name:
                    return "/dev/" + entry
        except OSError:
            continue
    raise SystemExit(f"guest_helper: no virtio port named {name}")


def copy_to_log(rfd: int, path: str) -> None:
    """A spawned process's output, from its pipe to its log, until EOF."""
    with open(path, "ab", buffering=0) as log:
        while chunk := os.read(rfd, 65536):  # EINTR is retried by Python itself (PEP 475)
            log.write(chunk)
    os.close(rfd)


def kernel_log(lines: int) -> list[str]:
    """The kernel log's last messages, read from /dev/kmsg (no exec: the
    report is for a guest whose root filesystem may have stalled)."""
    out: list[str] = []
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while reading: read on
                continue
            out.append(record.decode(errors="replace").partition(";")[2].split("\n")[0])
    finally:
        os.close(fd)
    return out[-lines:]


def stuck_report(pid: int) -> str:
    """Where a process and its session are: state, kernel stack, and the
    kernel log's tail.  Reads nothing that waits for the stuck process
    (/proc/<pid>/cmdline would take its memory map's lock)."""
    lines = []
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != pid:  # the session id
                continue
            lines.append(f"pid {entry} ({comm}) state {fields[0]}")
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stack") as f:
                lines.extend("    " + x for x in f.read().splitlines())
        except (OSError, ValueError, IndexError):
            continue
    lines.append("kernel log (tail):")
    try:
        lines.extend(kernel_log(30))
    except OSError as e:
        lines.append(f"(/dev/kmsg: {e})")
    return "\n".join(lines)


class Channel:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.lock = threading.Lock()

    def send(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def lines(self) -> Any:
        buf = b""
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)


# ---------------------------------------------------------------- link state


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def link_attr(name: str, attr: str) -> Any:
    """One attribute of a link, read from sysfs; None if absent."""
    base = f"/sys/class/net/{name}"
    if attr == "exists":
        return os.path.exists(base)
    if not os.path.exists(base):
        return None
    if attr == "master":
        m = os.path.join(base, "master")
        return os.path.basename(os.readlink(m)) if os.path.islink(m) else ""
    if attr == "active_slave":
        return _read(f"{base}/bonding/active_slave") or ""
    if attr == "carrier":
        v = _read(f"{base}/carrier")
        return int(v) if v and v.isdigit() else None
    if attr in ("operstate", "address", "ifalias", "mtu", "ifindex"):
        return _read(f"{base}/{attr}")
    if attr == "slaves":
        v = _read(f"{base}/bonding/slaves")
        return sorted(v.split()) if v else []
    if attr in ("inet", "inet6"):
        out = subprocess.run(
            ["ip", "-j", "-4" if attr == "inet" else "-6", "addr", "show", "dev", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        try:
            return sorted(a["local"] for e in json.loads(out or "[]") for a in e.get("addr_info", []))
        except (ValueError, KeyError):
            return None
    if attr in ("nm_state", "nm_state_text"):  # "100", or "100 (connected (externally))"
        out = subprocess.run(
            ["nmcli", "-g", "GENERAL.STATE", "device", "show", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not out:
            return None
        return out if attr == "nm_state_text" else out.split(" ")[0]
    if attr == "lower":
        return sorted(e[len("lower_") :] for e in os.listdir(base) if e.startswith("lower_"))
    raise ValueError(f"unknown attribute {attr}")


def link_by_mac(mac: str) -> list[str]:
    out = []
    for name in os.listdir("/sys/class/net"):
        if _read(f"/sys/class/net/{name}/address") == mac:
            out.append(name)
    return sorted(out)


def evaluate(clauses: list[dict[str, Any]]) -> tuple[bool, list[Any]]:
    """Every clause {"link": name, "attr": a, "eq": v} (or "ne": v, "in": [v...],
    "has": v for list attributes) must hold."""
    seen = []
    ok = True
    for c in clauses:
        if "team_active" in c:
            val: Any = team_active_port(c["team_active"])
            want = c.get("eq")
            good = val == want if "eq" in c else val != c.get("ne")
        else:
            val = link_attr(c["link"], c["attr"])
            if "has" in c:
                good = isinstance(val, list) and c["has"] in val
            elif "in" in c:
                good = val in c["in"]
            else:
                good = val == c["eq"] if "eq" in c else val != c["ne"]
        seen.append(val)
        ok = ok and good
    return ok, seen


def team_active_port(dev: str) -> Optional[str]:
    try:
        p = subprocess.run(
            ["teamdctl", dev, "state", "item", "get", "runner.active_port"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def netlink_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE))
    s.setblocking(False)
    return s


NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


def _nlattrs(data: bytes) -> dict[int, bytes]:
    out = {}
    off = 0
    while off + 4 <= len(data):
        ln, typ = struct.unpack_from("=HH", data, off)
        if ln < 4:
            break
        out[typ & 0x3FFF] = data[off + 4 : off + ln]
        off += (ln + 3) & ~3
    return out


def team_event_socket() -> Optional[socket.socket]:
    """A generic netlink socket in the team family's "change_event" group:
    readable whenever the team driver's options change (its active port
    among them).  None if the team module is not loaded."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    s.bind((0, 0))
    name = b"team\0"
    attr = struct.pack("=HH", 4 + len(name), CTRL_ATTR_FAMILY_NAME) + name + b"\0" * ((4 - len(name) % 4) % 4)
    body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr
    s.send(struct.pack("=LHHLL", 16 + len(body), GENL_ID_CTRL, 1, 1, 0) + body)
    reply = s.recv(65536)
    _ln, typ = struct.unpack_from("=LH", reply, 0)
    if typ == 2:  # NLMSG_ERROR: no such family
        s.close()
        return None
    attrs = _nlattrs(reply[20:])
    groups = _nlattrs(attrs.get(CTRL_ATTR_MCAST_GROUPS, b""))
    for grp in groups.values():
        g = _nlattrs(grp)
        if g.get(CTRL_ATTR_MCAST_GRP_NAME, b"").rstrip(b"\0") == b"change_event":
            gid = struct.unpack("=I", g[CTRL_ATTR_MCAST_GRP_ID])[0]
            s.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, gid)
            s.setblocking(False)
            return s
    s.close()
    return None


def wait_until(check: Callable[[], tuple[bool, Any]], timeout: float, wake: list[int]) -> dict[str, Any]:
    """Re-run `check` whenever one of the `wake` fds is readable (drained)."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    wakeups = 0
    while True:
        try:
            ok, seen = check()
        except OSError as e:  # a link renamed or removed while it was read
            ok, seen = False, str(e)
        if ok:
            return {"ok": True, "seen": seen, "waited": time.monotonic() - t0, "wakeups": wakeups}
        left = deadline - time.monotonic()
        if left <= 0:
            return {"ok": False, "seen": seen, "waited": time.monotonic() - t0, "wakeups": wakeups}
        ready, _, _ = select.select(wake, [], [], left)
        for fd in ready:
            wakeups += 1
            try:
                while os.read(fd, 65536):
                    pass
            except (BlockingIOError, OSError):
                pass


class Inotify:
    IN_ALL = 0x00000FFF

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._libc = libc
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path: str) -> None:
        if self._libc.inotify_add_watch(self.fd, path.encode(), self.IN_ALL) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------- streams


class UdpStream(threading.Thread):
    """A guest-originated, sequence-numbered UDP stream to the peer's sink."""

    def __init__(self, dst: str, port: int, rate: float, src_port: int) -> None:
        super().__init__(daemon=True)
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind(("", src_port))
        self.dst = (dst, port)
        self.rate = rate
        self.sent = 0
        self.errors = 0
        self.stop_ev = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_ev.is_set():
            due = t0 + self.sent / self.rate
            now = time.monotonic()
            if due > now:
                self.stop_ev.wait(due - now)  # pacing, not synchronisation
                continue
            payload = b"GFSQ" + struct.pack(">QQ", self.sent, time.monotonic_ns())
            try:
                self.sock.sendto(payload, self.dst)
            except OSError:
                self.errors += 1
            self.sent += 1


class BcastCounter(threading.Thread):
    """Counts the copies of each distinct datagram received on a UDP port
    (broadcasts the peer floods on every path)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("", port))
        self.counts: dict[str, int] = {}
        self.changed = threading.Condition()
        self.stop_r, self.stop_w = os.pipe()

    def _take(self, data: bytes) -> None:
        with self.changed:
            key = data.hex()
            self.counts[key] = self.counts.get(key, 0) + 1
            self.changed.notify_all()

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock.fileno(), self.stop_r], [], [])
            if self.stop_r in ready:
                return
            self._take(self.sock.recv(2048))

    def wait_distinct(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.counts) >= n, timeout)

    def stop(self) -> dict[str, int]:
        os.write(self.stop_w, b"x")
        self.join(5)
        self.sock.setblocking(False)
        while True:  # what is queued already counts too
            try:
                self._take(self.sock.recv(2048))
            except BlockingIOError:
                break
        self.sock.close()
        os.close(self.stop_r)
        os.close(self.stop_w)
        return self.counts


# ---------------------------------------------------------------- server


class Helper:
    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.streams: dict[str, UdpStream] = {}
        self.counters: dict[str, BcastCounter] = {}
        self.notify: dict[str, socket.socket] = {}
        self.notify_msgs: dict[str, list[str]] = {}
        self.pumps: dict[str, threading.Thread] = {}
        self.done = threading.Event()
        self.systemd = False  # run by systemd in an image guest (--systemd)

    # each op returns a dict (the reply) or raises
    def op_run(self, r: dict[str, Any]) -> dict[str, Any]:
        """Run argv to its end; past the timeout its whole session is killed
        and the reply says where it was stuck (a process in the kernel's
        uninterruptible sleep outlives SIGKILL: the reply must not wait for it)."""
        env = dict(os.environ, **r.get("env", {}))
        p = subprocess.Popen(
            r["argv"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = p.communicate(r.get("input", "").encode(), timeout=r.get("timeout_", 60))
        except subprocess.TimeoutExpired:
            where = stuck_report(p.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = b"", b""
            text = err.decode(errors="replace")
            return {"rc": None, "out": out.decode(errors="replace"), "err": f"timeout\n{where}\n{text}"}
        return {
            "rc": p.returncode,
            "out": out.decode(errors="replace"),
            "err": err.decode(errors="replace"),
        }

    def op_spawn(self, r: dict[str, Any]) -> dict[str, Any]:
        key = r["key"]
        old = self.procs.get(key)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"process {key} still runs")
        env = dict(os.environ, **r.get("env", {}))
        if r.get("notify"):
            path = f"/run/lab-notify-{key}.sock"
            if key not in self.notify:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(path)
                self.notify[key] = s
            self.notify_msgs[key] = []
            env["NOTIFY_SOCKET"] = path
        wfd: Optional[int] = None
        if r.get("log"):
            # through a pipe, copied to the log (on the 9p share) by a thread
            # of this helper: a process the test SIGKILLs must not die in the
            # middle of a 9p write (a guest kernel's 9p client can hang on
            # the flush that follows)
            rfd, wfd = os.pipe()
            pump = threading.Thread(target=copy_to_log, args=(rfd, r["log"]), daemon=True)
            pump.start()
            self.pumps[key] = pump
        out = subprocess.DEVNULL if wfd is None else wfd
        try:
            p = subprocess.Popen(
                r["argv"], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            if wfd is not None:
                os.close(wfd)
        self.procs[key] = p
        return {"pid": p.pid}

    def op_signal(self, r: dict[str, Any]) -> dict[str, Any]:
        p = self.procs[r["key"]]
        if p.poll() is None:
            os.kill(p.pid, getattr(signal, r.get("sig", "SIGTERM")))
        return {}

    def op_wait_proc(self, r: dict[str, Any]) -> dict[str, Any]:
        p = self.procs[r["key"]]
        try:
            rc = p.wait(timeout=r.get("timeout_", 30))
        except subprocess.TimeoutExpired:
            return {"rc": None}
        pump = self.pumps.get(r["key"])
        if pump is not None:
            pump.join(5)  # its last lines are in the log (a child it left may hold the pipe)
        return {"rc": rc}

    def op_pid(self, r: dict[str, Any]) -> dict[str, Any]:
        p = self.procs.get(r["key"])
        return {"pid": p.pid if p is not None and p.poll() is None else None}

    def op_find_links(self, r: dict[str, Any]) -> dict[str, Any]:
        """Net devices below a PCI(e) root port, by its address (rp), or in a
        hot-plug slot, by its name (slot: a switch's downstream port)."""
        return {"names": self._links_under(self._where(r))}

    @staticmethod
    def _where(r: dict[str, Any]) -> str:
        """What a device's sysfs path holds when it sits below the port:
        "/<root port>/", or "/<domain:bus:device>." of the slot."""
        if "slot" in r:
            address = _read(f"/sys/bus/pci/slots/{r['slot']}/address")
            return f"/{address}." if address else "/(no such slot)/"
        return f"/{r['rp']}/"

    def op_slot_power_indicator_on(self, r: dict[str, Any]) -> dict[str, Any]:
        """Once the power indicator of root port `rp`'s slot blinks (pciehp's
        sign that the attention button was pressed: the slot goes off in
        5 s), set it back to on in the port's Slot Control register, so
        that QEMU lets the button be pressed again (press_again in lab.vm).
        Polls every 10 ms: the register has no event to wait for."""
        fd = os.open(f"/sys/bus/pci/devices/{r['rp']}/config", os.O_RDWR)
        try:
            cap = os.pread(fd, 1, 0x34)[0]
            while cap and os.pread(fd, 1, cap)[0] != 0x10:  # the PCI Express capability
                cap = os.pread(fd, 2, cap)[1]
            if not cap:
                raise RuntimeError(f"{r['rp']} has no PCI Express capability")
            sltctl = cap + 0x18
            deadline = time.monotonic() + r.get("timeout_", 4)
            while True:
                value = struct.unpack("<H", os.pread(fd, 2, sltctl))[0]
                if (value >> 8) & 3 == 2:  # Power Indicator Control: blink
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the power indicator of {r['rp']} did not blink (slot control {value:#x})"
                    )
                time.sleep(0.01)
            os.pwrite(fd, struct.pack("<H", (value & ~0x300) | 0x100), sltctl)  # on
            return {"slot_control": value}
        finally:
            os.close(fd)

    def _links_under(self, where: str) -> list[str]:
        names = []
        for name in sorted(os.listdir("/sys/class/net")):
            try:
                dev = f"/sys/class/net/{name}/device"
                if not os.path.exists(dev):
                    continue
                path = os.path.realpath(dev)
            except OSError:  # no device, or renamed while we looked
                continue
            if where in path + "/":
                names.append(name)
        return names

    def op_wait_nic(self, r: dict[str, Any]) -> dict[str, Any]:
        """Wait until one netdev sits below root port `rp` (or in `slot`) and udev finished
        with it (its udev database entry exists): woken by netlink and by
        inotify on udev's database directory."""
        nl = netlink_socket()
        ino = Inotify()
        try:
            ino.watch("/run/udev/data")

            def check() -> tuple[bool, Any]:
                names = self._links_under(self._where(r))
                if len(names) != 1:
                    return False, names
                idx = _read(f"/sys/class/net/{names[0]}/ifindex")
                db = _read(f"/run/udev/data/n{idx}")
                # udev writes its database with ID_RENAMING=1 before it renames
                # and drops that mark when it has processed the "move" event.
                if db is None or "E:ID_RENAMING=1" in db.splitlines():
                    return False, names
                return True, self._links_under(self._where(r))

            return wait_until(check, r.get("timeout_", 30), [nl.fileno(), ino.fd])
        finally:
            nl.close()
            ino.close()

    def op_wait_notify(self, r: dict[str, Any]) -> dict[str, Any]:
        """Wait for an sd_notify message containing `contains` from a process
        spawned with notify=True."""
        sock = self.notify[r["key"]]
        deadline = time.monotonic() + r.get("timeout_", 30)
        while True:
            msgs = self.notify_msgs.setdefault(r["key"], [])
            if any(r["contains"] in m for m in msgs):
                return {"ok": True, "messages": msgs}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "messages": msgs}
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                msgs.append(sock.recv(4096).decode(errors="replace"))

    def op_netlink_dump(self, r: dict[str, Any]) -> dict[str, Any]:
        """The raw bytes of an RTM_GETLINK (16+2) or RTM_GETADDR dump, base64:
        recorded once, replayed in unit tests through pyroute2's parser."""
        import base64

        kind = {"link": 18, "addr": 22, "route": 26}[r.get("what", "link")]
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            s.bind((0, 0))
            body = (
                struct.pack("=BxHiII", 0, 0, 0, 0, 0) if kind == 18 else struct.pack("=BBBBI", 0, 0, 0, 0, 0)
            )
            if kind == 26:
                body = struct.pack("=BBBBBBBBI", 0, 0, 0, 0, 0, 0, 0, 0, 0)
            hdr = struct.pack("=LHHLL", 16 + len(body), kind, 0x301, 1, 0)
            s.send(hdr + body)
            chunks = []
            while True:
                data = s.recv(1 << 20)
                chunks.append(data)
                off, done = 0, False
                while off + 16 <= len(data):
                    ln, typ = struct.unpack_from("=LH", data, off)
                    if typ == 3:  # NLMSG_DONE
                        done = True
                    off += (ln + 3) & ~3
                if done:
                    break
        finally:
            s.close()
        return {"b64": base64.b64encode(b"".join(chunks)).decode()}

    def op_write_file(self, r: dict[str, Any]) -> dict[str, Any]:
        os.makedirs(os.path.dirname(r["path"]) or "/", exist_ok=True)
        if "b64" in r:  # binary content (a package, an archive)
            import base64

            with open(r["path"], "wb") as fb:
                fb.write(base64.b64decode(r["b64"]))
        else:
            with open(r["path"], "w") as f:
                f.write(r["content"])
        if "mode" in r:
            os.chmod(r["path"], r["mode"])
        return {}

    def op_read_file(self, r: dict[str, Any]) -> dict[str, Any]:
        try:
            with open(r["path"]) as f:
                return {"content": f.read()}
        except FileNotFoundError:
            return {"content": None}

    def op_wait_net(self, r: dict[str, Any]) -> dict[str, Any]:
        """Woken by rtnetlink (links, addresses) and, for team clauses, by the
        team driver's generic netlink change events."""
        s = netlink_socket()
        team = team_event_socket() if any("team_active" in c for c in r["clauses"]) else None
        fds = [s.fileno()] + ([team.fileno()] if team is not None else [])
        try:
            return wait_until(lambda: evaluate(r["clauses"]), r.get("timeout_", 30), fds)
        finally:
            s.close()
            if team is not None:
                team.close()

    def op_wait_file(self, r: dict[str, Any]) -> dict[str, Any]:
        """Wait until file `path` exists and (optionally) contains `contains`."""
        path = r["path"]
        ino = Inotify()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            ino.watch(os.path.dirname(path))

            def check() -> tuple[bool, Any]:
                content = _read(path)
                if content is None:
                    return False, None
                return (r.get("contains", "") in content), len(content)

            return wait_until(check, r.get("timeout_", 30), [ino.fd])
        finally:
            ino.close()

    def op_stream_start(self, r: dict[str, Any]) -> dict[str, Any]:
        st = UdpStream(r["dst"], r.get("port", 9), r["rate"], r.get("src_port", 0))
        self.streams[r["key"]] = st
        st.start()
        return {"src_port": st.sock.getsockname()[1]}

    def op_stream_stop(self, r: dict[str, Any]) -> dict[str, Any]:
        st = self.streams.pop(r["key"])
        st.stop_ev.set()
        st.join(5)
        st.sock.close()
        return {"sent": st.sent, "errors": st.errors}

    def op_bcast_start(self, r: dict[str, Any]) -> dict[str, Any]:
        c = BcastCounter(r["port"])
        self.counters[r["key"]] = c
        c.start()
        return {}

    def op_bcast_wait(self, r: dict[str, Any]) -> dict[str, Any]:
        c = self.counters[r["key"]]
        return {"ok": c.wait_distinct(r["distinct"], r.get("timeout_", 30)), "distinct": len(c.counts)}

    def op_bcast_stop(self, r: dict[str, Any]) -> dict[str, Any]:
        return {"counts": self.counters.pop(r["key"]).stop()}

    def op_poweroff(self, r: dict[str, Any]) -> dict[str, Any]:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        self.done.set()
        if self.systemd:  # an image guest: systemd shuts the machine down
            subprocess.run(["systemctl", "poweroff", "--no-block"], check=False)
        return {}

    def serve(self, req: dict[str, Any]) -> None:
        rid = req.get("id")
        try:
            fn = getattr(self, "op_" + req["op"])
            reply = fn(req)
            reply["id"] = rid
        except Exception as e:  # every failure goes back to the host, which raises it
            reply = {
                "id": rid,
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(),
            }
        self.chan.send(reply)
        if req.get("op") == "poweroff" and not self.systemd:
            os._exit(0)


def pin_tc_static_keys() -> None:
    """A clsact qdisc on loopback for the guest's life, before any traffic.

    The first clsact qdisc turns on the kernel's ingress and egress static
    keys, and the last one's removal turns them off: each time the receive
    path's code is patched live (int3, then the new bytes).  Under TCG a
    vCPU receiving a frame at that moment can take the int3 as an Oops
    (Debian 13's 6.12) or spin on it for minutes (Debian 12's 6.1: an RCU
    stall, the guest gone).  guestfail adds and removes its members' clsact
    qdiscs at every pairing and release, so the lab keeps the keys on from
    the start.  Real hardware and KVM do not need this."""
    with contextlib.suppress(OSError):  # no tc: nothing to pin
        subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "clsact"], capture_output=True, check=False)


def main() -> int:
    """Under virtme-run the helper is the guest's init script; in an image
    guest (--systemd) a service started when its port appears, restarted by
    systemd whenever the host side goes away (the channel reads EOF)."""
    pin_tc_static_keys()
    chan = Channel(find_port())
    helper = Helper(chan)
    helper.systemd = "--systemd" in sys.argv[1:]
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    chan.send({"event": "ready", "uptime": uptime, "kernel": os.uname().release})
    for req in chan.lines():
        threading.Thread(target=helper.serve, args=(req,), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
