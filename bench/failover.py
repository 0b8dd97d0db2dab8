"""`python -m bench failover`: what the host's traffic loses around each
failover event, for three setups measured in the same run:

* kernel:    the kernel's own net_failover (QEMU failover=on; the guest
             kernel builds the 3-netdev master itself);
* guestfail: guestfail's bond backend, the agent from this checkout;
* bond:      a plain active-backup bond with miimon=100 and no agent, made
             by hand as tools/hv/bondvf.sh did (the harness enslaves a
             re-plugged VF the moment udev is done with it, as a distribution's
             hotplug script would);
* teamd:     teamd's activebackup runner with the ethtool link watch and no
             agent, configured as a careful admin would (the VF preferred by
             port priority, its own peer notification and multicast rejoin at
             once after a switch); a re-plugged VF is added the same way;
* guestfail-team: guestfail's team backend (teamd driven by guestfail).

Each repetition of each setup is a freshly booted guest (nothing carries over
from one measurement to the next: no learned state in the bond, no history
in the agent); setups are interleaved (kernel, guestfail, bond, kernel, ...)
so a machine that gets busier or quieter affects all three alike.

In a guest, one peer-originated ICMP echo stream per rate runs through a
fixed sequence of events; every row is the stream's accounting over a window
of send times (lost = no reply at all; longest gap = the longest send-time
span between two consecutive answered packets in the window).
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from bench.common import (
    GUEST_IP,
    BenchGuest,
    fmt_spread,
    now_ns,
    say,
    sleep_until,
    spread,
    table,
)
from lab import topology
from lab.peer import Stream, StreamReport
from lab.topology import Topology
from lab.vm import GuestError

SETUPS = ("kernel", "guestfail", "bond", "teamd", "guestfail-team")
TITLES = {
    "kernel": "net_failover (kernel)",
    "guestfail": "guestfail (bond)",
    "bond": "bond miimon=100, no agent",
    "teamd": "teamd activebackup, no agent",
    "guestfail-team": "guestfail (team)",
}
BCAST_PORT = 9999
LINK_DOWN_S = 4.0
STEER_S = 3.0
WINDOW_S = 5.0  # after an event: how long its row looks at the stream
PLUG_TAIL_S = 2.0
TAIL_NS = 500_000_000

# row key -> its label in the tables (BENCHMARKS.md says how each is measured)
ROWS: dict[str, str] = {
    "steady": "steady state (baseline)",
    "link_down": "VF link down (QEMU set_link, 4 s)",
    "link_up": "VF link back up",
    "surprise": "surprise removal (device_del)",
    "planned": "planned removal (prepare-unplug + device_del)",
    "steer_sb": "host steers to the standby path early (3 s)",
    "steer_back": "host steers back",
    "hotplug": "hot-plug (device_add) until the VF carries",
}


@dataclass
class Params:
    reps: int = 5
    rates: list[float] = field(default_factory=lambda: [1000.0, 200.0])
    auto_rates: bool = False  # True: 1000 pps, and 200 only if 1000 is not answered without loss
    steady_s: float = 10.0
    bcasts: int = 200
    setups: tuple[str, ...] = SETUPS
    vf_model: str = topology.DEFAULT_PRIMARY_MODEL  # vmxnet3 (link at once) or e1000 (2 s watchdog)


class RowSkipped(RuntimeError):
    """The guest did not get back to a steady state: the rest of this
    repetition cannot be measured."""


# ------------------------------------------------------------------ setups


class Setup:
    key = ""
    has_planned_removal = False

    def __init__(self) -> None:
        self.master = ""
        self.vf_model = topology.DEFAULT_PRIMARY_MODEL

    def topology(self) -> Topology:
        return topology.basic(with_other=False, vf_model=self.vf_model)

    def prepare(self, g: BenchGuest) -> None:
        """The guest's network before any VF: the standby carries 192.0.2.2."""
        raise NotImplementedError

    def plug(self, g: BenchGuest, first: bool) -> int:
        """device_add and whatever the setup itself does to take the VF in;
        returns when the guest has the netdev (monotonic ns)."""
        g.lab.plug("vf0")
        return now_ns()

    def vf_name(self, g: BenchGuest) -> str:
        return g.lab.ifname("vf0")

    def planned_removal(self, g: BenchGuest) -> dict[str, Any]:
        """Move the traffic off the VF before device_del (has_planned_removal)."""
        raise NotImplementedError


