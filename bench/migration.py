"""`python -m bench migration`: what a live migration of a guest with a VF
costs its traffic, end to end, for four setups measured in one run,
interleaved (kernel, guestfail, guestfail-noprep, bond, kernel, ...)
(`python -m bench.migration FILE...` merges the JSON of several runs, runs
of `--reps 1` back to back, into one table):

* kernel:           QEMU's own failover (`failover=on` on the standby,
                    `failover_pair_id` on the VF) and the guest kernel's
                    net_failover: QEMU unplugs the VF itself when the
                    migration starts; the orchestrator adds the
                    destination's VF (with `failover_pair_id`);
* guestfail:        guestfail (the .deb, started by systemd) and the
                    management layer's sequence: `guestfail prepare-unplug`
                    through qemu-guest-agent first, then device_del;
* guestfail-noprep: the same without prepare-unplug: the VF just goes
                    (device_del) when the migration starts;
* bond:             a plain active-backup bond made by hand with the
                    distribution's own configuration, as tools/hv/bondvf.sh
                    did (here systemd-networkd's: bond0 with miimon 100, the
                    standby and any vmxnet3 enslaved, the VF primary), no
                    agent; device_del when the migration starts.

Every repetition of a setup is a freshly booted guest: Debian 12 from the
lab's image (lab.image), systemd-networkd as shipped, DHCP from the lab, the
VF (vmxnet3) hot-plugged once the standby has its address.  In it, one
migration per rate: the lab's peer streams ICMP echo requests at the guest
at that rate, and `lab.orchestrator` migrates it to a new QEMU process with
the setup's plan (the first to slot 5002, the next back to 5001).  The
stream's record is cut at the moments the orchestrator recorded (by send
time):

  unplug     the orchestrator starts (prepare-unplug, or device_del, or for
             net_failover `migrate`) -> DEVICE_DELETED of the VF at the source
             (net_failover: the end of QEMU's wait-unplug)
  migration  -> RESUME at the destination (the guest runs there)
  replug     -> the first reply over the destination's VF, plus 1 s
  total      all three

In each: packets lost (no reply at all) and the longest send-time gap
between answered packets; and the time traffic spent off the VF: from the
last reply over the source's VF to the first over the destination's.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

from bench.common import fmt_spread, say, spread, table
from lab import image, orchestrator, topology
from lab.debs import build_debs
from lab.dhcp import DhcpServer
from lab.imagelab import ImageLab
from lab.peer import Stream, StreamReport
from lab.topology import Topology
from tests.image import flavours
from tests.image.helpers import NPF, SBY
from tests.image.helpers import topology as image_topology

SETUPS = ("kernel", "guestfail", "guestfail-noprep", "bond")
TITLES = {
    "kernel": "net_failover, QEMU failover=on",
    "guestfail": "guestfail, prepare-unplug",
    "guestfail-noprep": "guestfail, no prepare-unplug",
    "bond": "bond by hand, no agent",
}
PHASES = ("unplug", "migration", "replug", "total")
PHASE_TITLES = {
    "unplug": "unplug (until the guest let go of the VF)",
    "migration": "migration (until the destination runs)",
    "replug": "replug (until the VF carries, + 1 s)",
    "total": "total",
}
GUEST_IP = "192.0.2.2"
TAIL_NS = 1_000_000_000  # the replug phase goes on this long after the VF carries
BEFORE_NS = 2_000_000_000  # the steady state measured before each migration
LEASE_S = 600
GUESTFAIL = "/usr/bin/guestfail"

# A bond the way a distribution configures one (systemd-networkd here): the
# files sort before the image's own 50-ens11.network, so they win.
BOND_FILES = {
    "10-bond0.netdev": f"""\
[NetDev]
Name=bond0
Kind=bond
MACAddress={topology.SBY_MAC}

[Bond]
Mode=active-backup
MIIMonitorSec=100ms
PrimaryReselectPolicy=always
""",
    "10-bond0-standby.network": f"""\
[Match]
Name={SBY}

