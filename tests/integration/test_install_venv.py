"""packaging/install-venv, the install for distributions whose own packages
are too old or missing (Ubuntu 22.04, RHEL 9 and 10): a real install with
Python 3.9 (RHEL 9's) from the wheelhouse .ci/setup filled with the pinned
versions (no network here), then an uninstall.

It runs in a private mount and network namespace: /opt, /usr/local and the
/etc directories it writes are fresh tmpfs there, so the host is not
changed, and `guestfail release --all` sees an empty network namespace."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from guestfail import __version__
from tests.integration.conftest import PACKAGING, REPO, need_root, need_tool, run, system_env

WHEELHOUSE = REPO / ".venv-wheelhouse-3.9"
WRITES = "/opt /usr/local /etc/systemd/system /etc/systemd/network /etc/udev/rules.d /etc/dbus-1/system.d"

SCRIPT = r"""
set -eu
for d in $WRITES; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
"$TOP/packaging/install-venv" --python "$PY" --wheelhouse "$WH" --no-reload
echo "== version"; /usr/local/bin/guestfail --version
echo "== python"; /opt/guestfail/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'
echo "== imports"
/opt/guestfail/bin/python -c 'import guestfail.system.dbus, guestfail.system.metrics
import guestfail.system.netlink, guestfail.system.udev
import pyroute2, pyudev, dbus_fast, tenacity, prometheus_client; print("ok")'
echo "== freeze"; /opt/guestfail/bin/pip freeze --all 2>/dev/null
echo "== check-config"
/usr/local/bin/guestfail --config /usr/local/share/doc/guestfail/examples/guestfail.toml check-config
echo "== unit"; grep '^ExecStart=' /etc/systemd/system/guestfail.service
systemd-analyze verify /etc/systemd/system/guestfail.service
echo "== files"; cat /opt/guestfail/installed-files
echo "== refused"
mkdir -p /opt/other && touch /opt/other/keep
"$TOP/packaging/install-venv" --python "$PY" --wheelhouse "$WH" --no-reload --prefix /opt/other 2>&1 \
    || echo "rc=$?"
echo "== uninstall"
"$TOP/packaging/install-venv" --uninstall --no-reload
echo "== left"
ls -A /opt /usr/local/bin /etc/systemd/system /etc/udev/rules.d /etc/dbus-1/system.d
"""


def sections(out: str) -> dict[str, str]:
    parts = re.split(r"^== (\w[\w-]*)\n", out, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.mark.packaging
def test_install_with_python_39_from_the_wheelhouse_and_uninstall(tmp_path: Path) -> None:
    need_root()
    need_tool("unshare", "util-linux")
    need_tool("systemd-analyze", "systemd")
    py39 = sorted(Path.home().glob(".pyenv/versions/3.9.*/bin/python"))
    if not py39 or not (WHEELHOUSE / "requirements.txt").exists():
        pytest.skip("no Python 3.9 from pyenv, or no wheelhouse (.ci/setup fills it)")
    # the wheelhouse's guestfail is from when .ci/setup ran: this tree's instead
    wheelhouse = tmp_path / "wheels"
    shutil.copytree(WHEELHOUSE, wheelhouse)
    for old in wheelhouse.glob("guestfail-*.whl"):
        old.unlink()
    env = system_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheelhouse), str(REPO)],
        env=env,
    )

    host_had_it = Path("/opt/guestfail").exists()
    env = system_env(TOP=str(REPO), PY=str(py39[-1]), WH=str(wheelhouse), WRITES=WRITES)
    proc = run(
        ["unshare", "--mount", "--net", "--propagation", "private", "--", "bash", "-c", SCRIPT], env=env
    )
    out = sections(proc.stdout)
    assert out["version"].strip() == f"guestfail {__version__}"
    assert out["python"].strip() == "3.9"
    assert out["imports"].strip() == "ok"
    pins = dict(
        re.findall(
            r"^([\w-]+)==([\w.]+)", (PACKAGING / "venv" / "requirements.txt").read_text(), re.MULTILINE
        )
    )
    frozen = {
        k.lower().replace("_", "-"): v
        for k, v in re.findall(r"^([\w.-]+)==(\S+)$", out["freeze"], re.MULTILINE)
    }
    for name, version in pins.items():
        assert frozen.get(name) == version, (name, frozen)
    assert out["check-config"].startswith("/usr/local/share/doc/guestfail/examples/guestfail.toml: ok")
    assert out["unit"].strip() == "ExecStart=/opt/guestfail/bin/guestfail run"
    files = out["files"].split()
    for f in (
        "/etc/systemd/system/guestfail.service",
        "/etc/udev/rules.d/81-guestfail.rules",
        "/etc/systemd/network/05-guestfail-members.network",
        "/etc/dbus-1/system.d/io.github.guestfail1.conf",
        "/usr/local/bin/guestfail",
        "/usr/local/share/man/man8/guestfail.8",
        "/usr/local/share/bash-completion/completions/guestfail",
        "/usr/local/share/zsh/site-functions/_guestfail",
    ):
        assert f in files
    assert "refusing to replace it" in out["refused"] and "rc=1" in out["refused"]
    assert "guestfail removed from /opt/guestfail" in out["uninstall"]
    left = out["left"].split()
    assert "guestfail" not in left and "guestfail.service" not in left and "81-guestfail.rules" not in left
    assert Path("/opt/guestfail").exists() == host_had_it  # the host's /opt was never touched
