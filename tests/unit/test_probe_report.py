"""What guestfail-probe prints: the summary, the JSON report, the dry run,
the udev hwdb file; and its command line's checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from guestfail.core.errors import UsageError
from guestfail.probe import cli, decide, report
from guestfail.probe.decide import Count, Options, Verdict
from guestfail.probe.facts import Netdev, Nic, PfLink, Sender, Snapshot, VfConfig, VfDevice
from guestfail.probe.runner import Result, Settings

ORIG = Snapshot(
    pf=PfLink("enp1s0", 3, "02:00:00:00:01:01", False, False),
    nic=Nic(
        "0000:01:00.0",
        "8086",
        "10c9",
        "8086",
        "a03c",
        "Intel Corporation 82576 Gigabit Network Connection",
        "igb",
        "6.1.0-56-amd64",
        "2.1.0",
        2,
        7,
    ),
    vfs=(
        VfDevice(0, "0000:01:10.0", "igbvf", netdev=Netdev("enp1s0v0", 5, "9a:29:63:1c:a2:2d", 1500, False)),
        VfDevice(1, "0000:01:10.2"),
    ),
    configs=(VfConfig(0), VfConfig(1)),
    kernel="6.1.0-56-amd64",
)
OPTS = Options("enp1s0", 0, "02:00:00:00:cc:01", sender="enp2s0")


def result(kind: str = "early", **kw: Any) -> Result:
    r = Result(
        OPTS,
        Settings(),
        ORIG,
        Sender("enp2s0", "", "02:00:00:00:01:02", True, True),
        counts=[Count("A", 50, 50), Count("B", 50, 0), Count("C", 50, 0), Count("D", 50, 0, 50)],
        verdict=Verdict(kind, "because", "B" if kind == "early" else ""),
        restored=["unbind VF 0 from igbvf", "set VF 0's MAC back to 00:00:00:00:00:00"],
        c_driver="igbvf",
        started=time.mktime((2026, 11, 27, 12, 0, 0, 0, 0, 0)),
        changed=True,
    )
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_report_document() -> None:
    doc = report.report_doc(result())
    assert doc["nic"] == {
        "model": "Intel Corporation 82576 Gigabit Network Connection",
        "pci_address": "0000:01:00.0",
        "vendor": "8086",
        "device": "10c9",
        "subsystem_vendor": "8086",
        "subsystem_device": "a03c",
        "driver": "igb",
        "driver_version": "6.1.0-56-amd64",
        "firmware": "2.1.0",
        "numvfs": 2,
        "totalvfs": 7,
    }
    assert doc["vf"] == {
        "index": 0,
        "pci_address": "0000:01:10.0",
        "vendor": "",
        "device": "",
        "driver_before": "igbvf",
        "driver_in_c": "igbvf",
    }
    assert doc["states"][3] == {
        "state": "D",
        "text": decide.STATE_TEXT["D"],
        "sent": 50,
        "pf": 0,
        "vf": 50,
        "note": "",
    }
    assert (doc["verdict"]["kind"], doc["restored"], doc["stopped_by"], doc["error"]) == (
        "early",
        True,
        None,
        None,
    )
    assert doc["kernel"] == "6.1.0-56-amd64" and doc["format"] == 1


def test_summary() -> None:
    text = report.human(result())
    assert (
        "NIC:     enp1s0 0000:01:00.0 Intel Corporation 82576 Gigabit Network Connection [8086:10c9]" in text
    )
    assert "driver igb 6.1.0-56-amd64, firmware 2.1.0" in text
    assert "B  VF's MAC set on the host (netlink), still no VF driver" in text
    assert "verdict: early: because" in text
    assert "restored: everything the probe changed (2 steps)" in text
    left = report.human(result(not_restored=["set VF 0's MAC back to 00:00:00:00:00:00"]))
    assert "NOT restored: set VF 0's MAC back" in left


def test_dry_run_lists_the_steps_and_the_restore() -> None:
    text = report.dry_run(ORIG, OPTS, decide.probe_steps(ORIG, OPTS), [])
    assert " 1. set enp1s0 up (it is down)" in text
    assert "then restore: VF 0's MAC 00:00:00:00:00:00, driver igbvf, netdev enp1s0v0" in text
    nothing = report.dry_run(ORIG, OPTS, [], ["enp1s0 is promiscuous"])
    assert "nothing: the measurement would be inconclusive:\n  - enp1s0 is promiscuous" in nothing


def test_hwdb_carries_early_and_late_keyed_by_pci_ids() -> None:
    early = report.report_doc(result("early"))
    late = report.report_doc(result("late"))
    late["nic"] = {**late["nic"], "device": "1521", "subsystem_device": ""}
    model = report.report_doc(result("late"))
    model["nic"] = {**model["nic"], "vendor": "", "device": "", "model": "guestfail software model (late)"}
    vague = report.report_doc(result("inconclusive"))
    text = report.hwdb([("a.json", early), ("b.json", late), ("c.json", model), ("d.json", vague)])
    assert "pci:v00008086d000010C9sv00008086sd0000A03C*\n GUESTFAIL_VF_MAC_FILTER=early\n" in text
    assert "pci:v00008086d00001521*\n GUESTFAIL_VF_MAC_FILTER=late\n" in text
    measured = "igb 6.1.0-56-amd64, firmware 2.1.0, kernel 6.1.0-56-amd64, 2026-11-27"
    assert f" GUESTFAIL_VF_MAC_FILTER_MEASURED={measured}\n" in text
    assert "# skipped c.json: no PCI id (guestfail software model (late))" in text
    assert "# skipped d.json: inconclusive" in text


def test_hwdb_refuses_reports_that_disagree() -> None:
    early = report.report_doc(result("early"))
    late = report.report_doc(result("late"))
    with pytest.raises(UsageError, match=r"b\.json says late but a\.json says early"):
        report.hwdb([("a.json", early), ("b.json", late)])
    with pytest.raises(UsageError, match=r"x\.json: not a guestfail-probe report"):
        report.hwdb([("x.json", {"a": 1})])


def args(*argv: str) -> Options:
    return cli.options(cli.build_parser().parse_args(list(argv)))


def test_command_line_to_options() -> None:
    o = args("--pf", "enp1s0", "--vf", "1", "--sender-netns", "blue:veth0", "--mac", "02-00-00-00-CC-01")
    assert (o.pf, o.vf, o.sender, o.sender_netns, o.mac) == (
        "enp1s0",
        1,
        "veth0",
        "blue",
        "02:00:00:00:cc:01",
    )
    rnd = args("--pf", "p", "--vf", "0", "--sender", "s").mac
    assert int(rnd[:2], 16) & 3 == 2  # unicast, locally administered


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (("--vf", "0", "--sender", "s"), "--pf is required"),
        (("--pf", "p", "--sender", "s"), "--vf is required"),
        (("--pf", "p", "--vf", "0"), "give --sender IFACE or --sender-netns NAME:IFACE"),
        (("--pf", "p", "--vf", "0", "--sender-netns", "veth0"), "--sender-netns veth0: give NAME:IFACE"),
        (("--pf", "p", "--vf", "0", "--sender", "s", "--mac", "xx"), "--mac: not a MAC address"),
        (("--pf", "p", "--vf", "0", "--sender", "s", "--qos", "3"), "--qos needs --vlan"),
        (("--pf", "p", "--vf", "-1", "--sender", "s"), "--vf -1"),
    ],
)
def test_command_line_errors(argv: tuple[str, ...], text: str) -> None:
    with pytest.raises(UsageError, match=text):
        args(*argv)


def test_restore_and_hwdb_modes_need_no_measurement_options(tmp_path: Path) -> None:
    a = cli.build_parser().parse_args(["--udev-hwdb", str(tmp_path / "r.json")])
    assert a.udev_hwdb == [tmp_path / "r.json"]
    with pytest.raises(UsageError, match=r"r\.json"):
        cli._hwdb([tmp_path / "r.json"])


def test_how_to_cross_check_by_hand() -> None:
    text = report.by_hand(result())
    assert "ip link set enp1s0 vf 0 mac 02:00:00:00:cc:01" in text
    assert "netsniff-ng --in enp1s0 --no-promisc" in text
    assert "mausezahn enp2s0 -b 02:00:00:00:cc:01 -c 50" in text
