"""guestfail with no D-Bus library installed (issue 18): the bond backend,
`status`, `check-config` and `release` work; the D-Bus API, NetworkManager
support and the team backend say in one line what is missing.

Runs the commands with the Python of a venv that has guestfail and its other
dependencies but no dbus-fast (.ci/test makes it: .venv-nodbus), given as
$GUESTFAIL_NODBUS_PYTHON; skipped, saying so, without it.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = os.environ.get("GUESTFAIL_NODBUS_PYTHON", "")

pytestmark = pytest.mark.skipif(not PY, reason="no venv without D-Bus given ($GUESTFAIL_NODBUS_PYTHON)")


def gf(
    *args: str, netns: str = "", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [PY, "-m", "guestfail", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_the_venv_has_no_dbus_library() -> None:
    r = subprocess.run([PY, "-c", "import dbus_fast"], check=False, capture_output=True, text=True)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr
    r = subprocess.run([PY, "-c", "import dbus_next"], check=False, capture_output=True, text=True)
    assert r.returncode != 0


@pytest.fixture
def config(tmp_path: Path) -> Path:
    c = tmp_path / "guestfail.toml"
    c.write_text(f'[agent]\nstate_dir = "{tmp_path / "run"}"\n')
    return c


def test_check_config_status_and_release(config: Path) -> None:
    r = gf("--config", str(config), "check-config")
    assert r.returncode == 0 and r.stdout.startswith(f"{config}: ok"), r
    r = gf("--config", str(config), "status", "--json")
    assert r.returncode == 8 and '"schema": 1' in r.stdout and r.stderr == "", r
    r = gf("--config", str(config), "status")
    assert "the daemon is not running" in r.stdout and "Traceback" not in r.stderr, r
    r = gf("--config", str(config), "release", "--all")
    assert r.returncode == 0 and r.stderr == "", r


def test_commands_for_the_daemon_say_what_is_missing(config: Path) -> None:
    r = gf("--config", str(config), "switch", "ens11", "standby")
    assert r.returncode == 6
    assert r.stderr.strip() == (
        "guestfail: Switch needs the daemon over D-Bus, and no D-Bus library is installed"
    )


def test_the_daemon_runs_with_the_bond_backend(config: Path, netns: str, tmp_path: Path) -> None:
    """READY=1 with no D-Bus library, asked for the D-Bus API or not; one
    line says there is none; SIGTERM stops it cleanly."""
    for extra in (["--no-dbus"], []):
        path = str(tmp_path / f"notify-{len(extra)}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(120)
        p = subprocess.Popen(
            ["ip", "netns", "exec", netns, PY, "-m", "guestfail", "--config", str(config), "run", *extra],
            cwd=REPO,
            env={**os.environ, "NOTIFY_SOCKET": path},
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            messages = ""
            while "READY=1" not in messages and p.poll() is None:
                messages += sock.recv(4096).decode()
        finally:
            p.terminate()
            _, err = p.communicate(timeout=60)
            sock.close()
        assert p.returncode == 0, err
        assert "Traceback" not in err
        if not extra:
            assert "no D-Bus API: no D-Bus library (python3-dbus-fast) is installed" in err


def test_the_team_backend_says_it_needs_dbus(tmp_path: Path, netns: str) -> None:
    c = tmp_path / "team.toml"
    c.write_text(f'[agent]\nbackend = "team"\nstate_dir = "{tmp_path / "run"}"\n')
    r = gf("--config", str(c), "run", "--no-dbus", netns=netns)
    assert r.returncode == 6, r
    assert r.stderr.strip().endswith(
        "guestfail: agent.backend = team drives teamd over D-Bus, and no D-Bus library "
        "(python3-dbus-fast) is installed"
    ), r.stderr
