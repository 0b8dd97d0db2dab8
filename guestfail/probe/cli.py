"""The `guestfail-probe` command.  Exit codes: `guestfail.probe.errors.ProbeExit`
(and EXIT STATUS in guestfail-probe(8)); progress and errors go to stderr,
the summary or the JSON report to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from guestfail import __version__
from guestfail.core.errors import GuestfailError, NotFound, SystemRefused, UsageError
from guestfail.probe import decide, report
from guestfail.probe.control import ControlFactory, KernelControl
from guestfail.probe.decide import Options
from guestfail.probe.errors import InUse, ProbeExit
from guestfail.probe.facts import normalize_mac
from guestfail.probe.netlink import Links
from guestfail.probe.runner import STATE_DIR, Journal, Run, Settings, restore_from_journal

log = logging.getLogger("guestfail-probe")

EPILOG = """\
states (frames to the test MAC are counted on the PF, and on the VF in D):
  A  VF without a driver (or vfio-pci), test MAC on the PF's filter only
  B  VF's MAC (and VLAN) set on the host, still no VF driver
  C  VF driver bound, VF link down
  D  VF up

exit status:
  0   late: the frames reach the PF until a VF driver runs (or always)
  1   internal error (a bug in guestfail-probe)
  2   usage error (bad command line); nothing was changed
  6   the system refused (permissions, the kernel, a driver); restored
  7   no such PF, VF, sender or network namespace; nothing was changed
  10  early: setting the VF's MAC moves its frames away from the PF at once
  11  inconclusive: the report says why
  12  in use: the VF or another VF of the PF is in use; nothing was changed
  13  not restored: something could not be put back (the report lists it)
  128+N  stopped by signal N (Ctrl-C: 130, SIGTERM: 143), after restoring

See guestfail-probe(8).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(ProbeExit.USAGE, f"guestfail-probe: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="guestfail-probe",
        description="Find out whether a NIC steers a VF's MAC to the VF before the VF's driver "
        "is ready (early) or only once it is (late), restoring everything it changed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"guestfail-probe {__version__}")
    p.add_argument("--pf", metavar="IFACE", help="the PF's network interface")
    p.add_argument("--vf", metavar="N", type=int, help="the VF to probe (its index on the PF)")
    p.add_argument(
        "--vlan", metavar="ID", type=int, default=0, help="set the VF on this VLAN; tag the test frames"
    )
    p.add_argument("--qos", metavar="N", type=int, default=0, help="the VLAN priority (0-7) with --vlan")
    p.add_argument("--mac", metavar="MAC", help="the test MAC (default: a random locally administered one)")
    sender = p.add_mutually_exclusive_group()
    sender.add_argument("--sender", metavar="IFACE", help="send the test frames from this interface")
    sender.add_argument(
        "--sender-netns",
        metavar="NAME:IFACE",
        help="send them from IFACE in network namespace NAME (ip netns)",
    )
    p.add_argument("--frames", metavar="N", type=int, default=50, help="test frames per state (default 50)")
    p.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=0.3,
        help="wait after each change before sending (default 0.3)",
    )
    p.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="wait for the last frames of a state (default 1)",
    )
    p.add_argument(
        "--vf-driver",
        metavar="NAME",
        default="",
        help="the VF driver for states C and D (default: the VF's own host driver, else the kernel's choice)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="probe although the VF's netdev is up or other VFs are assigned to running VMs",
    )
    p.add_argument("--dry-run", action="store_true", help="check and print the steps; change nothing")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    p.add_argument("--report", metavar="FILE", type=Path, help="also write the JSON report to FILE")
    p.add_argument(
        "--restore",
        action="store_true",
        help="put back what a killed probe of --pf changed (from its journal) and exit",
    )
    p.add_argument(
        "--udev-hwdb",
        metavar="REPORT",
        type=Path,
        nargs="+",
        help="print a udev hwdb file carrying the verdicts of these JSON reports, and exit",
    )
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    return p


