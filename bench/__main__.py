"""guestfail's benchmarks in the lab (see BENCHMARKS.md).

    .venv/bin/python -m bench <mode> [--quick] [--json out.json]

Modes: failover, reaction, footprint, scale, soak, removal, migration, all
(removal and migration are not part of all; migration boots Debian images,
see BENCHMARKS.md).  Tables go to
stdout, progress to stderr.  Every guest boots Debian's kernel under QEMU
(TCG unless GUESTFAIL_LAB_ACCEL=kvm): a boot alone takes 20-60 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from bench import common, failover, footprint, migration, reaction, removal, scale, soak
from bench.common import say
from lab import topology

MODES = ("failover", "reaction", "footprint", "scale", "soak", "removal", "migration", "all")


def parse_rates(text: str) -> tuple[list[float], bool]:
    if text == "auto":
        return [1000.0], True
    return [float(x) for x in text.split(",") if x], False


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("mode", choices=MODES)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 repetition, low counts")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="the lab's own log messages too")
    g = ap.add_argument_group("failover, migration")
    g.add_argument("--reps", type=int, help="repetitions per setup (default 5, migration 3; --quick 1)")
    g.add_argument(
        "--rates",
        help="stream rates, pps, comma-separated (default 1000,200; migration 200,1000, --quick "
        "200: one migration per rate in each guest); failover only: auto: 1000, and 200 only if 1000 "
        "is not answered without loss in steady state",
    )
    g.add_argument(
        "--setups",
        help=f"which setups (default {','.join(failover.SETUPS)}; migration: {','.join(migration.SETUPS)})",
    )
    g.add_argument(
        "--broadcasts", type=int, help="broadcasts in the duplicates row (default 200; --quick 20)"
    )
    g.add_argument(
        "--vf-model",
        default=topology.DEFAULT_PRIMARY_MODEL,
        choices=topology.VF_MODELS,
        help="the VF's stand-in (default vmxnet3: reports link at once; e1000: its watchdog takes up to 2 s)",
    )
    g = ap.add_argument_group("reaction, soak")
    g.add_argument("--flaps", type=int, help="reaction: link flaps per setup (default 250; --quick 10)")
    g.add_argument(
        "--reaction-setups",
        default=",".join(reaction.SETUPS),
        help=f"reaction: which setups (default {','.join(reaction.SETUPS)})",
    )
    g.add_argument(
        "--profile",
        action="store_true",
        help="reaction: py-spy records each agent during the flaps; the busiest functions follow the table",
    )
    g.add_argument("--cycles", type=int, help="soak: unplug/replug cycles (default 200; --quick 3)")
    g.add_argument("--soak-flaps", type=int, help="soak: link flaps (default 500; --quick 5)")
    g.add_argument("--kills", type=int, help="soak: SIGKILLs of the agent (default 20; --quick 2)")
    g.add_argument(
        "--storm", type=int, help="soak: veth pairs per burst of the event storm (default 1000; --quick 300)"
    )
    g.add_argument("--seed", type=int, help="soak: random seed of the kill delays (default: the time)")
    g.add_argument(
        "--phases",
        default=",".join(soak.PHASES),
        help=f"soak: which phases, each in a guest of its own run (default {','.join(soak.PHASES)}); "
        "on a 2-core TCG host each takes under 30 minutes alone",
    )
    g = ap.add_argument_group("removal")
    g.add_argument("--events", type=int, help="removals per setup and rate (default 3; --quick 1)")
    g.add_argument(
        "--removals",
        default=",".join(removal.SETUPS),
        help=f"which removals (default {','.join(removal.SETUPS)})",
    )
    g = ap.add_argument_group("footprint")
    g.add_argument("--idle", type=float, help="seconds of idle CPU measurement (default 60; --quick 10)")
    return ap


def pick(value: Optional[Any], full: Any, quick: Any, is_quick: bool) -> Any:
    if value is not None:
        return value
    return quick if is_quick else full


def _exit_on_signal(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C: every lab's `with` block closes it,
    so no QEMU outlives the harness."""
    raise SystemExit(128 + signum)


