"""`python -m bench soak`: many cycles, and the daemon killed and flooded.

In one guest with one pair, after the agent paired it:

1. unplug/replug cycles (device_del, device_add on alternating slots, so the
   VF's kernel name changes too); after every step the kernel's state is
   checked: exactly one bond, the standby's address on it, the standby active
   after an unplug, the VF enslaved and active after a replug;
2. admin link flaps of the VF, checked the same way after each half;
3. the daemon's RSS, threads and open files before 1 and after 2;
4. SIGKILL at a random point of pairing (a random delay after device_add) or
   of switching (a random delay after set_link), then a restart: each
   restart must converge (one master, its address, the VF active when it is
   present and has carrier);
5. a netlink overflow: veth pairs created and deleted in the guest in bursts
   (with the VF set down in the middle), once while the agent runs with its
   default receive buffer, and once while it is stopped (SIGSTOP) until the
   kernel counts drops on its link monitor (/proc/net/netlink), then SIGCONT;
   the daemon must count a resync (its state file), say so in its log, and
   end with the right state.

A step whose expected state is not reached within its timeout is a stuck
pair; a bond other than the pair's master is a leaked master.  Both should
be 0.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from bench import footprint, reaction
from bench.common import GUEST_IP, Agent, BenchGuest, fmt_num, say, table
from lab import topology
from lab.vm import LabError

TIMEOUT = 60.0
SOCKET_RE = re.compile(r"socket:\[(\d+)\]")


#: the soak's phases; `--phases` runs some of them (each fits 30 minutes of a
#: quiet 2-core TCG host alone; all of them do not)
PHASES = ("cycles", "flaps", "kills", "storm")


@dataclass
class Params:
    cycles: int = 200
    flaps: int = 500
    kills: int = 20
    storm: int = 1000
    seed: int = 0
    phases: tuple[str, ...] = PHASES


@dataclass
class Tally:
    checks: int = 0
    stuck: int = 0
    leaked_masters: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, where: str, problems: list[str], leaked: int = 0) -> None:
        self.checks += 1
        self.leaked_masters += leaked
        if problems:
            self.stuck += 1
            self.problems.append(f"{where}: {'; '.join(problems)}")
            say(f"soak: {where}: {'; '.join(problems)}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "stuck": self.stuck,
            "leaked_masters": self.leaked_masters,
            "problems": self.problems[:50],
        }


class Soak:
    def __init__(self, g: BenchGuest, agent: Agent, master: str, p: Params) -> None:
        self.g = g
        self.agent = agent
        self.master = master
        self.nsby = f"{master}nsby"
        self.npf = f"{master}npf"
        self.p = p
        self.rng = random.Random(p.seed)

    # ----------------------------------------------------------- checks

    def check(self, expect: str) -> tuple[list[str], int]:
        """The kernel's view.  expect: "vf" (VF enslaved and active),
        "vf-down" (VF enslaved, standby active), "standby" (no VF, standby
        active).  Returns (problems, leaked masters)."""
        links = self.g.links()
        problems = []
        bonds = self.g.bonds(links)
        leaked = len([b for b in bonds if b != self.master])
        if bonds != [self.master]:
            problems.append(f"bonds {bonds}, want [{self.master}]")
        m = links.get(self.master)
        if m is None:
            return [*problems, f"no {self.master}"], leaked
        addrs = [a.get("local") for a in m.get("addr_info", []) if a.get("family") == "inet"]
        if addrs != [GUEST_IP]:
            problems.append(f"{self.master} has {addrs}, want [{GUEST_IP}]")
        active = m.get("linkinfo", {}).get("info_data", {}).get("active_slave")
        want = self.npf if expect == "vf" else self.nsby
        if active != want:
            problems.append(f"active {active}, want {want}")
        vf = links.get(self.npf)
        if expect in ("vf", "vf-down") and (vf is None or vf.get("master") != self.master):
            problems.append(f"{self.npf} not enslaved: {None if vf is None else vf.get('master')}")
        if expect == "standby" and vf is not None:
            problems.append(f"{self.npf} still there")
        return problems, leaked

    def expect(self, tally: Tally, where: str, state: str, timeout: float = TIMEOUT) -> Optional[float]:
        """Wait for the active member the state calls for, then check all of
        it; returns the seconds the wait took (None: stuck)."""
        t0 = time.monotonic()
        slave = self.npf if state == "vf" else self.nsby
        try:
            self.g.wait_active(self.master, slave, timeout)
            waited: Optional[float] = time.monotonic() - t0
        except LabError as e:
            waited = None
            tally.add(where, [f"not converged in {timeout:g} s: {e}"])
            return None
        problems, leaked = self.check(state)
        tally.add(where, problems, leaked)
        return waited if not problems else None

    def memory(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.g.rss_kib(self.agent.pid))
        d["open_fds"] = self.g.open_fds(self.agent.pid)
        return d

    # ----------------------------------------------------------- phases

    def cycles(self) -> dict[str, Any]:
        g, n = self.g, self.p.cycles
        tally = Tally()
        say(f"soak: {n} unplug/replug cycles")
        t0 = time.monotonic()
        for i in range(1, n + 1):
            g.lab.unplug("vf0")
            self.expect(tally, f"cycle {i} unplug", "standby")
            g.lab.plug("vf0", port="p3" if i % 2 else "p2")
            self.expect(tally, f"cycle {i} replug", "vf")
            if i % 10 == 0 or i == n:
                el = time.monotonic() - t0
                say(f"soak: {i}/{n} cycles ({el / i:.1f} s each), {tally.stuck} stuck")
        return {"cycles": n, "seconds": round(time.monotonic() - t0, 1), **tally.as_dict()}

    def flaps(self) -> dict[str, Any]:
        g, n = self.g, self.p.flaps
        tally = Tally()
        say(f"soak: {n} admin link flaps")
        t0 = time.monotonic()
        for i in range(1, n + 1):
            g.lab.run("ip", "link", "set", self.npf, "down")
            self.expect(tally, f"flap {i} down", "vf-down")
            g.lab.run("ip", "link", "set", self.npf, "up")
            self.expect(tally, f"flap {i} up", "vf")
            if i % 50 == 0 or i == n:
                el = time.monotonic() - t0
                say(f"soak: {i}/{n} flaps ({el / i:.2f} s each), {tally.stuck} stuck")
        return {"flaps": n, "seconds": round(time.monotonic() - t0, 1), **tally.as_dict()}

    def kill(self) -> None:
        code = self.g.stop_agent(self.agent, "SIGKILL")
        if code != -9:
            say(f"soak: the agent ended with {code}, not by SIGKILL")

    def start(self) -> float:
        """A new agent; seconds to READY=1."""
        t0 = time.monotonic()
        self.agent = self.g.start_agent(verbose=2)
        return time.monotonic() - t0

    def landed(self, kind: str) -> str:
        """Where in pairing or switching the kill landed, from the kernel's
        state right after it."""
        g = self.g
        links = g.links()
        m = links.get(self.master, {})
        active = m.get("linkinfo", {}).get("info_data", {}).get("active_slave")
        if kind == "pairing":
            port = g.lab.plugged.get("vf0")
            names = g.lab.request("find_links", rp=g.lab.root_port_address(port))["names"] if port else []
            if not names:
                return "VF not yet in the guest"
            vf = links.get(names[0], {})
            if names[0] != self.npf:
                return "VF present, not renamed"
            if vf.get("master") != self.master:
                return "VF renamed, not enslaved"
            return "VF enslaved and active" if active == self.npf else "VF enslaved, not active"
        if active == self.nsby:
            return "standby active already"
        carrier = g.lab.run("cat", f"/sys/class/net/{self.npf}/carrier", check=False).out.strip()
        return "VF active, carrier loss not yet seen" if carrier == "1" else "VF active without carrier"

    def kills(self) -> dict[str, Any]:
        g, n = self.g, self.p.kills
        tally = Tally()
        records = []
        say(f"soak: {n} SIGKILLs of the agent while it pairs or switches (seed {self.p.seed})")
        for k in range(1, n + 1):
            kind = "pairing" if k % 2 else "switching"
            rec: dict[str, Any] = {"kill": k, "kind": kind}
            where = f"kill {k} ({kind})"
            if kind == "pairing":
                if "vf0" in g.lab.plugged:
                    g.lab.unplug("vf0")
                    self.expect(tally, f"kill {k}: unplug before", "standby")
                # device_add -> netdev ~1 s under TCG, pairing done ~1 s later
                delay = self.rng.uniform(0.5, 2.5)
                g.lab.plug("vf0", wait=False)
                time.sleep(delay)
                self.kill()
                rec["landed"] = self.landed(kind)
                rec["ready_s"] = self.start()
                g.lab.wait_nic("vf0")
                rec["converged_s"] = self.expect(tally, where, "vf", 120)
            else:
                # the e1000 notices in ~0.3-1.6 s, the switch follows
                delay = self.rng.uniform(0.0, 2.5)
                g.lab.set_link("vf0", up=False)
                time.sleep(delay)
                self.kill()
                rec["landed"] = self.landed(kind)
                rec["ready_s"] = self.start()
                rec["converged_s"] = self.expect(tally, where, "vf-down", 120)
                g.lab.set_link("vf0", up=True)
                rec["back_s"] = self.expect(tally, f"kill {k}: link back", "vf", 120)
            rec["delay_s"] = round(delay, 3)
            records.append(rec)
            ok = rec["converged_s"] is not None
            say(f"soak: kill {k}/{n} ({kind}, {delay:.2f} s: {rec['landed']}): converged {ok}")
        landed: dict[str, int] = {}
        for r in records:
            landed[r["landed"]] = landed.get(r["landed"], 0) + 1
        return {
            "kills": n,
            "converged": sum(1 for r in records if r["converged_s"] is not None),
            "landed": landed,
            "seed": self.p.seed,
            "records": records,
            **tally.as_dict(),
        }

    def netlink_sockets(self) -> dict[str, dict[str, int]]:
        """The agent's netlink sockets that listen to multicast groups (its
        link monitor, its udev monitor), from /proc/net/netlink: queued bytes
        and the kernel's drop counter, the ground truth of an overflow."""
        g, pid = self.g, self.agent.pid
        fds = g.lab.run("ls", "-l", f"/proc/{pid}/fd", check=False).out
        inodes = set(SOCKET_RE.findall(fds))
        out: dict[str, dict[str, int]] = {}
        for line in (g.lab.read_file("/proc/net/netlink") or "").splitlines()[1:]:
            f = line.split()
            if len(f) < 10 or f[9] not in inodes or int(f[3], 16) == 0:
                continue
            family = {"0": "rtnetlink", "15": "uevent"}.get(f[1], f"family {f[1]}")
            out[f"{family} groups {f[3]}"] = {"rmem": int(f[4]), "drops": int(f[8])}
        return out

    def drops(self) -> int:
        return sum(v["drops"] for v in self.netlink_sockets().values())

    def _burst(self, n: int, first: int, middle: str = "") -> float:
        """n veth pairs created, then deleted, in one `ip -batch`; seconds."""
        batch = [f"link add gfst{i}a type veth peer name gfst{i}b" for i in range(first, first + n)]
        if middle:
            batch.append(middle)
        batch += [f"link del gfst{i}a" for i in range(first, first + n)]
        t0 = time.monotonic()
        self.g.lab.run("ip", "-batch", "-", input="\n".join(batch) + "\n", timeout=1800)
        return time.monotonic() - t0

    def storm(self, stopped: bool) -> dict[str, Any]:
        """Running: one storm of `storm` veth pairs.  Stopped: bursts of that
        size until the kernel counts drops on the agent's link monitor (at
        most 10), then SIGCONT.  The VF goes down in the middle of the first
        burst: an event the daemon may never read."""
        g, n = self.g, self.p.storm
        tally = Tally()
        how = "stopped (SIGSTOP)" if stopped else "running"
        say(f"soak: event storm, bursts of {n} veth pairs created and deleted, the agent {how}")
        before = int(g.state().get("daemon", {}).get("resyncs", 0))
        drops0 = self.drops()
        g.mark_log(self.agent)
        bursts = 0
        storm_s = 0.0
        if stopped:
            g.lab.signal(self.agent.key, "SIGSTOP")
        try:
            while True:
                middle = f"link set {self.npf} down" if bursts == 0 else ""
                storm_s += self._burst(n, bursts * n, middle)
                bursts += 1
                if not stopped or self.drops() > drops0 or bursts >= 10:
                    break
        finally:
            sockets = self.netlink_sockets()
            if stopped:
                g.lab.signal(self.agent.key, "SIGCONT")
        dropped = sum(v["drops"] for v in sockets.values()) - drops0
        say(f"soak: storm of {bursts} x {n} veth pairs in {storm_s:.0f} s; {dropped} events dropped")
        t1 = time.monotonic()
        # the VF went down in the storm: the standby active, from now (SIGCONT)
        down = self.expect(tally, f"storm ({how}): VF down", "vf-down", 300)
        # the resync shows in the state file once its reconciliation is done
        after = before
        deadline = time.monotonic() + (180 if dropped else 10)
        while time.monotonic() < deadline:
            after = int(g.state().get("daemon", {}).get("resyncs", 0))
            if after > before:
                break
            time.sleep(1.0)
        resync_s = time.monotonic() - t1 if after > before else None
        if dropped and after == before:
            tally.add(
                f"storm ({how})", [f"the kernel dropped {dropped} events but the daemon counted no resync"]
            )
        g.lab.run("ip", "link", "set", self.npf, "up")
        back = self.expect(tally, f"storm ({how}): VF up", "vf", 300)
        # udev works through the storm's events for minutes under TCG: not waited for
        log = g.new_log(self.agent)
        overrun = [line for line in log.splitlines() if "overrun" in line or "resync" in line]
        findings = []
        if dropped and after > before and not overrun:
            # the state file counts it; the log (even at -vv) may not say so
            findings.append("resync counted in the state file, but not in the log")
        leftovers = [x for x in g.links() if x.startswith("gfst")]
        return {
            "agent": how,
            "veth_pairs": n * bursts,
            "bursts": bursts,
            "storm_s": round(storm_s, 1),
            "kernel_drops": dropped,
            "sockets": sockets,
            "resyncs": after - before,
            "resync_seen_after_s": None if resync_s is None else round(resync_s, 1),
            "overrun_log_lines": overrun[:5],
            "resync_logged": bool(overrun),
            "findings": findings,
            "vf_down_s": down,
            "vf_back_s": back,
            "leftover_veths": len(leftovers),
            **tally.as_dict(),
        }

    def warm_up(self) -> None:
        """One cycle and one flap, not counted: the daemon's worker threads and
        sockets are made on first use, which is not growth."""
        g = self.g
        g.lab.unplug("vf0")
        g.wait_active(self.master, self.nsby, TIMEOUT)
        g.lab.plug("vf0")
        g.wait_active(self.master, self.npf, TIMEOUT)
        reaction.flap(g, self.master)

    def all(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.p.seed}
        self.warm_up()
        out["memory_start"] = self.memory()
        say(f"soak: agent memory at start: {out['memory_start']}")
        wanted = set(self.p.phases)
        phases = [
            ("cycles", self.cycles),
            ("flaps", self.flaps),
            ("memory_end", self.memory),
            ("kills", self.kills),
            ("storm_running", lambda: self.storm(False)),
            ("storm_stopped", lambda: self.storm(True)),
        ]
        for name, fn in phases:
            if name.split("_")[0] not in wanted and name != "memory_end":
                continue
            try:
                out[name] = fn()
            except Exception as e:
                say(f"soak: {name} aborted: {e}")
                out[name] = {"aborted": str(e), "trace": traceback.format_exc()}
                # the rest of the soak needs a pair in a known state
                if not self._recover():
                    break
        start, end = out["memory_start"], out.get("memory_end", {})
        if start.get("VmRSS_kib") and end.get("VmRSS_kib"):
            out["rss_growth_kib"] = end["VmRSS_kib"] - start["VmRSS_kib"]
        keys = ("cycles", "flaps", "kills", "storm_running", "storm_stopped")
        out["stuck"] = sum(int(out.get(k, {}).get("stuck", 0)) for k in keys)
        out["leaked_masters"] = sum(int(out.get(k, {}).get("leaked_masters", 0)) for k in keys)
        out["errors"] = [f"{k}: {out[k]['aborted']}" for k in keys if "aborted" in out.get(k, {})]
        return out

    def _recover(self) -> bool:
        g = self.g
        try:
            if "vf0" not in g.lab.plugged:
                g.lab.plug("vf0")
            g.lab.set_link("vf0", up=True)
            g.lab.run("ip", "link", "set", self.npf, "up", check=False)
            g.wait_active(self.master, self.npf, 120)
            return True
        except Exception as e:
            say(f"soak: no way back to a paired VF ({e}): the remaining phases are skipped")
            return False


