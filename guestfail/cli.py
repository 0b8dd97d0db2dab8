"""The `guestfail` command.  Exit codes: see `guestfail.errors.Exit` (and
EXIT STATUS in guestfail(8)); logs go to stderr, data to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

from guestfail import __version__
from guestfail import config as config_mod
from guestfail.errors import Exit, GuestfailError, NotFound, SystemRefused, UsageError

log = logging.getLogger("guestfail")

EPILOG = """\
exit status:
  0  success; for status: every pair healthy
  1  internal error (a bug in guestfail)
  2  usage error (bad command line)
  3  status: degraded (a pair runs on its standby, or a VF was refused)
  4  status: failed (a pair has no working member or could not be built)
  5  the configuration file is invalid (nothing was changed)
  6  the system refused (permissions, the kernel, the daemon unreachable)
  7  no such pair or member

Configuration: /etc/guestfail/guestfail.toml (see guestfail(8)).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(Exit.USAGE, f"guestfail: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="guestfail",
        description="Pair hot-plugged SR-IOV VFs with their paravirtual standby "
        "under a bond or team, and fail over between them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"guestfail {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default {config_mod.DEFAULT_PATH}; defaults apply if it is missing)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (twice: debug)")
    # --config is accepted after the command as well ("guestfail check-config --config x")
    after = _Parser(add_help=False)
    after.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", parents=[after], help="run the daemon (what guestfail.service starts)")
    run.add_argument("--no-dbus", action="store_true", help="do not offer the D-Bus API")

    st = sub.add_parser(
        "status", parents=[after], help="show pairs, refusals and unpaired devices (no root needed)"
    )
    st.add_argument("--json", action="store_true", help="print the status document as JSON")
    st.add_argument("--no-dbus", action="store_true", help="do not ask the daemon; read its state file")

    sub.add_parser("check-config", parents=[after], help="validate the configuration and exit")

    sw = sub.add_parser("switch", parents=[after], help="make a pair's standby or primary the active member")
    sw.add_argument("pair", help="the pair: its master's name or its label")
    sw.add_argument("member", help="'standby', 'primary', or a member's name")

    pu = sub.add_parser(
        "prepare-unplug",
        parents=[after],
        help="move a pair to its standby and return when the VF can be removed without loss",
    )
    pu.add_argument("primary", help="the VF, or its pair's master or label")
    pu.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")

    sub.add_parser("rescan", parents=[after], help="make the daemon observe and reconcile now")

    rel = sub.add_parser(
        "release",
        parents=[after],
        help="dissolve pairs: delete the master, give the standby its name and addresses back",
    )
    rel.add_argument("pairs", nargs="*", metavar="PAIR", help="masters to release (default: with --all)")
    rel.add_argument("--all", action="store_true", help="release every master guestfail built")
    rel.add_argument("--force", action="store_true", help="even while the daemon runs (it would pair again)")
    return p


def setup_logging(verbose: int) -> None:
    """guestfail's own messages at the chosen level; libraries' at warnings
    (pyroute2's debug output would drown the journal).  -vvv shows theirs too."""
    level = logging.WARNING - 10 * min(verbose, 2)
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(
        level=logging.DEBUG if verbose > 2 else logging.WARNING, format=fmt, stream=sys.stderr
    )
    logging.getLogger("guestfail").setLevel(level)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the daemon logs what it does (INFO) by default; commands only warnings
    setup_logging(max(args.verbose, 1) if args.command == "run" else args.verbose)
    try:
        return int(dispatch(args))
    except GuestfailError as e:
        print(f"guestfail: {e}", file=sys.stderr)
        return int(e.exit)
    except KeyboardInterrupt:
        return int(Exit.OK)
    except BrokenPipeError:
        return int(Exit.OK)


def dispatch(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    if args.command == "check-config":
        print(
            f"{cfg.source}: ok (backend {cfg.backend}, naming {cfg.naming}, "
            f"{len(cfg.pairs)} explicit pairs, {len(cfg.serials)} serials, "
            f"rules {', '.join(cfg.rules) or 'none'})"
        )
        return Exit.OK
    if args.command == "run":
        from guestfail import daemon

        return daemon.run(cfg, use_dbus=not args.no_dbus)
    if args.command == "status":
        return cmd_status(cfg, args)
    if args.command == "release":
        return cmd_release(cfg, args)
    return cmd_call(args)


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from guestfail import status
    from guestfail.discover import observe
    from guestfail.netlink import Netlink
    from guestfail.sysfs import Sysfs
    from guestfail.udev import Udev

    nl = Netlink()
    try:
        snap = observe(nl, Sysfs(), Udev())
    finally:
        nl.close()
    daemon_status = None
    if not args.no_dbus:
        from guestfail import dbus_api

        def daemon_status() -> Optional[dict[str, Any]]:
            return dbus_api.call_status()

    doc = status.gather(cfg, snap, daemon_status)
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(status.render(doc))
    return status.exit_code(doc)


def cmd_release(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What the package runs on removal: the plain setup comes back."""
    from guestfail import dbus_api, processes, status
    from guestfail.apply import BondBackend, Executor
    from guestfail.discover import observe
    from guestfail.match import is_ours
    from guestfail.netlink import Netlink
    from guestfail.plan import plan_release
    from guestfail.state import STATE_FILE, read
    from guestfail.sysfs import Sysfs

    if not args.all and not args.pairs:
        raise UsageError("name the pairs to release, or use --all")
    if not args.force:
        doc = read(Path(cfg.state_dir) / STATE_FILE) or {}
        if dbus_api.call_status() is not None or status.pid_alive(doc.get("daemon", {}).get("pid")):
            raise SystemRefused("the daemon is running and would pair again: stop guestfail.service first")
    nl = Netlink()
    try:
        sysfs = Sysfs()
        snap = observe(nl, sysfs, None)
        masters = [x for x in snap.links.values() if is_ours(x)]
        if args.pairs:
            named = {x.name: x for x in masters}
            missing = [p for p in args.pairs if p not in named]
            if missing:
                raise NotFound(f"no master guestfail built is called {missing[0]!r}")
            masters = [named[p] for p in args.pairs]
        executor = Executor(nl, BondBackend(cfg, nl, sysfs))
        for m in masters:
            executor.run_steps(m.name, plan_release(m, snap), snap.links)
            if m.kind == "team":
                # its teamd outlives the service (KillMode=process) and the device
                pid = processes.teamd_pid(m.name)
                if pid is not None:
                    processes.stop(pid)
            print(f"released {m.name}")
        # the standbys have their names back: ifupdown's DHCP clients follow
        names = {m.name for m in masters}
        back = {x.name: x.ifindex for x in observe(nl, sysfs, None).links.values() if x.name in names}
    finally:
        nl.close()
    from guestfail import ifupdown

    for line in ifupdown.follow(back, lambda: dbus_api.BusClient(timeout=5.0)):
        print(line)
    _forget_nm_profiles({m.name for m in masters})
    return Exit.OK


def _forget_nm_profiles(masters: set[str]) -> None:
    """NetworkManager profiles guestfail made for released masters go; the
    user's own profile then applies to the standby again."""
    if not masters:
        return
    from guestfail.dbus_api import BusClient, BusError
    from guestfail.nm import NetworkManager

    bus = BusClient(timeout=5.0)
    try:
        nm = NetworkManager(bus)
        if nm.running():
            for master in nm.delete_master_profiles(masters):
                print(f"deleted the NetworkManager profile of {master}")
    except BusError as e:
        log.warning("NetworkManager profiles not deleted: %s", e)
    finally:
        bus.close()


def cmd_call(args: argparse.Namespace) -> int:
    """Commands the daemon carries out, over D-Bus."""
    from guestfail import dbus_api

    if args.command == "switch":
        doc = dbus_api.call("Switch", "ss", [args.pair, args.member])
    elif args.command == "prepare-unplug":
        doc = dbus_api.call("PrepareUnplug", "sd", [args.primary, args.timeout])
    elif args.command == "rescan":
        doc = dbus_api.call("Rescan", "", [])
    else:  # pragma: no cover - argparse rejects it first
        raise UsageError(f"unknown command {args.command}")
    if doc is None:
        raise SystemRefused("the daemon is not reachable on D-Bus (is guestfail.service running?)")
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return Exit.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
