"""The `guestfail` command: each subcommand's parser names its action
(`set_defaults(action=...)`); `main` loads the configuration, runs the
action and maps errors to exit codes (guestfail.core.errors.Exit, EXIT
STATUS in guestfail(8)).  Logs go to stderr, data to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from guestfail import __version__
from guestfail.core import config as config_mod
from guestfail.core.errors import Exit, GuestfailError, SystemRefused, UsageError

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
  8  status: the daemon is not running (the state shown may be stale; nothing switches)

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
    run.set_defaults(action=cmd_run)

    st = sub.add_parser(
        "status", parents=[after], help="show pairs, refusals and unpaired devices (no root needed)"
    )
    st.add_argument("pair", nargs="?", metavar="PAIR", help="one pair in detail: its members and switches")
    st.add_argument("--json", action="store_true", help="print the status document as JSON")
    st.add_argument("--no-dbus", action="store_true", help="do not ask the daemon; read its state file")
    st.set_defaults(action=cmd_status)

    cc = sub.add_parser("check-config", parents=[after], help="validate the configuration and exit")
    cc.set_defaults(action=cmd_check_config)

    sw = sub.add_parser("switch", parents=[after], help="make a pair's standby or primary the active member")
    sw.add_argument("pair", help="the pair: its master's name or its label")
    sw.add_argument("member", help="'standby', 'primary', or a member's name")
    sw.set_defaults(action=lambda _cfg, a: call_daemon("Switch", "ss", [a.pair, a.member]))

    pu = sub.add_parser(
        "prepare-unplug",
        parents=[after],
        help="move a pair to its standby and return when the VF can be removed without loss",
    )
    pu.add_argument("primary", help="the VF, or its pair's master or label")
    pu.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    pu.set_defaults(action=lambda _cfg, a: call_daemon("PrepareUnplug", "sd", [a.primary, a.timeout]))

    rs = sub.add_parser("rescan", parents=[after], help="make the daemon observe and reconcile now")
    rs.set_defaults(action=lambda _cfg, _a: call_daemon("Rescan", "", []))

    rel = sub.add_parser(
        "release",
        parents=[after],
        help="dissolve pairs: delete the master, give the standby its name and addresses back",
    )
    rel.add_argument("pairs", nargs="*", metavar="PAIR", help="masters to release (default: with --all)")
    rel.add_argument("--all", action="store_true", help="release every master guestfail built")
    rel.add_argument("--force", action="store_true", help="even while the daemon runs (it would pair again)")
    rel.set_defaults(action=cmd_release)
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
    action: Callable[[config_mod.Config, argparse.Namespace], int] = args.action
    try:
        return int(action(config_mod.load(args.config), args))
    except GuestfailError as e:
        for line in str(e).splitlines() or [""]:  # a bad configuration: one line per problem
            print(f"guestfail: {line}", file=sys.stderr)
        return int(e.exit)
    except KeyboardInterrupt:
        return int(Exit.OK)
    except BrokenPipeError:
        return int(Exit.OK)


def cmd_check_config(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    print(
        f"{cfg.source}: ok (backend {cfg.backend}, naming {cfg.naming}, "
        f"{len(cfg.pairs)} explicit pairs, {len(cfg.serials)} serials, "
        f"rules {', '.join(cfg.rules) or 'none'})"
    )
    if cfg.bridges and "topology" not in cfg.rules:
        print(f"{cfg.source}: the [[topology]] bridges are unused: agent.match does not list topology")
    return Exit.OK


def cmd_run(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from guestfail.agent import daemon

    return daemon.run(cfg, use_dbus=not args.no_dbus)


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from guestfail.cli import status
    from guestfail.system.netlink import Netlink
    from guestfail.system.observe import observe
    from guestfail.system.sysfs import Sysfs
    from guestfail.system.udev import Udev

    sysfs = Sysfs()
    nl = Netlink()
    try:
        snap = observe(nl, sysfs, Udev())
    finally:
        nl.close()
    daemon_status = None
    if not args.no_dbus:
        from guestfail.cli import client

        if client.available():
            daemon_status = client.call_status
    st = status.Status.from_document(status.gather(cfg, snap, daemon_status))
    if args.pair:
        pair = st.pair(args.pair)
        members = status.members(pair, snap, sysfs.member_counters)
        if args.json:
            _print_json({"pair": pair.json, "members": [m.to_json() for m in members]})
        else:
            print(status.render_pair(pair, members))
    elif args.json:
        _print_json(st.document)
    else:
        print(status.render(st))
    return status.exit_code(st)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def cmd_release(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What the package runs on removal: the plain setup comes back."""
    from guestfail.agent.release import release
    from guestfail.cli import status
    from guestfail.core.records import STATE_FILE
    from guestfail.integrations import ifupdown
    from guestfail.system.files import read
    from guestfail.system.netlink import Netlink
    from guestfail.system.observe import assemble
    from guestfail.system.sysfs import Sysfs

    if not args.all and not args.pairs:
        raise UsageError("name the pairs to release, or use --all")
    if not args.force:
        doc = read(Path(cfg.state_dir) / STATE_FILE) or {}
        if status.pid_alive(doc.get("daemon", {}).get("pid")) or _daemon_on_bus():
            raise SystemRefused("the daemon is running and would pair again: stop guestfail.service first")
    nl = Netlink()
    try:
        sysfs = Sysfs()
        released = release(cfg, nl, sysfs, None if args.all else list(args.pairs))
        # the standbys have their names back: ifupdown's DHCP clients follow them
        back = {
            x.name: x.ifindex for x in assemble(nl.dump(), sysfs).links.values() if x.name in set(released)
        }
    finally:
        nl.close()
    for line in ifupdown.follow(back, ifupdown.bus_client):
        print(line)
    _forget_nm_profiles(set(released))
    return Exit.OK


def _daemon_on_bus() -> bool:
    from guestfail.cli import client

    return client.available() and client.call_status() is not None


def _forget_nm_profiles(masters: set[str]) -> None:
    """NetworkManager profiles guestfail made for released masters go; the
    user's own profile then applies to the standby again."""
    if not masters:
        return
    from guestfail.cli import client

    if not client.available():
        return  # no D-Bus library: no NetworkManager support either
    from guestfail.integrations.nmclient import NetworkManager
    from guestfail.system.dbus import BusClient, BusError

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


def call_daemon(member: str, signature: str, body: list[Any]) -> int:
    """Commands the daemon carries out, over D-Bus."""
    from guestfail.cli import client

    if not client.available():
        raise SystemRefused(f"{member} needs the daemon over D-Bus, and no D-Bus library is installed")
    doc = client.call(member, signature, body)
    if doc is None:
        raise SystemRefused("the daemon is not reachable on D-Bus (is guestfail.service running?)")
    _print_json(doc)
    return Exit.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
