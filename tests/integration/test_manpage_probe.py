"""guestfail-probe(8) must not drift from the code: the options of its
parser, the exit codes of ProbeExit (and the --help epilog), the fields of
the JSON report.  And the command as an operator runs it: --help, one-line
errors, the udev hwdb file accepted and matched by the real systemd-hwdb."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guestfail import __version__
from guestfail.probe import cli, report
from guestfail.probe.errors import ProbeExit
from tests.integration.conftest import PACKAGING, REPO
from tests.integration.test_manpage import OPTION_RE, cli_options, items, plain, sections
from tests.unit.test_probe_report import result

MAN = PACKAGING / "man" / "guestfail-probe.8"


@pytest.fixture(scope="module")
def man() -> dict[str, list[str]]:
    return sections(MAN.read_text(encoding="utf-8"))


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestfail.probe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def test_every_option(man: dict[str, list[str]]) -> None:
    want = cli_options(cli.build_parser())
    got: dict[str, str | None] = {}
    for item in items(man["OPTIONS"]):
        opts = OPTION_RE.findall(item.header)
        assert opts, item.header
        rest = OPTION_RE.sub("", item.header).replace(",", " ").split()
        for o in opts:
            got[o] = rest[0] if rest else None
    assert got == want
    synopsis = " ".join(plain(x) for x in man["SYNOPSIS"])
    for o, metavar in want.items():
        assert o in synopsis, o
        if metavar:
            assert f"{o} {metavar}" in synopsis, o


def test_exit_status_is_probe_exit_and_the_help_epilog(man: dict[str, list[str]]) -> None:
    documented = {i.header: i.text for i in items(man["EXIT STATUS"])}
    assert {int(k) for k in documented if k.isdigit()} == {int(e) for e in ProbeExit}
    epilog = dict(re.findall(r"^\s+(\d+|128\+N)\s+(.+)$", cli.EPILOG, re.MULTILINE))
    assert set(epilog) == set(documented), "the --help epilog and the man page disagree"
    for code, text in documented.items():
        assert text.rstrip(".").lower() == epilog[code].lower(), f"exit status {code}"


def _keys(doc: Any, out: set[str]) -> set[str]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(k)
            _keys(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _keys(v, out)
    return out


def test_the_json_report_names_every_field(man: dict[str, list[str]]) -> None:
    text = " ".join(plain(x) for x in man["JSON REPORT"])
    fields = _keys(report.report_doc(result()), set()) - {"probe", "name", "mac", "netns"}
    missing = sorted(f for f in fields if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert missing == [], f"JSON REPORT does not mention {missing}"


def test_help_and_version() -> None:
    r = probe("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"guestfail-probe {__version__}")
    r = probe("--help")
    assert r.returncode == 0
    assert "10  early:" in r.stdout and "12  in use:" in r.stdout


def test_usage_errors_are_one_line() -> None:
    r = probe("--pf", "eth0")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["guestfail-probe: --vf is required"]
    r = probe("--bogus")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_no_such_pf_changes_nothing() -> None:
    before = subprocess.run(["ip", "-d", "link"], capture_output=True, text=True, check=True).stdout
    r = probe("--pf", "nosuchpf0", "--vf", "0", "--sender", "lo")
    assert r.returncode == (7 if os.geteuid() == 0 else 6)  # 6: it needs root
    assert len(r.stderr.strip().splitlines()) == 1
    assert not Path("/run/guestfail-probe/nosuchpf0.lock").exists()
    assert subprocess.run(["ip", "-d", "link"], capture_output=True, text=True, check=True).stdout == before


def test_the_hwdb_file_is_what_systemd_hwdb_matches(tmp_path: Path) -> None:
    hwdb_tool = shutil.which("systemd-hwdb")
    if hwdb_tool is None:
        pytest.skip("systemd-hwdb is not installed (apt install systemd)")
    (tmp_path / "early.json").write_text(json.dumps(report.report_doc(result("early"))))
    r = probe("--udev-hwdb", str(tmp_path / "early.json"))
    assert r.returncode == 0, r.stderr
    hwdb_d = tmp_path / "root" / "etc" / "udev" / "hwdb.d"
    hwdb_d.mkdir(parents=True)
    (hwdb_d / "70-guestfail-probe.hwdb").write_text(r.stdout)
    root = str(tmp_path / "root")
    subprocess.run([hwdb_tool, "--root", root, "update", "--strict"], check=True)
    # the modalias of the PF's PCI device, as udev looks it up for its netdevs
    modalias = "pci:v00008086d000010C9sv00008086sd0000A03Cbc02sc00i00"
    q = subprocess.run(
        [hwdb_tool, "--root", root, "query", modalias], capture_output=True, text=True, check=True
    )
    assert "GUESTFAIL_VF_MAC_FILTER=early" in q.stdout.splitlines()
    other = "pci:v00008086d00001521sv00008086sd00000001bc02sc00i00"
    q = subprocess.run(
        [hwdb_tool, "--root", root, "query", other], capture_output=True, text=True, check=False
    )
    assert "GUESTFAIL" not in q.stdout


def test_hwdb_from_a_file_that_is_no_report() -> None:
    r = probe("--udev-hwdb", "/etc/hostname")
    assert r.returncode == 2
    assert r.stderr.startswith("guestfail-probe: /etc/hostname: ")