[Network]
Bond=bond0
""",
    "10-bond0-vf.network": """\
[Match]
Driver=vmxnet3

[Network]
Bond=bond0
PrimarySlave=yes
""",
    "10-bond0.network": """\
[Match]
Name=bond0

[Network]
DHCP=ipv4
IPv6AcceptRA=no
""",
}


@dataclass
class Params:
    reps: int = 3
    rates: list[float] = field(default_factory=lambda: [200.0, 1000.0])
    setups: tuple[str, ...] = SETUPS


# ------------------------------------------------------------------ setups


class Setup:
    key = ""
    package = True  # the image has guestfail installed (and running)
    master = SBY

    def topology(self) -> Topology:
        return image_topology()

    def plan(self, dest_port: str) -> orchestrator.Plan:
        return orchestrator.Plan(vf="vf0", dest_port=dest_port)

    def prepare(self, lab: ImageLab) -> None:
        """The guest's network with its VF, before the first migration."""
        wait_address(lab, SBY)
        self.configure(lab)
        lab.plug("vf0", wait=False)
        self.wait_paired(lab)
        wait_address(lab, self.master)

    def configure(self, lab: ImageLab) -> None:
        """What the setup does before the VF comes (the standby has its address)."""

    def wait_paired(self, lab: ImageLab) -> None:
        raise NotImplementedError


class KernelSetup(Setup):
    key = "kernel"
    package = False

    def topology(self) -> Topology:
        return topology.basic(with_other=False, hotplug="native", vf_model="vmxnet3", qemu_failover=True)

    def plan(self, dest_port: str) -> orchestrator.Plan:
        return orchestrator.Plan(vf="vf0", dest_port=dest_port, qemu_unplugs=True)

    def wait_paired(self, lab: ImageLab) -> None:
        vf = lab.wait_nic("vf0")
        lab.wait_net([{"link": vf, "attr": "master", "eq": SBY}], timeout=60, what=f"{vf} in net_failover")


class GuestfailSetup(Setup):
    key = "guestfail"

    def plan(self, dest_port: str) -> orchestrator.Plan:
        return orchestrator.Plan(
            vf="vf0",
            dest_port=dest_port,
            prepare=(GUESTFAIL, "prepare-unplug", "{name}"),
            confirm=(GUESTFAIL, "status"),
        )

    def wait_paired(self, lab: ImageLab) -> None:
        lab.wait_net([{"link": SBY, "attr": "active_slave", "eq": NPF}], timeout=120, what=f"{NPF} active")


class GuestfailNoPrepSetup(GuestfailSetup):
    key = "guestfail-noprep"

    def plan(self, dest_port: str) -> orchestrator.Plan:
        return orchestrator.Plan(vf="vf0", dest_port=dest_port, confirm=(GUESTFAIL, "status"))


class BondSetup(Setup):
    key = "bond"
    package = False
    master = "bond0"

    def configure(self, lab: ImageLab) -> None:
        for name, text in BOND_FILES.items():
            lab.write_file(f"/etc/systemd/network/{name}", text)
        lab.run("networkctl", "reload")
        lab.wait_net([{"link": SBY, "attr": "master", "eq": "bond0"}], timeout=60, what=f"{SBY} in bond0")
        wait_address(lab, "bond0")

    def wait_paired(self, lab: ImageLab) -> None:
        vf = lab.wait_nic("vf0")
        lab.wait_net([{"link": "bond0", "attr": "active_slave", "eq": vf}], timeout=60, what=f"{vf} active")


def make_setup(key: str) -> Setup:
    setups: dict[str, type[Setup]] = {
        "kernel": KernelSetup,
        "guestfail": GuestfailSetup,
        "guestfail-noprep": GuestfailNoPrepSetup,
        "bond": BondSetup,
    }
    return setups[key]()


def wait_address(lab: ImageLab, name: str, timeout: float = 120) -> None:
    lab.wait_net(
        [{"link": name, "attr": "inet", "has": GUEST_IP}], timeout=timeout, what=f"{GUEST_IP} on {name}"
    )


# ------------------------------------------------------------------ measuring