class KernelSetup(Setup):
    key = "kernel"

    def topology(self) -> Topology:
        return topology.basic(qemu_failover=True, with_other=False, vf_model=self.vf_model)

    def prepare(self, g: BenchGuest) -> None:
        rp = g.lab.root_port_address("p1")
        names = list(g.lab.request("find_links", rp=rp)["names"])
        links = g.links()
        standby = [n for n in names if links.get(n, {}).get("master")]
        if len(standby) != 1:
            raise RuntimeError(f"no net_failover standby below {rp}: {names}")
        self.master = str(links[standby[0]]["master"])
        g.lab.run("ip", "link", "set", self.master, "up")
        g.lab.run("ip", "addr", "add", f"{GUEST_IP}/24", "dev", self.master)

    def plug(self, g: BenchGuest, first: bool) -> int:
        # QEMU plugs a failover primary only once the guest negotiated STANDBY
        g.lab.plug("vf0", wait=False)
        g.lab.wait_nic("vf0")
        return now_ns()


class GuestfailSetup(Setup):
    key = "guestfail"
    has_planned_removal = True

    def prepare(self, g: BenchGuest) -> None:
        g.start_system_bus()  # prepare-unplug is a D-Bus call
        self.master = g.setup_standby()
        self.agent = g.start_agent(dbus=True)

    def plug(self, g: BenchGuest, first: bool) -> int:
        g.lab.plug("vf0")
        t = now_ns()
        g.wait_active(self.master, f"{self.master}npf")
        return t

    def planned_removal(self, g: BenchGuest) -> dict[str, Any]:
        t0 = time.monotonic()
        r = g.guestfail("prepare-unplug", f"{self.master}npf", check=True)
        return {"prepare_unplug_s": time.monotonic() - t0, "out": r.out.strip()[:200]}


class BondSetup(Setup):
    """bondvf.sh's bond: made by hand, no agent."""

    key = "bond"

    def prepare(self, g: BenchGuest) -> None:
        self.standby = g.setup_standby()
        self.master = "bond0"

    def plug(self, g: BenchGuest, first: bool) -> int:
        vf = g.lab.plug("vf0")
        t = now_ns()
        mac = topology.SBY_MAC
        if first:
            batch = [
                f"link add {self.master} address {mac} type bond mode active-backup miimon 100",
                f"link set {self.standby} down",
                f"link set {self.standby} master {self.master}",
                f"link set {vf} down",
                f"link set {vf} master {self.master}",
                f"link set {self.master} type bond primary {vf}",
                f"addr flush dev {self.standby}",
                f"addr add {GUEST_IP}/24 dev {self.master}",
                f"link set {self.master} up",
            ]
        else:  # what a hotplug script does with a returning VF
            batch = [
                f"link set {vf} down",
                f"link set {vf} master {self.master}",
                f"link set {self.master} type bond primary {vf}",
            ]
        g.lab.run("ip", "-batch", "-", input="\n".join(batch) + "\n")
        return t


class GuestfailTeamSetup(GuestfailSetup):
    """guestfail's team backend: teamd is driven over the system bus."""

    key = "guestfail-team"

    def prepare(self, g: BenchGuest) -> None:
        g.start_system_bus()
        g.lab.write_file("/etc/guestfail/guestfail.toml", '[agent]\nbackend = "team"\n')
        self.master = g.setup_standby()
        self.agent = g.start_agent(dbus=True)

    def plug(self, g: BenchGuest, first: bool) -> int:
        g.lab.plug("vf0")
        t = now_ns()
        g.wait_team_active(self.master, f"{self.master}npf")
        return t