def main(argv: Optional[list[str]] = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    q = args.quick
    common.require_lab()
    doc: dict[str, Any] = {"environment": common.environment(), "quick": q, "argv": sys.argv[1:]}
    say(f"bench {args.mode}{' --quick' if q else ''}: {doc['environment']}")
    rates, auto = parse_rates(args.rates or "1000,200")
    fo = failover.Params(
        reps=pick(args.reps, 5, 1, q),
        rates=rates,
        auto_rates=auto,
        steady_s=pick(None, 10.0, 3.0, q),
        bcasts=pick(args.broadcasts, 200, 20, q),
        setups=tuple(s for s in (args.setups or ",".join(failover.SETUPS)).split(",") if s),
        vf_model=args.vf_model,
    )
    mi = migration.Params(
        reps=pick(args.reps, 3, 1, q),
        rates=[float(x) for x in (args.rates or ("200" if q else "200,1000")).split(",") if x],
        setups=tuple(s for s in (args.setups or ",".join(migration.SETUPS)).split(",") if s),
    )
    if args.mode == "migration":
        for s in mi.setups:
            if s not in migration.SETUPS:
                raise SystemExit(
                    f"bench: unknown migration setup {s!r} (known: {', '.join(migration.SETUPS)})"
                )
    else:
        for s in fo.setups:
            if s not in failover.SETUPS:
                raise SystemExit(f"bench: unknown setup {s!r} (known: {', '.join(failover.SETUPS)})")
    re_p = reaction.Params(
        flaps=pick(args.flaps, 250, 10, q),
        setups=tuple(x for x in args.reaction_setups.split(",") if x),
        profile=args.profile,
    )
    for s in re_p.setups:
        if s not in reaction.SETUPS:
            raise SystemExit(f"bench: unknown reaction setup {s!r} (known: {', '.join(reaction.SETUPS)})")
    fp = footprint.Params(idle_s=pick(args.idle, 60.0, 10.0, q), status_runs=pick(None, 10, 3, q))
    sc = scale.Params(pairs=8)
    so = soak.Params(
        cycles=pick(args.cycles, 200, 3, q),
        flaps=pick(args.soak_flaps, 500, 5, q),
        kills=pick(args.kills, 20, 2, q),
        storm=pick(args.storm, 1000, 300, q),
        seed=args.seed if args.seed is not None else int(time.time()),
        phases=tuple(x for x in args.phases.split(",") if x),
    )
    for ph in so.phases:
        if ph not in soak.PHASES:
            raise SystemExit(f"bench: unknown soak phase {ph!r} (known: {', '.join(soak.PHASES)})")

    rm = removal.Params(
        events=pick(args.events, 3, 1, q),
        rates=list(rates),
        setups=tuple(s for s in args.removals.split(",") if s),
    )
    for s in rm.setups:
        if s not in removal.SETUPS:
            raise SystemExit(f"bench: unknown removal {s!r} (known: {', '.join(removal.SETUPS)})")
    jobs: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], str]]] = []
    if args.mode == "failover":
        jobs.append(("failover", lambda: failover.run(fo), failover.render))
    elif args.mode == "reaction":
        jobs.append(("reaction", lambda: reaction.run(re_p), reaction.render))
    elif args.mode == "footprint":
        jobs.append(("footprint", lambda: footprint.run(fp), footprint.render))
    elif args.mode == "scale":
        jobs.append(("scale", lambda: scale.run(sc), scale.render))
    elif args.mode == "soak":
        jobs.append(("soak", lambda: soak.run(so), soak.render))
    elif args.mode == "migration":
        jobs.append(("migration", lambda: migration.run(mi), migration.render))
    elif args.mode == "removal":
        jobs.append(("removal", lambda: removal.run(rm), removal.render))
    else:
        # one guest for footprint, reaction and soak; scale and failover boot their own
        jobs.append(("footprint+reaction+soak", lambda: soak.run_shared(fp, re_p, so), soak.render_shared))
        jobs.append(("scale", lambda: scale.run(sc), scale.render))
        jobs.append(("failover", lambda: failover.run(fo), failover.render))

    failed = False
    t_all = time.monotonic()
    for name, fn, render in jobs:
        t0 = time.monotonic()
        say(f"=== {name}")
        try:
            res = fn()
        except Exception as e:
            failed = True
            say(f"{name} failed: {e}")
            doc[name] = {"error": str(e), "trace": traceback.format_exc()}
            print(f"{name}: FAILED: {e}\n", flush=True)
            continue
        res.setdefault("seconds", round(time.monotonic() - t0, 1))
        if name == "footprint+reaction+soak":
            doc.update(res)
        else:
            doc[name] = res
        print(render(res), flush=True)
        say(f"=== {name}: {time.monotonic() - t0:.0f} s")
        if args.json:
            write_json(args.json, doc)  # after every mode: a long run keeps what it has
    doc["seconds"] = round(time.monotonic() - t_all, 1)
    if args.json:
        write_json(args.json, doc)
        say(f"results written to {args.json}")
    bad = any(isinstance(v, dict) and v.get("errors") for v in doc.values())
    return 1 if failed or bad else 0


def write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