class Replies:
    """Echo replies per path, counted as they arrive (a `StreamReport` per
    frame would be far too slow as a wait predicate at 1000 packets/s)."""

    def __init__(self, lab: ImageLab) -> None:
        self.lab = lab
        self.counts: dict[str, int] = {}
        self._remove = lab.peer.on_frame(self._on_frame)

    def _on_frame(self, path: str, parsed: Any, _raw: bytes) -> None:
        if parsed.kind == "icmp-echo-reply":
            self.counts[path] = self.counts.get(path, 0) + 1

    def wait(self, path: str, n: int, timeout: float) -> bool:
        base = self.counts.get(path, 0)
        try:
            self.lab.on_loop(
                self.lab.peer.wait_for(lambda _p: self.counts.get(path, 0) >= base + n, timeout, path),
                timeout + 10,
            )
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._remove()


def phases(report: StreamReport, rec: orchestrator.Record, src_vf: str, dst_vf: str) -> dict[str, Any]:
    """The stream cut at the record's moments; None where a moment was not reached."""
    out: dict[str, Any] = {}
    first_dst = report.first_reply_on_path_ns.get(dst_vf)
    t_end = first_dst + TAIL_NS if first_dst is not None else report.end_ns
    cuts = {
        "before": (rec.t_start_ns - BEFORE_NS, rec.t_start_ns),
        "unplug": (rec.t_start_ns, rec.t_unplugged_ns),
        "migration": (rec.t_unplugged_ns, rec.t_resumed_ns),
        "replug": (rec.t_resumed_ns, t_end),
        "total": (rec.t_start_ns, t_end),
    }
    for name, (t0, t1) in cuts.items():
        if not t0 or not t1 or t1 < t0:
            out[name] = None
            continue
        w = report.window(t0, t1)
        out[name] = {
            "lost": w.lost,
            "sent": w.sent,
            "gap_ms": round(w.longest_gap_ms_send, 1),
            "ms": round((t1 - t0) / 1e6, 1),
            "replies_per_path": w.replies_per_path,
        }
    last_src = max(
        (r.recv_ns for r in report.records if r.recv_path == src_vf and r.recv_ns is not None), default=None
    )
    plug = rec.step("plug")
    out["off_vf_ms"] = (first_dst - last_src) / 1e6 if first_dst and last_src else None
    out["device_add_to_vf_ms"] = (first_dst - plug.t0_ns) / 1e6 if first_dst and plug else None
    out["vf_carries"] = first_dst is not None
    return out


def one_migration(
    lab: ImageLab, setup: Setup, rate: float, dest_port: str, replies: Replies
) -> dict[str, Any]:
    src_vf = lab.path("vf0")
    stream: Stream = lab.on_loop(_start_stream(lab, rate), 10)
    res: dict[str, Any] = {"setup": setup.key, "rate": rate, "source": lab.current.name}
    try:
        if not replies.wait(src_vf, max(20, int(rate / 2)), timeout=30):
            raise RuntimeError(f"no steady state over {src_vf}: {lab.peer.summary()}")
        time.sleep(BEFORE_NS / 1e9)
        say(f"  {setup.key} at {rate:g} pps: migrating {lab.current.name} -> new host, VF to {dest_port}")
        rec = orchestrator.migrate(lab, setup.plan(dest_port))
        dst_vf = lab.path("vf0")
        if rec.ok:
            replies.wait(dst_vf, max(20, int(rate / 2)), timeout=60)
        time.sleep(TAIL_NS / 1e9)
    finally:
        report: StreamReport = lab.on_loop(lab.peer.stop_stream(stream, 1.0), 60)
    res.update(
        {
            "destination": rec.destination,
            "error": rec.error,
            "phases": phases(report, rec, src_vf, lab.path("vf0")) if rec.ok else {},
            "steps_ms": {s.name: round(s.ms, 1) for s in rec.steps},
            "qemu": {k: rec.migration.get(k) for k in ("total-time", "downtime", "setup-time")},
            "record": rec.as_dict(),
            "stream": {"sent": report.sent, "lost": report.lost, "skipped_slots": report.skipped_slots},
        }
    )
    if rec.error:
        say(f"  {setup.key} at {rate:g} pps: {rec.error}")
    return res