def teamd_config(master: str, mac: str, ports: dict[str, int]) -> str:
    """A careful admin's teamd for a VF and its standby: the VF preferred
    (prio), switches announced at once (notify_peers, mcast_rejoin)."""
    return json.dumps(
        {
            "device": master,
            "hwaddr": mac,
            "runner": {"name": "activebackup", "hwaddr_policy": "same_all"},
            "link_watch": {"name": "ethtool"},
            "notify_peers": {"count": 1, "interval": 0},
            "mcast_rejoin": {"count": 1, "interval": 0},
            "ports": {p: {"prio": prio} for p, prio in ports.items()},
        }
    )


class TeamdSetup(Setup):
    """teamd alone, no agent: made by hand, a re-plugged VF added by hand."""

    key = "teamd"

    def prepare(self, g: BenchGuest) -> None:
        self.standby = g.setup_standby()
        self.master = "team0"

    def plug(self, g: BenchGuest, first: bool) -> int:
        vf = g.lab.plug("vf0")
        t = now_ns()
        if first:
            g.lab.run("ip", "link", "set", self.standby, "down")
            g.lab.run("ip", "link", "set", vf, "down")
            config = teamd_config(self.master, topology.SBY_MAC, {self.standby: 0, vf: 100})
            g.lab.run("teamd", "-d", "-t", self.master, "-c", config)
            batch = [
                f"addr flush dev {self.standby}",
                f"addr add {GUEST_IP}/24 dev {self.master}",
                f"link set {self.master} up",
            ]
            g.lab.run("ip", "-batch", "-", input="\n".join(batch) + "\n")
        else:  # what a hotplug script does with a returning VF
            g.lab.run("ip", "link", "set", vf, "down")
            g.lab.run("teamdctl", self.master, "port", "add", vf)
            g.lab.run("teamdctl", self.master, "port", "config", "update", vf, '{"prio": 100}')
        return t


def make_setup(key: str) -> Setup:
    setups: dict[str, type[Setup]] = {
        "kernel": KernelSetup,
        "guestfail": GuestfailSetup,
        "bond": BondSetup,
        "teamd": TeamdSetup,
        "guestfail-team": GuestfailTeamSetup,
    }
    return setups[key]()


# ------------------------------------------------------------------ one guest


@dataclass
class Window:
    key: str
    t0: int
    t1: int


