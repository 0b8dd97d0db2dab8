"""guestfail-probe against the software model of an SR-IOV NIC
(lab/sriov_model.py) in network namespaces the tests make: the real command,
real frames through veths, a bridge and a macvlan, real signals.

Every test compares the model's whole state (`ip -d link` in its three
namespaces and the switch's static fdb) before and after the probe: the
probe must put back everything it changed, also when a signal or an error
stops it half-way.  The model's mode decides the right verdict: early, late,
or (the wire cut, a promiscuous PF, a bridge) inconclusive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from lab.sriov_model import PF, SENDER, Model, differences, ip
from tests.integration.conftest import REPO

pytestmark = pytest.mark.netns

Make = Callable[..., Model]

#: quicker than the defaults (meant for hardware); the model changes at once
FAST = ("--frames", "20", "--settle", "0.05", "--wait", "0.5")


@pytest.fixture
def make_model(tmp_path: Path) -> Iterator[Make]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    made: list[Model] = []

    def make(**kw: Any) -> Model:
        m = Model(f"gp{uuid.uuid4().hex[:6]}", **kw).create()
        made.append(m)
        return m

    yield make
    for m in made:
        m.destroy()


def argv(m: Model, tmp: Path, *args: str) -> list[str]:
    return [
        "ip",
        "netns",
        "exec",
        m.host,
        sys.executable,
        "-m",
        "lab.sriov_model",
        "probe",
        m.prefix,
        "--",
        "--pf",
        PF,
        "--sender-netns",
        f"{m.wire_ns}:{SENDER}",
        "--state-dir",
        str(tmp / "state"),
        *args,
    ]


def probe(m: Model, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(m, tmp, *args), capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def counts(doc: dict[str, Any]) -> dict[str, tuple[int, int | None]]:
    return {s["state"]: (s["pf"], s["vf"]) for s in doc["states"]}


# ---------------------------------------------------------------- verdicts


def test_early_model_gives_early_and_restores(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early")
    before = m.state()
    r = probe(m, tmp_path, "--vf", "1", "--report", str(tmp_path / "r.json"), *FAST)
    assert r.returncode == 10, r.stderr
    doc = report(tmp_path / "r.json")
    assert doc["verdict"]["kind"] == "early" and doc["verdict"]["steered_at"] == "B"
    assert counts(doc) == {"A": (20, None), "B": (0, None), "C": (0, None), "D": (0, 20)}
    assert doc["restored"] is True and doc["not_restored"] == []
    assert "verdict: early" in r.stdout
    assert differences(before, m.state()) == []


def test_late_model_gives_late_and_restores(make_model: Make, tmp_path: Path) -> None:
    """VF 0 starts with a driver and a netdev: unbound for A and B, bound
    again afterwards with its MAC back."""
    m = make_model(mode="late")
    before = m.state()
    r = probe(m, tmp_path, "--vf", "0", "--json")  # the defaults, as on hardware
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"]["kind"] == "late" and doc["verdict"]["steered_at"] == "C"
    assert counts(doc) == {"A": (50, None), "B": (50, None), "C": (0, None), "D": (0, 50)}
    assert doc["vf"]["driver_before"] == "gfmodel-vf"
    assert differences(before, m.state()) == []


def test_shared_model_keeps_giving_the_pf_its_frames(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="shared", pf_up=False)
    before = m.state()
    r = probe(m, tmp_path, "--vf", "1", "--json", *FAST)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"]["kind"] == "late" and doc["verdict"]["steered_at"] == ""
    assert counts(doc)["D"] == (20, 20)
    assert differences(before, m.state()) == []  # the PF is down again


def test_a_cut_wire_is_inconclusive(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early", wire=False)
    before = m.state()
    r = probe(m, tmp_path, "--vf", "1", "--json", *FAST)
    assert r.returncode == 11, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verdict"]["kind"] == "inconclusive"
    assert "state A the PF got none" in doc["verdict"]["reason"]
    assert differences(before, m.state()) == []


@pytest.mark.parametrize("setup", ["promisc", "bridge"])
def test_a_pf_that_takes_every_frame_is_inconclusive_and_left_alone(
    make_model: Make, tmp_path: Path, setup: str
) -> None:
    m = make_model(mode="early")
    if setup == "promisc":
        ip("link", "set", PF, "promisc", "on", netns=m.host)
        want = "pf0 is promiscuous"
    else:
        ip("link", "add", "br9", "type", "bridge", netns=m.host)
        ip("link", "set", PF, "master", "br9", netns=m.host)
        want = "pf0 is a port of bridge br9"
    m.settle()
    before = m.state()
    r = probe(m, tmp_path, "--vf", "0", "--json", *FAST)
    assert r.returncode == 11, r.stderr
    doc = json.loads(r.stdout)
    assert want in doc["verdict"]["reason"]
    assert doc["changed"] is False and doc["states"] == []
    assert differences(before, m.state()) == []


# ---------------------------------------------------------------- refusals and bad input


def test_a_vf_in_use_is_refused_with_one_line(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early")
    ip("link", "set", f"{PF}v0", "up", netns=m.host)
    m.settle()  # the kernel's linkwatch sets its operstate a moment later
    before = m.state()
    r = probe(m, tmp_path, "--vf", "0", *FAST)
    assert r.returncode == 12
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "guestfail-probe: VF 0's netdev pf0v0 is up: it is in use on this host (--force to probe anyway)"
    ]
    assert differences(before, m.state()) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--vf", "7"), 7, "pf0 has 2 VFs (0-1): there is no VF 7"),
        (("--vf", "1", "--mac", "01:00:5e:00:00:01"), 2, "the test MAC must be a unicast address"),
        (("--vf", "1", "--mac", "02:00:00:00:aa:01"), 2, "is pf0's own MAC"),
        (("--vf", "1", "--frames", "0"), 2, "--frames 0: 1 to 100000"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    make_model: Make, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    m = make_model(mode="early")
    before = m.state()
    r = probe(m, tmp_path, *args)
    assert r.returncode == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("guestfail-probe: ") and message in lines[0], r.stderr
    assert differences(before, m.state()) == []


def test_dry_run_prints_the_steps_and_changes_nothing(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early", pf_up=False)
    before = m.state()
    r = probe(m, tmp_path, "--vf", "0", "--dry-run", "--mac", "02:00:00:00:cc:01")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for text in (
        "set pf0 up (it is down)",
        "add 02:00:00:00:cc:01 to pf0's unicast filter",
        "unbind VF 0 (model:0) from gfmodel-vf",
        "set VF 0's MAC to 02:00:00:00:cc:01 (IFLA_VF_MAC)",
        "then restore:",
    ):
        assert text in out, out
    assert out.index("A: ") < out.index("B: ") < out.index("C: ") < out.index("D: ")
    assert differences(before, m.state()) == []


# ---------------------------------------------------------------- stopped half-way


def _start(m: Model, tmp: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv(m, tmp, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def _wait_for_line(proc: subprocess.Popen[str], text: str) -> list[str]:
    """Read the probe's log until a line contains `text` (the probe says
    what it does before it does it)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the probe ended without logging {text!r}: {''.join(seen)}")