def random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def options(args: argparse.Namespace) -> Options:
    if not args.pf:
        raise UsageError("--pf is required")
    if args.vf is None:
        raise UsageError("--vf is required")
    if not args.sender and not args.sender_netns:
        raise UsageError("give --sender IFACE or --sender-netns NAME:IFACE")
    sender, netns = args.sender or "", ""
    if args.sender_netns:
        netns, _, sender = args.sender_netns.rpartition(":")
        if not netns or not sender:
            raise UsageError(f"--sender-netns {args.sender_netns}: give NAME:IFACE")
    try:
        mac = normalize_mac(args.mac) if args.mac else random_mac()
    except ValueError as e:
        raise UsageError(f"--mac: {e}") from None
    if args.frames < 1 or args.frames > 100000:
        raise UsageError(f"--frames {args.frames}: 1 to 100000")
    if args.vf < 0:
        raise UsageError(f"--vf {args.vf}: a VF index is 0 or more")
    if args.settle < 0 or args.wait <= 0:
        raise UsageError("--settle must be 0 or more and --wait more than 0")
    if args.qos and not args.vlan:
        raise UsageError("--qos needs --vlan")
    return Options(
        pf=args.pf,
        vf=args.vf,
        mac=mac,
        vlan=args.vlan,
        qos=args.qos,
        sender=sender,
        sender_netns=netns,
        frames=args.frames,
        force=args.force,
        vf_driver=args.vf_driver,
    )


def _hwdb(paths: list[Path]) -> int:
    docs = []
    for path in paths:
        try:
            docs.append((str(path), json.loads(path.read_text())))
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: {e}") from None
    sys.stdout.write(report.hwdb(docs))
    return ProbeExit.LATE


def _restore(args: argparse.Namespace, factory: ControlFactory, settings: Settings) -> int:
    if not args.pf:
        raise UsageError("--restore needs --pf")
    back = restore_from_journal(factory, args.pf, settings)
    if not back.done and not back.left:
        print(f"nothing to restore for {args.pf}")
        return ProbeExit.LATE
    for d in back.done:
        print(f"restored: {d}")
    for n in back.notes:
        print(f"note: {n}")
    for x in back.left:
        print(f"NOT restored: {x}")
    return ProbeExit.NOT_RESTORED if back.left else ProbeExit.LATE


def _probe(args: argparse.Namespace, factory: ControlFactory, settings: Settings) -> int:
    o = options(args)
    journal = Journal(settings.state_dir, o.pf)
    with Links() as links:
        if links.ifindex(o.pf) is None:
            raise NotFound(f"no interface {o.pf}")
        journal.lock()
        run = Run(factory, links, o, settings)
        try:
            if journal.read() is not None:
                raise InUse(
                    f"an earlier guestfail-probe of {o.pf} did not finish ({journal.path}): "
                    f"run guestfail-probe --restore --pf {o.pf} first"
                )
            orig, sender, reasons = run.prepare()
            if args.dry_run:
                sys.stdout.write(report.dry_run(orig, o, decide.probe_steps(orig, o), reasons))
                return ProbeExit.LATE
            res = run.execute(orig, sender, reasons, journal)
        finally:
            run.close_sockets()
            journal.unlock()
    doc = report.report_doc(res)
    if args.report:
        try:
            args.report.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as e:
            log.error("cannot write the report to %s: %s", args.report, e)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(report.human(res))
        if shutil.which("mausezahn") and shutil.which("netsniff-ng"):
            log.info("%s", report.by_hand(res))
    if res.not_restored:
        return ProbeExit.NOT_RESTORED
    if res.signal:
        return 128 + res.signal
    if res.error is not None:
        log.error("%s", res.error)
        return int(res.error.exit)
    return {"early": ProbeExit.EARLY, "late": ProbeExit.LATE}.get(res.verdict.kind, ProbeExit.INCONCLUSIVE)


def main(argv: Optional[list[str]] = None, control: Optional[ControlFactory] = None) -> int:
    """`control` builds the SR-IOV control plane (default: the kernel's);
    the lab passes its software model here."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="guestfail-probe: %(message)s", stream=sys.stderr)
    factory: ControlFactory = control or KernelControl
    settings = Settings(settle=args.settle, wait=args.wait, state_dir=args.state_dir)
    try:
        if args.udev_hwdb:
            return _hwdb(args.udev_hwdb)
        if os.geteuid() != 0:
            raise SystemRefused("guestfail-probe needs root (it changes VF settings and driver bindings)")
        if args.restore:
            return _restore(args, factory, settings)
        return _probe(args, factory, settings)
    except GuestfailError as e:
        print(f"guestfail-probe: {e}", file=sys.stderr)
        return int(e.exit)
    except KeyboardInterrupt:
        print("guestfail-probe: interrupted before anything was changed", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