class Sequence:
    """The events of one rate in one guest; rows are computed from the
    stream's final report."""

    def __init__(self, g: BenchGuest, setup: Setup, rate: float, p: Params) -> None:
        self.g = g
        self.setup = setup
        self.rate = rate
        self.p = p
        self.windows: list[Window] = []
        self.extra: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.stream: Optional[Stream] = None

    def steady(self, path: str, what: str) -> None:
        """Back to a steady state on `path` before the next event; a setup that
        does not get there by itself is nudged (noted), else the rest is skipped."""
        n = max(20, int(self.rate / 2))
        if self.g.wait_replies(path, n, timeout=20):
            return
        self.notes.append(f"{what}: no replies over {path} after 20 s; nudged (one datagram from the guest)")
        say(f"  {self.setup.key}: {what}: no replies over {path}; nudging")
        self.g.nudge()
        if not self.g.wait_replies(path, n, timeout=20):
            raise RowSkipped(f"{what}: no steady state over {path}: {self.g.lab.peer.summary()}")

    def run(self, last: bool) -> dict[str, Any]:
        g, s, rate = self.g, self.setup, self.rate
        self.stream = g.start_stream(rate)
        result: dict[str, Any] = {"setup": s.key, "rate": rate, "rows": {}, "notes": self.notes}
        try:
            self.steady("vf0", "start")
            self._steady_state()
            self._broadcasts()
            self._steer()
            self._link_down_up()
            self._surprise_removal()
            self._hotplug()
            if s.has_planned_removal:
                self._planned_removal(replug=not last)
        except RowSkipped as e:
            result["skipped"] = str(e)
            say(f"  {s.key} at {rate:g} pps: rest skipped: {e}")
        except Exception as e:  # the rows measured so far still count
            result["skipped"] = f"{type(e).__name__}: {e}"
            result["trace"] = traceback.format_exc()
            result["diagnostics"] = g.diagnostics()
            say(f"  {s.key} at {rate:g} pps: failed, rest skipped: {e}")
        finally:
            report = g.stop_stream(self.stream)
        result["rows"] = self._rows(report)
        result["stream"] = {
            "sent": report.sent,
            "lost": report.lost,
            "skipped_slots": report.skipped_slots,
            "not_transmitted": report.not_transmitted,
        }
        return result

    # ----------------------------------------------------------- events

    def _steady_state(self) -> None:
        say(f"  {self.setup.key} at {self.rate:g} pps: steady state, {self.p.steady_s:g} s")
        t0 = now_ns()
        time.sleep(self.p.steady_s)
        self.windows.append(Window("steady", t0, now_ns()))

    def _broadcasts(self) -> None:
        g, n = self.g, self.p.bcasts
        say(f"  {self.setup.key}: {n} broadcasts flooded on both paths")
        g.lab.request("bcast_start", key="b", port=BCAST_PORT)
        try:
            g.send_broadcasts(BCAST_PORT, n)
            g.lab.request("bcast_wait", key="b", distinct=n, timeout_=20, timeout=30)
            time.sleep(1.0)  # copies still in a queue of the other path
        finally:
            counts: dict[str, int] = g.lab.request("bcast_stop", key="b")["counts"]
        self.extra["bcast"] = {
            "sent": n,
            "distinct": len(counts),
            "missing": n - len(counts),
            "duplicates": sum(c - 1 for c in counts.values()),
        }

    def _steer(self) -> None:
        g = self.g
        self.steady("vf0", "before steering")
        say(f"  {self.setup.key}: the host steers to the standby path for {STEER_S:g} s, then back")
        t0 = now_ns()
        g.lab.peer.steer("sb0")
        sleep_until(t0 + int(STEER_S * 1e9))
        t1 = now_ns()
        g.lab.peer.steer(None)
        sleep_until(t1 + int(WINDOW_S * 1e9))
        self.windows += [Window("steer_sb", t0, t1), Window("steer_back", t1, t1 + int(WINDOW_S * 1e9))]

    def _carrier(self, vf: str, up: bool, t_event: int) -> Optional[float]:
        """ms from the QMP command to the guest's carrier change, as the host
        sees it (the control channel adds a few ms)."""
        try:
            self.g.lab.wait_net([{"link": vf, "attr": "carrier", "eq": 1 if up else 0}], timeout=15)
        except Exception as e:  # reported: a driver that never noticed is a finding
            self.notes.append(f"carrier of {vf} not {'up' if up else 'down'} within 15 s: {e}")
            return None
        return (now_ns() - t_event) / 1e6

    def _link_down_up(self) -> None:
        g = self.g
        self.steady("vf0", "before link down")
        vf = self.setup.vf_name(g)
        drops0 = g.rx_drops(vf)
        say(f"  {self.setup.key}: VF link down (set_link) for {LINK_DOWN_S:g} s, then up")
        t_down = now_ns()
        g.lab.set_link("vf0", up=False)
        detect_down = self._carrier(vf, False, t_down)
        sleep_until(t_down + int(LINK_DOWN_S * 1e9))
        t_up = now_ns()
        g.lab.set_link("vf0", up=True)
        detect_up = self._carrier(vf, True, t_up)
        sleep_until(t_up + int(WINDOW_S * 1e9))
        self.windows += [
            Window("link_down", t_down, t_up),
            Window("link_up", t_up, t_up + int(WINDOW_S * 1e9)),
        ]
        self.extra["link_down"] = {"carrier_lost_ms": detect_down}
        self.extra["link_up"] = {
            "carrier_back_ms": detect_up,
            "vf_rx_drops": _drops_delta(drops0, g.rx_drops(vf)),
        }

    def _surprise_removal(self) -> None:
        g = self.g
        self.steady("vf0", "before surprise removal")
        say(f"  {self.setup.key}: surprise removal (device_del)")
        t0 = now_ns()
        took = g.lab.unplug("vf0")
        sleep_until(t0 + int(WINDOW_S * 1e9))
        self.windows.append(Window("surprise", t0, max(now_ns(), t0 + int(WINDOW_S * 1e9))))
        self.extra["surprise"] = {"device_deleted_ms": took * 1000}

    def _hotplug(self) -> None:
        g = self.g
        self.steady("sb0", "before hot-plug")
        say(f"  {self.setup.key}: hot-plug (device_add) until replies come back over the VF")
        t0 = now_ns()
        t_nic = self.setup.plug(g, first=False)
        if not g.wait_replies("vf0", 1, timeout=60):
            self.notes.append("hot-plug: no reply over the VF within 60 s")
        t1 = now_ns() + int(PLUG_TAIL_S * 1e9)
        sleep_until(t1)
        self.windows.append(Window("hotplug", t0, t1))
        self.extra["hotplug"] = {
            "netdev_ms": (t_nic - t0) / 1e6,
            "vf_rx_drops": _drops_delta({}, g.rx_drops(self.setup.vf_name(g))),
        }

    def _planned_removal(self, replug: bool) -> None:
        g = self.g
        self.steady("vf0", "before planned removal")
        say(f"  {self.setup.key}: planned removal (prepare-unplug, then device_del)")
        t0 = now_ns()
        try:
            info: Optional[dict[str, Any]] = self.setup.planned_removal(g)
        except GuestError as e:  # no row then; the VF still goes, so the next rate starts as usual
            self.notes.append(f"planned removal: {str(e).splitlines()[-1]}")
            say(f"  {self.setup.key}: prepare-unplug failed: {e}")
            info = None
        g.lab.unplug("vf0")
        t1 = now_ns() + int(PLUG_TAIL_S * 1e9)
        sleep_until(t1)
        if info is not None:
            self.windows.append(Window("planned", t0, t1))
            self.extra["planned"] = info
        if replug:
            self.setup.plug(g, first=False)
            self.steady("vf0", "after re-plug")

    # ----------------------------------------------------------- rows

    def _rows(self, report: StreamReport) -> dict[str, Any]:
        rows: dict[str, Any] = {}
        for w in self.windows:
            r = report.window(w.t0, w.t1)
            row: dict[str, Any] = {
                "lost": r.lost,
                "sent": r.sent,
                "gap_ms": round(r.longest_gap_ms_send, 1),
                "gap_recv_ms": round(r.longest_gap_ms_recv, 1),
                "window_s": round((w.t1 - w.t0) / 1e9, 2),
                "sent_per_path": r.sent_per_path,
                "replies_per_path": r.replies_per_path,
                "duplicates": r.duplicates,
            }
            if w.key != "steady":
                # replies in the window's last 0.5 s: the setup had recovered when it closed
                tail = report.window(w.t1 - TAIL_NS, w.t1)
                row["recovered"] = tail.replied > 0
            if w.key == "hotplug":
                first = r.first_reply_on_path_ns.get("vf0")
                row["to_traffic_ms"] = (first - w.t0) / 1e6 if first is not None else None
            row.update(self.extra.get(w.key, {}))
            rows[w.key] = row
        if "bcast" in self.extra:
            rows["bcast"] = self.extra["bcast"]
        return rows


