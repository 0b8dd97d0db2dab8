"""The command line as a user runs it: exit codes, one-line errors, data on
stdout and logs on stderr, nothing changed on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guestfail import __version__

REPO = Path(__file__).resolve().parent.parent.parent


def gf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guestfail", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        check=False,
    )


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_version_and_help() -> None:
    r = gf("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"guestfail {__version__}")
    r = gf("--help")
    assert r.returncode == 0
    for command in ("run", "status", "check-config", "switch", "prepare-unplug", "rescan", "release"):
        assert command in r.stdout
    assert "3  status: degraded" in r.stdout


def test_usage_error_is_one_line_and_exit_2() -> None:
    r = gf("frobnicate")
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("guestfail: ")


@pytest.mark.parametrize("command", [["check-config"], ["run"], ["status"], ["release", "--all"]])
def test_a_bad_config_is_one_line_exit_5_and_changes_nothing(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nbackend = "ovs"\n')
    before = links()
    r = gf("--config", str(bad), *command)
    assert r.returncode == 5
    assert r.stdout == ""
    assert r.stderr.strip() == f"guestfail: {bad}: agent.backend: must be one of bond, team, not 'ovs'"
    assert links() == before


def test_check_config_names_every_problem_one_line_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\nbackend = "ovs"\nnamign = "keep"\n[bond]\nmiimon = 1e3\n')
    r = gf("--config", str(bad), "check-config")
    assert r.returncode == 5
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"guestfail: {bad}: agent.backend: must be one of bond, team, not 'ovs'",
        f"guestfail: {bad}: agent.namign: unknown key (did you mean naming?)",
        f"guestfail: {bad}: bond.miimon: must be an integer, not a float",
    ]


def test_check_config_accepts_the_config_after_the_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[agent]\nnaming = "keep"\n')
    r = gf("check-config", "--config", str(good))
    assert r.returncode == 0
    assert r.stdout.startswith(f"{good}: ok")


def test_status_without_a_daemon_is_data_on_stdout(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path}"\n')
    r = gf("--config", str(cfg), "status", "--json", "--no-dbus")
    assert r.returncode == 8  # the daemon is not running
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["source"] == "live"


def test_commands_that_need_the_daemon_say_so(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    r = gf("switch", "ens11", "standby", env=env)
    assert r.returncode == 6
    assert "the daemon is not reachable on D-Bus" in r.stderr