async def _start_stream(lab: ImageLab, rate: float) -> Stream:
    return lab.peer.start_stream(rate)


def one_guest(setup: Setup, img: image.Image, rep: int, p: Params) -> list[dict[str, Any]]:
    lab = ImageLab(setup.topology(), img, name=f"bench-mig-{setup.key}")
    out: list[dict[str, Any]] = []
    try:
        DhcpServer(lab.peer, lease_seconds=LEASE_S).attach()
        t0 = time.monotonic()
        lab.start()
        lab.wait_booted()
        boot_s = time.monotonic() - t0
        setup.prepare(lab)
        say(f"  {setup.key}: booted in {boot_s:.0f} s, VF paired at {time.monotonic() - t0:.0f} s")
        replies = Replies(lab)
        for i, rate in enumerate(p.rates):
            res = one_migration(lab, setup, rate, "p3" if i % 2 == 0 else "p2", replies)
            res.update({"rep": rep, "boot_s": round(boot_s, 1)})
            out.append(res)
            if res["error"]:
                break
    finally:
        lab.close()
    return out


def images(setups: tuple[str, ...]) -> dict[bool, image.Image]:
    """The two images: Debian 12 with networkd, with and without the .deb."""
    debs = build_debs()
    out = {}
    for package in sorted({make_setup(k).package for k in setups}):
        fl = flavours.stack("debian12", "networkd")
        if not package:
            fl = image.Flavour("debian12", "networkd", package=False)
        out[package] = image.build(fl, debs.all, install=debs.names(debs.current))
    return out


def run(p: Params) -> dict[str, Any]:
    t0 = time.monotonic()
    say("migration: building the images (cached after the first run)")
    imgs = images(p.setups)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for rep in range(1, p.reps + 1):
        for key in p.setups:
            setup = make_setup(key)
            say(f"migration: repetition {rep}/{p.reps}, setup {key} ({TITLES[key]})")
            t = time.monotonic()
            try:
                runs = one_guest(setup, imgs[setup.package], rep, p)
                results += runs
                errors += [
                    {"setup": key, "rep": rep, "rate": r["rate"], "error": r["error"]}
                    for r in runs
                    if r["error"]
                ]
            except Exception as e:
                say(f"migration: {key} repetition {rep} failed: {e}")
                errors.append({"setup": key, "rep": rep, "error": str(e), "trace": traceback.format_exc()})
            say(f"migration: {key} repetition {rep} took {time.monotonic() - t:.0f} s")
    return {
        "params": {
            "reps": p.reps,
            "rates": p.rates,
            "setups": list(p.setups),
            "tail_ms": TAIL_NS / 1e6,
            "vf_model": "vmxnet3",
            "hotplug": "native PCIe (the guest waits 5 s after the attention button)",
            "fresh_guest_per_repetition": True,
        },
        "runs": results,
        "errors": errors,
        "summary": summarize(results, p),
        "seconds": round(time.monotonic() - t0, 1),
    }


METRICS = ("lost", "sent", "gap_ms", "ms")
EXTRA = ("off_vf_ms", "device_add_to_vf_ms")


def summarize(results: list[dict[str, Any]], p: Params) -> dict[str, Any]:
    """rate -> phase (and the extra rows) -> setup -> metric -> spread."""
    out: dict[str, Any] = {}
    for rate in p.rates:
        per_rate: dict[str, Any] = {}
        runs = [r for r in results if r["rate"] == rate and r["phases"]]
        for ph in ("before", *PHASES):
            per_rate[ph] = {
                k: {
                    m: spread([r["phases"][ph][m] for r in runs if r["setup"] == k and r["phases"].get(ph)])
                    for m in METRICS
                }
                for k in p.setups
            }
        for x in EXTRA:
            per_rate[x] = {k: spread([r["phases"].get(x) for r in runs if r["setup"] == k]) for k in p.setups}
        for q in ("downtime", "total-time"):
            per_rate[q] = {k: spread([r["qemu"].get(q) for r in runs if r["setup"] == k]) for k in p.setups}
        for step in ("prepare", "unplug"):
            per_rate[f"step_{step}"] = {
                k: spread([r["steps_ms"].get(step) for r in runs if r["setup"] == k]) for k in p.setups
            }
        per_rate["n"] = {k: len([r for r in runs if r["setup"] == k]) for k in p.setups}
        out[f"{rate:g}"] = per_rate
    return out


