"""What the probe says: the human summary, the JSON report an operator
keeps, the plan of a dry run, and the udev hwdb file that carries verdicts to
the host's NICs.  Pure: strings and dicts from a `Result`."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from guestfail import __version__
from guestfail.core.errors import UsageError
from guestfail.probe.decide import STATE_TEXT, Options, Step
from guestfail.probe.facts import Snapshot

if TYPE_CHECKING:
    from guestfail.probe.runner import Result

FORMAT = 1
#: the udev property names the hwdb file sets on a NIC's netdevs
PROPERTY = "GUESTFAIL_VF_MAC_FILTER"
PROPERTY_MEASURED = "GUESTFAIL_VF_MAC_FILTER_MEASURED"
HWDB_PATH = "/etc/udev/hwdb.d/70-guestfail-probe.hwdb"


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def report_doc(res: Result) -> dict[str, Any]:
    o, s = res.options, res.orig
    vf = s.vf(o.vf)
    nic = s.nic
    return {
        "probe": "guestfail-probe",
        "version": __version__,
        "format": FORMAT,
        "measured_at": _iso(res.started),
        "kernel": s.kernel,
        "nic": {
            "model": nic.model,
            "pci_address": nic.address,
            "vendor": nic.vendor,
            "device": nic.device,
            "subsystem_vendor": nic.subsystem_vendor,
            "subsystem_device": nic.subsystem_device,
            "driver": nic.driver,
            "driver_version": nic.driver_version,
            "firmware": nic.firmware,
            "numvfs": nic.numvfs,
            "totalvfs": nic.totalvfs,
        },
        "pf": {"name": s.pf.name, "mac": s.pf.mac},
        "vf": {
            "index": o.vf,
            "pci_address": vf.address if vf else "",
            "vendor": vf.vendor if vf else "",
            "device": vf.device if vf else "",
            "driver_before": vf.driver if vf else "",
            "driver_in_c": res.c_driver,
        },
        "sender": {"name": res.sender.name, "netns": res.sender.netns, "mac": res.sender.mac},
        "test": {
            "mac": o.mac,
            "vlan": o.vlan,
            "qos": o.qos,
            "frames": o.frames,
            "settle_s": res.settings.settle,
            "wait_s": res.settings.wait,
        },
        "states": [
            {
                "state": c.state,
                "text": STATE_TEXT[c.state],
                "sent": c.sent,
                "pf": c.pf,
                "vf": c.vf,
                "note": c.note,
            }
            for c in res.counts
        ],
        "verdict": {
            "kind": res.verdict.kind,
            "reason": res.verdict.reason,
            "steered_at": res.verdict.steered_at,
        },
        "changed": res.changed,
        "restored": res.changed and not res.not_restored,
        "restore_steps": res.restored,
        "not_restored": res.not_restored,
        "restore_notes": res.restore_notes,
        "stopped_by": signal.Signals(res.signal).name if res.signal else None,
        "error": str(res.error) if res.error is not None else None,
        "seconds": res.seconds,
    }


def _ids(vendor: str, device: str) -> str:
    return f"{vendor}:{device}" if vendor else "no PCI id"


def human(res: Result) -> str:
    o, s = res.options, res.orig
    nic = s.nic
    vf = s.vf(o.vf)
    ident = nic.model or "unknown model"
    extra = [f"[{_ids(nic.vendor, nic.device)}]"]
    if nic.driver:
        extra.append(f"driver {nic.driver}" + (f" {nic.driver_version}" if nic.driver_version else ""))
    if nic.firmware:
        extra.append(f"firmware {nic.firmware}")
    where = f"{res.sender.name}" + (f" in netns {res.sender.netns}" if res.sender.netns else "")
    before = vf.driver if vf is not None and vf.driver else "none"
    lines = [
        f"NIC:     {s.pf.name} {nic.address} {ident} {', '.join(extra)}",
        f"VF:      {o.vf} {vf.address if vf else ''} (driver before: {before})",
        f"kernel:  {s.kernel}",
        f"sender:  {where} ({res.sender.mac}), {o.frames} frames per state to {o.mac}"
        + (f" on VLAN {o.vlan}" if o.vlan else ""),
    ]
    if res.counts:
        lines.append("")
        lines.append(f"   {'state':<58} {'on the PF':>10} {'on the VF':>10}")
        for c in res.counts:
            pf = f"{c.pf}/{c.sent}" if not c.note else "-"
            vfc = f"{c.vf}/{c.sent}" if c.vf is not None else "-"
            lines.append(f"{c.state}  {STATE_TEXT[c.state]:<58} {pf:>10} {vfc:>10}")
            if c.note:
                lines.append(f"   ({c.note})")
    lines.append("")
    lines.append(f"verdict: {res.verdict.kind}: {res.verdict.reason}")
    if res.signal:
        lines.append(f"stopped by {signal.Signals(res.signal).name}")
    if res.error is not None:
        lines.append(f"stopped: {res.error}")
    if res.changed:
        if res.not_restored:
            lines.append("NOT restored: " + "; ".join(res.not_restored))
        else:
            n = len(res.restored)
            lines.append(f"restored: everything the probe changed ({n} step{'s' if n != 1 else ''})")
        for note in res.restore_notes:
            lines.append(f"note: {note}")
    else:
        lines.append("nothing was changed")
    return "\n".join(lines) + "\n"


def by_hand(res: Result) -> str:
    """How to check state B by hand with netsniff-ng and mausezahn."""
    o = res.options
    listen = f"gfprobe.{o.vlan}" if o.vlan else o.pf
    ns = f"ip netns exec {res.sender.netns} " if res.sender.netns else ""
    tag = f" -Q {o.vlan}" if o.vlan else ""
    return (
        f"to cross-check state B by hand: ip link set {o.pf} vf {o.vf} mac {o.mac}; "
        f"netsniff-ng --in {listen} --no-promisc -f 'ether dst {o.mac}' & "
        f"{ns}mausezahn {res.sender.name}{tag} -b {o.mac} -c {o.frames} -p 60; "
        f"then put VF {o.vf}'s MAC back"
    )


def dry_run(orig: Snapshot, o: Options, steps: list[Step], reasons: list[str]) -> str:
    lines = [f"guestfail-probe would probe VF {o.vf} of {o.pf} ({orig.nic.model or 'unknown model'}):"]
    if reasons:
        lines.append("nothing: the measurement would be inconclusive:")
        lines.extend(f"  - {r}" for r in reasons)
        return "\n".join(lines) + "\n"
    for i, st in enumerate(steps, 1):
        lines.append(f"{i:2}. {st.text}")
    vf = orig.vf(o.vf)
    cfg = orig.config(o.vf)
    back = [f"VF {o.vf}'s MAC {cfg.mac if cfg else '?'}" + (f", VLAN {cfg.vlan}" if cfg and cfg.vlan else "")]
    back.append(f"driver {vf.driver}" if vf and vf.driver else "no driver")
    if vf and vf.netdev:
        nd = vf.netdev
        back.append(f"netdev {nd.name} ({nd.mac}, MTU {nd.mtu}, {'up' if nd.up else 'down'})")
    back.append(f"{o.pf} {'up' if orig.pf.up else 'down'}")
    lines.append(f"then restore: {', '.join(back)}; the test MAC leaves {o.pf}'s filter")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- udev hwdb


def _modalias_glob(nic: dict[str, Any]) -> str:
    def h(x: str) -> str:
        return f"{int(x, 16):08X}"

    glob = f"pci:v{h(nic['vendor'])}d{h(nic['device'])}"
    if nic.get("subsystem_vendor") and nic.get("subsystem_device"):
        glob += f"sv{h(nic['subsystem_vendor'])}sd{h(nic['subsystem_device'])}"
    return glob + "*"


def hwdb(reports: list[tuple[str, dict[str, Any]]]) -> str:
    """A udev hwdb file setting GUESTFAIL_VF_MAC_FILTER=<verdict> on the
    netdevs of every NIC model with an early or late verdict.  Reports that
    disagree on one model are refused (UsageError) naming both."""
    entries: dict[str, tuple[str, str, list[str]]] = {}
    skipped: list[str] = []
    for name, doc in reports:
        try:
            nic = doc["nic"]
            kind = doc["verdict"]["kind"]
        except (KeyError, TypeError):
            raise UsageError(f"{name}: not a guestfail-probe report") from None
        if kind not in ("early", "late"):
            skipped.append(f"{name}: {kind}")
            continue
        if not nic.get("vendor") or not nic.get("device"):
            skipped.append(f"{name}: no PCI id ({nic.get('model') or 'a software model'})")
            continue
        try:
            key = _modalias_glob(nic)
        except ValueError:
            raise UsageError(f"{name}: bad PCI id {nic.get('vendor')}:{nic.get('device')}") from None
        measured = ", ".join(
            x
            for x in (
                f"{nic.get('driver', '')} {nic.get('driver_version', '')}".strip(),
                f"firmware {nic['firmware']}" if nic.get("firmware") else "",
                f"kernel {doc.get('kernel', '')}",
                str(doc.get("measured_at", ""))[:10],
            )
            if x
        )
        if key in entries and entries[key][0] != kind:
            other = entries[key][2][0]
            raise UsageError(f"{name} says {kind} but {other} says {entries[key][0]} for {key}: keep one")
        if key in entries:
            entries[key][2].append(name)
        else:
            title = f"{nic.get('model') or 'unknown model'} ({nic['vendor']}:{nic['device']})"
            entries[key] = (kind, f"{title}: {measured}", [name])
    out = [
        f"# Written by guestfail-probe --udev-hwdb from {len(reports)} report(s); see guestfail-probe(8).",
        f"# Install as {HWDB_PATH}, then: systemd-hwdb update &&",
        "#   udevadm trigger --subsystem-match=net --action=change",
        f"# {PROPERTY}=early: setting a VF's MAC on the host moves its frames away from",
        "# the PF before the VF's driver runs; late: they reach the PF until then.",
    ]
    for s in skipped:
        out.append(f"# skipped {s}")
    for key, (kind, title, names) in sorted(entries.items()):
        out += ["", f"# {title}", f"# from {', '.join(names)}", key, f" {PROPERTY}={kind}"]
        out.append(f" {PROPERTY_MEASURED}={title.split(': ', 1)[1]}")
    return "\n".join(out) + "\n"