def _drops_delta(before: dict[str, int], after: dict[str, int]) -> Optional[int]:
    """What the VF's driver counted as dropped or missed on receive in between
    (None: no counters).  Losses the guest's NIC saw, as opposed to the failover's."""
    if not after:
        return None
    return sum(v - before.get(k, 0) for k, v in after.items())


# ------------------------------------------------------------------ the run


def _calibrate(g: BenchGuest, p: Params) -> None:
    """Is 1000 pps answered without loss in steady state here?  If not, the
    whole run is measured at 200 pps as well."""
    secs = min(p.steady_s, 10.0)
    say(f"calibration: 1000 pps for {secs:g} s in steady state")
    stream = g.start_stream(1000)
    g.wait_replies("vf0", 200, timeout=30)
    t0 = now_ns()
    time.sleep(secs)
    t1 = now_ns()
    rep = g.stop_stream(stream).window(t0, t1)
    say(f"calibration: lost {rep.lost} of {rep.sent} at 1000 pps")
    if rep.lost > 0 and 200.0 not in p.rates:
        say("calibration: 1000 pps is not answered without loss here: measuring at 200 pps too")
        p.rates.append(200.0)
    p.auto_rates = False


def one_guest(key: str, rep: int, p: Params) -> list[dict[str, Any]]:
    setup = make_setup(key)
    setup.vf_model = p.vf_model
    out: list[dict[str, Any]] = []
    with BenchGuest.boot(setup.topology(), f"bench-fo-{key}") as g:
        t_boot = g.lab.boot_seconds
        setup.prepare(g)
        setup.plug(g, first=True)
        if p.auto_rates:
            _calibrate(g, p)
        for i, rate in enumerate(list(p.rates)):
            seq = Sequence(g, setup, rate, p)
            res = seq.run(last=i == len(p.rates) - 1)
            res.update({"rep": rep, "boot_s": t_boot})
            out.append(res)
    return out