def measure(g: BenchGuest, agent: Agent, master: str, p: Params) -> dict[str, Any]:
    time.sleep(2.0)
    return Soak(g, agent, master, p).all()


def run(p: Params) -> dict[str, Any]:
    with BenchGuest.boot(topology.basic(with_other=False), "bench-soak") as g:
        agent, master = reaction.paired(g, verbose=2)
        return measure(g, agent, master, p)


def run_shared(fp: footprint.Params, rp: reaction.Params, sp: Params) -> dict[str, Any]:
    """footprint, reaction and soak in one guest, in that order: the
    footprint of a fresh agent, then its reaction times; the soak starts an
    agent of its own (debug log, for the resync lines) that adopts the pair."""
    out: dict[str, Any] = {}
    with BenchGuest.boot(topology.basic(with_other=False), "bench-shared") as g:
        agent, master = reaction.paired(g, dbus=True)
        t = time.monotonic()
        out["footprint"] = footprint.measure(g, agent, fp)
        out["footprint"]["seconds"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        out["reaction"] = reaction.measure(g, agent, master, rp)
        out["reaction"]["seconds_total"] = round(time.monotonic() - t, 1)
        g.stop_agent(agent)
        soak_agent = g.start_agent(verbose=2)
        g.wait_active(master, f"{master}npf")
        t = time.monotonic()
        out["soak"] = measure(g, soak_agent, master, sp)
        out["soak"]["seconds"] = round(time.monotonic() - t, 1)
    return out


def render_shared(res: dict[str, Any]) -> str:
    parts = []
    if "footprint" in res:
        parts.append(footprint.render(res["footprint"]))
    if "reaction" in res:
        parts.append(reaction.render(res["reaction"]))
    if "soak" in res:
        parts.append(render(res["soak"]))
    return "\n".join(parts)


def render(res: dict[str, Any]) -> str:
    def get(phase: str, key: str) -> str:
        v = res.get(phase, {}).get(key)
        return "-" if v is None else str(v)

    def row(label: str, phase: str, count: str) -> list[str]:
        return [label, count, get(phase, "stuck"), get(phase, "leaked_masters")]

    rows = [
        row("unplug/replug cycles", "cycles", get("cycles", "cycles")),
        row("admin link flaps", "flaps", get("flaps", "flaps")),
        row(
            "SIGKILL + restart (pairing / switching)",
            "kills",
            f"{get('kills', 'kills')} ({get('kills', 'converged')} converged)",
        ),
    ]
    for key in ("storm_running", "storm_stopped"):
        st = res.get(key, {})
        rows.append(
            row(
                f"event storm, agent {st.get('agent', key)}: {get(key, 'kernel_drops')} events dropped, "
                f"{get(key, 'resyncs')} resyncs",
                key,
                f"{get(key, 'veth_pairs')} veth pairs",
            )
        )
    text = table(["soak", "count", "stuck", "leaked masters"], rows, "soak (TCG guest)")
    ms, me = res.get("memory_start", {}), res.get("memory_end", {})
    mem_rows = [
        ["VmRSS KiB", fmt_num(ms.get("VmRSS_kib")), fmt_num(me.get("VmRSS_kib"))],
        ["threads", fmt_num(ms.get("Threads")), fmt_num(me.get("Threads"))],
        ["open fds", fmt_num(ms.get("open_fds")), fmt_num(me.get("open_fds"))],
    ]
    text += "\n" + table(["daemon", "after warm-up", "after cycles and flaps"], mem_rows)
    for key in ("storm_running", "storm_stopped"):
        st = res.get(key, {})
        if "storm_s" in st:
            logged = "yes" if st.get("resync_logged") else "no"
            text += (
                f"storm, agent {st['agent']}: {st['bursts']} burst(s), {st['storm_s']} s of ip -batch; "
                f"the kernel dropped {st['kernel_drops']} events for the agent; resyncs counted "
                f"{st['resyncs']} (state file), {fmt_num(st['resync_seen_after_s'], 1)} s after the storm; "
                f"the standby active {fmt_num(st.get('vf_down_s'), 1)} s after the storm; "
                f"said in the log: {logged}\n"
            )
    kills = res.get("kills", {})
    if kills.get("landed"):
        text += "kills landed: " + ", ".join(f"{w} {n}" for w, n in sorted(kills["landed"].items())) + "\n"
    ready = [r["ready_s"] for r in kills.get("records", []) if r.get("ready_s") is not None]
    if ready:
        text += f"restarts: READY=1 after {min(ready):.1f}-{max(ready):.1f} s (seed {kills.get('seed')})\n"
    phases = ("cycles", "flaps", "kills", "storm_running", "storm_stopped")
    problems = [p for k in phases for p in res.get(k, {}).get("problems", [])]
    problems += [f for k in phases for f in res.get(k, {}).get("findings", [])]
    if problems:
        text += "problems:\n" + "\n".join(f"  {p}" for p in problems[:20]) + "\n"
    secs = [f"{k} {res[k]['seconds']:.0f} s" for k in ("cycles", "flaps") if res.get(k, {}).get("seconds")]
    if secs:
        text += "durations: " + ", ".join(secs) + "\n"
    if res.get("errors"):
        text += "errors: " + "; ".join(res["errors"]) + "\n"
    return text