@pytest.mark.parametrize(
    ("sig", "when"),
    [
        (signal.SIGTERM, "B: VF's MAC set"),  # the VF holds the test MAC
        (signal.SIGINT, "C: VF driver bound"),  # a driver is bound (Ctrl-C)
        (signal.SIGHUP, "D: VF up"),  # the VF's netdev is up
    ],
)
def test_a_signal_mid_probe_restores_everything(
    make_model: Make, tmp_path: Path, sig: signal.Signals, when: str
) -> None:
    m = make_model(mode="early", pf_up=False)
    before = m.state()
    proc = _start(m, tmp_path, "--vf", "0", "--report", str(tmp_path / "r.json"), "--frames", "200")
    _wait_for_line(proc, when)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    doc = report(tmp_path / "r.json")
    assert doc["stopped_by"] == sig.name and doc["restored"] is True, doc
    assert f"stopped by {sig.name}" in out
    assert differences(before, m.state()) == []
    assert not (tmp_path / "state" / f"{PF}.json").exists()


def test_an_error_mid_probe_restores_and_keeps_what_was_measured(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early", fail_bind=True)
    before = m.state()
    r = probe(m, tmp_path, "--vf", "1", "--report", str(tmp_path / "r.json"), *FAST)
    assert r.returncode == 6
    assert r.stderr.strip().splitlines()[-1] == (
        "guestfail-probe: bind VF 1 to gfmodel-vf: failed (the model was told to fail)"
    )
    doc = report(tmp_path / "r.json")
    assert doc["verdict"]["kind"] == "early"  # A and B were measured before the error
    assert [s["state"] for s in doc["states"]] == ["A", "B"]
    assert doc["restored"] is True
    assert differences(before, m.state()) == []


def test_vlan_without_8021q_is_refused_and_restored(make_model: Make, tmp_path: Path) -> None:
    """This host's kernel has no 802.1Q: the probe says so (the igb lab's
    guest kernel has it, and probes with --vlan there)."""
    m = make_model(mode="early")
    before = m.state()
    r = probe(m, tmp_path, "--vf", "1", "--vlan", "100", *FAST)
    assert r.returncode == 6
    assert "this kernel has no 802.1Q support" in r.stderr.strip().splitlines()[-1]
    assert differences(before, m.state()) == []


def test_sigkill_leaves_a_journal_that_restore_puts_back(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="late")
    before = m.state()
    proc = _start(m, tmp_path, "--vf", "0", "--frames", "200")
    _wait_for_line(proc, "D: VF up")
    proc.kill()
    proc.communicate(timeout=30)
    journal = tmp_path / "state" / f"{PF}.json"
    assert journal.exists()
    assert differences(before, m.state()) != []  # the VF holds the test MAC, its netdev is up
    # a new probe refuses until the old one is restored
    r = probe(m, tmp_path, "--vf", "0", *FAST)
    assert r.returncode == 12
    assert "run guestfail-probe --restore --pf pf0 first" in r.stderr
    r = probe(m, tmp_path, "--restore")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restored: set VF 0's MAC back" in r.stdout
    assert not journal.exists()
    assert differences(before, m.state()) == []
    r = probe(m, tmp_path, "--restore")
    assert (r.returncode, r.stdout.strip()) == (0, "nothing to restore for pf0")


def test_one_probe_per_pf(make_model: Make, tmp_path: Path) -> None:
    m = make_model(mode="early")
    before = m.state()
    first = _start(m, tmp_path, "--vf", "1", "--frames", "200")
    _wait_for_line(first, "A: VF without a driver")
    r = probe(m, tmp_path, "--vf", "0", *FAST)
    assert r.returncode == 12
    assert "another guestfail-probe runs on pf0" in r.stderr
    first.communicate(timeout=60)
    assert first.returncode == 10
    assert differences(before, m.state()) == []