def run(p: Params) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for rep in range(1, p.reps + 1):
        for key in p.setups:
            say(f"failover: repetition {rep}/{p.reps}, setup {key} ({TITLES[key]})")
            t = time.monotonic()
            try:
                results += one_guest(key, rep, p)
            except Exception as e:
                say(f"failover: {key} repetition {rep} failed: {e}")
                errors.append({"setup": key, "rep": rep, "error": str(e), "trace": traceback.format_exc()})
            say(f"failover: {key} repetition {rep} took {time.monotonic() - t:.0f} s")
    return {
        "params": {
            "reps": p.reps,
            "rates": p.rates,
            "steady_s": p.steady_s,
            "broadcasts": p.bcasts,
            "link_down_s": LINK_DOWN_S,
            "steer_s": STEER_S,
            "window_s": WINDOW_S,
            "setups": list(p.setups),
            "vf_model": p.vf_model,
            "fresh_guest_per_repetition": True,
        },
        "runs": results,
        "errors": errors,
        "summary": summarize(results, p),
        "seconds": round(time.monotonic() - t0, 1),
    }


def summarize(results: list[dict[str, Any]], p: Params) -> dict[str, Any]:
    """rate -> row -> setup -> metric -> spread (median/min/max over repetitions)."""
    out: dict[str, Any] = {}
    metrics = {
        "lost",
        "sent",
        "gap_ms",
        "to_traffic_ms",
        "netdev_ms",
        "carrier_lost_ms",
        "carrier_back_ms",
        "duplicates",
        "missing",
        "prepare_unplug_s",
        "device_deleted_ms",
        "vf_rx_drops",
    }
    for rate in p.rates:
        per_rate: dict[str, Any] = {}
        for row in [*ROWS, "bcast"]:
            per_row: dict[str, Any] = {}
            for key in p.setups:
                runs = [r for r in results if r["setup"] == key and r["rate"] == rate]
                vals: dict[str, list[Optional[float]]] = {}
                for r in runs:
                    cell = r["rows"].get(row)
                    if cell is None:
                        continue
                    for m, v in cell.items():
                        if m in metrics and (v is None or isinstance(v, (int, float))):
                            vals.setdefault(m, []).append(v)
                per_row[key] = {m: spread(v) for m, v in vals.items()}
                flags = [r["rows"][row].get("recovered") for r in runs if row in r["rows"]]
                per_row[key]["not_recovered"] = sum(1 for f in flags if f is False)
            per_rate[row] = per_row
        out[f"{rate:g}"] = per_rate
    return out


