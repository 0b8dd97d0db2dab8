"""What the package adds to a systemd boot (BENCHMARKS.md, "Boot").

    flock /work/tcg.lock .venv/bin/python -m bench.boot [--reps N] [--json out.json]

Boots the lab's Debian images (lab.image) with systemd-networkd configuring
the standby, without and with the .debs installed (the same image otherwise:
`tests/image/flavours.py`'s networkd stack and package-life images), N times
each, interleaved, and reads in each guest:

* `systemd-analyze critical-chain network-online.target`: when the target
  was reached, and when guestfail.service (if any) became active;
* `systemd-analyze time` (kernel + userspace);
* with a VF present at boot (`--vf`): the same with the pair made at boot.

Tables go to stdout, progress to stderr, every boot's raw output to --json.

`--records lab-runs/image-timings.jsonl` boots nothing: it tabulates what
the image tier recorded (boot times, hot-plug loss, build times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lab import image
from lab.debs import build_debs
from lab.imagelab import ImageLab
from tests.image import flavours
from tests.image.helpers import chain_seconds, parse_span, topology


def one_boot(img: image.Image, vf: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    lab = ImageLab(topology(vf_at_boot=vf), img, name="bench-boot")
    try:
        lab.start()
        lab.wait_booted()
        wall = time.monotonic() - t0
        chain = lab.run(
            "systemd-analyze", "critical-chain", "network-online.target", check=False, timeout=120
        ).out
        total = lab.run("systemd-analyze", "time", check=False, timeout=60).out
    finally:
        lab.close()
    userspace = -1.0
    for part in total.split("+"):
        if "(userspace)" in part:
            userspace = parse_span(part.replace("(userspace)", "").split("=")[0].strip())
    return {
        "network_online_s": chain_seconds(chain, "network-online.target"),
        "guestfail_s": chain_seconds(chain, "guestfail.service"),
        "userspace_s": userspace,
        "wall_s": round(wall, 1),
        "critical_chain": chain,
        "time": total.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.boot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="boots per image (default 3)")
    ap.add_argument("--distro", default="debian12", choices=sorted(image.SUITES))
    ap.add_argument("--vf", action="store_true", help="the VF present at boot as well")
    ap.add_argument("--json", type=Path, metavar="FILE")
    ap.add_argument("--records", type=Path, metavar="FILE", help="tabulate the image tier's records instead")
    args = ap.parse_args(argv)
    if args.records:
        return summarize(args.records)
    debs = build_debs()
    names = debs.names(debs.current)
    without = image.build(image.Flavour(args.distro, "networkd", package=False), debs.all, install=names)
    with_pkg = image.build(flavours.stack(args.distro, "networkd"), debs.all, install=names)
    rows: dict[str, list[dict[str, Any]]] = {"without the package": [], "with the package": []}
    for i in range(args.reps):
        for label, img in (("without the package", without), ("with the package", with_pkg)):
            print(f"boot {i + 1}/{args.reps}: {label}", file=sys.stderr)
            rows[label].append(one_boot(img, args.vf))
    print(
        f"{args.distro}, systemd-networkd, {'standby and VF' if args.vf else 'standby only'} at boot, "
        f"{args.reps} boots each (median [min-max], seconds)"
    )
    print("| | network-online.target reached | guestfail.service active | userspace |")
    print("|---|---|---|---|")
    for label, boots in rows.items():
        cells = []
        for key in ("network_online_s", "guestfail_s", "userspace_s"):
            vals = [b[key] for b in boots if b[key] >= 0]
            cells.append(f"{statistics.median(vals):.1f} [{min(vals):.1f}-{max(vals):.1f}]" if vals else "-")
        print(f"| {label} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps({"distro": args.distro, "vf": args.vf, "boots": rows}, indent=1))
    return 0


def summarize(path: Path) -> int:
    """The image tier's records (tests/image/conftest.py writes them) as tables."""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(
        "| boot | flavour | booted (s, QEMU start to systemd done) | network-online.target (s) "
        "| hot-plug loss (of sent) |"
    )
    print("|---|---|---|---|---|")
    for e in entries:
        if e.get("kind") not in ("stack", "first-boot", "package-life"):
            continue
        marks = e.get("marks", {})
        loss = f"{e['hotplug_lost']} of {e['hotplug_sent']}" if "hotplug_lost" in e else "-"
        print(
            f"| {e['kind']} | {e['flavour']} | {marks.get('booted', -1):.1f} | "
            f"{e.get('network_online_s', -1):.1f} | {loss} |"
        )
    builds = [e for e in entries if e.get("kind") == "build"]
    if builds:
        print()
        print("| image | layer build (s; 0 = cached) | base tree (s) |")
        print("|---|---|---|")
        for e in builds:
            print(f"| {e['flavour']} | {e['seconds']:.1f} | {e['base_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