def render(res: dict[str, Any]) -> str:
    params = res["params"]
    setups = params["setups"]
    heads = [TITLES[k] for k in setups]
    parts = []
    for rate, s in res["summary"].items():
        n = params["reps"]
        note = f"median [min-max] over {n} repetitions" if n > 1 else "1 repetition"

        def cells(row: str, metric: Optional[str] = None, _s: dict[str, Any] = s) -> list[str]:
            return [fmt_spread(_s[row][k][metric] if metric else _s[row][k]) for k in setups]

        lost = [[f"{PHASE_TITLES[ph]}", *cells(ph, "lost")] for ph in PHASES]
        lost.insert(0, ["steady state, 2 s before", *cells("before", "lost")])
        parts.append(table(["packets lost", *heads], lost, f"migration at {rate} pps: packets lost ({note})"))
        gaps = [[PHASE_TITLES[ph], *cells(ph, "gap_ms")] for ph in PHASES]
        parts.append(
            table(["longest gap (ms)", *heads], gaps, f"migration at {rate} pps: longest gap, ms ({note})")
        )
        times = [
            [
                "traffic off the VF: last reply over the source's VF -> first over the destination's",
                *cells("off_vf_ms"),
            ],
            ["device_add at the destination -> first reply over the VF", *cells("device_add_to_vf_ms")],
            ["unplug phase", *cells("unplug", "ms")],
            ["migration phase", *cells("migration", "ms")],
            ["replug phase (with its 1 s)", *cells("replug", "ms")],
            ["prepare-unplug through the guest agent", *cells("step_prepare")],
            ["device_del -> DEVICE_DELETED", *cells("step_unplug")],
            ["QEMU: migration total-time", *cells("total-time")],
            ["QEMU: downtime", *cells("downtime")],
        ]
        parts.append(table(["ms", *heads], times, f"migration at {rate} pps: times, ms ({note})"))
    if res["errors"]:
        parts.append(
            "errors:\n"
            + "\n".join(f"  {e['setup']} rep {e['rep']}: {e['error'].splitlines()[0]}" for e in res["errors"])
        )
    return "\n".join(parts)


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' JSON (`bench migration --json`) as one result: their
    repetitions numbered on, summarized together."""
    parts = [d.get("migration", d) for d in docs]
    if not parts:
        raise SystemExit("bench.migration: no results to merge")
    runs: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    reps = 0
    for part in parts:
        n = part["params"]["reps"]
        runs += [{**r, "rep": r["rep"] + reps} for r in part["runs"]]
        errors += [{**e, "rep": e["rep"] + reps} for e in part["errors"]]
        reps += n
    params = {**parts[0]["params"], "reps": reps}
    p = Params(reps=reps, rates=list(params["rates"]), setups=tuple(params["setups"]))
    summary = summarize(runs, p)
    seconds = round(sum(part["seconds"] for part in parts), 1)
    return {"params": params, "runs": runs, "errors": errors, "summary": summary, "seconds": seconds}


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m bench.migration FILE...`: the tables of runs written by
    `bench migration --json FILE`, merged (runs of --reps 1 back to back
    make one table of their repetitions)."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m bench.migration", description=main.__doc__)
    ap.add_argument("files", nargs="+", type=Path, help="JSON files of `bench migration --json`")
    ap.add_argument("--json", type=Path, help="also write the merged result here")
    args = ap.parse_args(argv)
    res = merge([json.loads(f.read_text()) for f in args.files])
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