NOT_RECOVERED = (
    "* in at least one repetition nothing came back in the last 0.5 s of the window: "
    "the setup had not recovered when the window closed\n"
)


def render(res: dict[str, Any]) -> str:
    params = res["params"]
    setups = params["setups"]
    heads = [TITLES[k] for k in setups]
    parts = []
    for rate, per_rate in res["summary"].items():
        n = params["reps"]
        note = f"median [min-max] over {n} repetitions" if n > 1 else "1 repetition"
        note += f"; VF stand-in {params.get('vf_model', 'e1000')}"

        def cells(row: str, metric: str, digits: int = 0, _pr: dict[str, Any] = per_rate) -> list[str]:
            out = []
            for k in setups:
                cell = _pr.get(row, {}).get(k, {})
                if row == "planned" and not make_setup(k).has_planned_removal:
                    out.append("n/a")
                else:
                    mark = "*" if metric in ("lost", "gap_ms") and cell.get("not_recovered") else ""
                    out.append(fmt_spread(cell.get(metric, {}), digits) + mark)
            return out

        lost_rows = []
        gap_rows = []
        for row, label in ROWS.items():
            sent = per_rate.get(row, {}).get(setups[0], {}).get("sent", {})
            suffix = f" ({fmt_spread(sent)} sent)" if sent.get("n") else ""
            lost_rows.append([label + suffix, *cells(row, "lost")])
            gap_rows.append([label, *cells(row, "gap_ms")])
        parts.append(
            table(["packets lost", *heads], lost_rows, f"failover at {rate} pps: packets lost ({note})")
            + NOT_RECOVERED
        )
        parts.append(
            table(["longest gap (ms)", *heads], gap_rows, f"failover at {rate} pps: longest gap, ms ({note})")
        )
        other = [
            ["device_add -> first reply over the VF (ms)", *cells("hotplug", "to_traffic_ms")],
            ["device_add -> VF named by udev in the guest (ms)", *cells("hotplug", "netdev_ms")],
            ["set_link down -> guest sees no carrier (ms)", *cells("link_down", "carrier_lost_ms")],
            ["set_link up -> guest sees carrier (ms)", *cells("link_up", "carrier_back_ms")],
            ["device_del -> DEVICE_DELETED (ms)", *cells("surprise", "device_deleted_ms")],
            ["VF's own rx drops, link down + up (driver counters)", *cells("link_up", "vf_rx_drops")],
            ["VF's own rx drops after hot-plug (driver counters)", *cells("hotplug", "vf_rx_drops")],
            ["prepare-unplug command (s, TCG)", *cells("planned", "prepare_unplug_s", 2)],
            [
                f"broadcast duplicates (of {params['broadcasts']} flooded)",
                *cells("bcast", "duplicates"),
            ],
            ["broadcasts missing", *cells("bcast", "missing")],
        ]
        parts.append(table(["", *heads], other, f"failover at {rate} pps: latencies and broadcasts ({note})"))
    if res["errors"]:
        parts.append(
            "errors:\n" + "\n".join(f"  {e['setup']} rep {e['rep']}: {e['error']}" for e in res["errors"])
        )
    skipped = [r for r in res["runs"] if r.get("skipped")]
    notes = [(r["setup"], r["rep"], r["rate"], n) for r in res["runs"] for n in r.get("notes", [])]
    if skipped or notes:
        lines = [
            f"  {r['setup']} rep {r['rep']} at {r['rate']:g} pps: skipped: {r['skipped']}" for r in skipped
        ]
        lines += [f"  {s} rep {rep} at {rate:g} pps: {n}" for s, rep, rate, n in notes]
        parts.append("notes:\n" + "\n".join(lines))
    return "\n".join(parts)
