"""Shared helpers for the integration tests: packaging (DEB, RPM), the D-Bus
policy against a real dbus-daemon, the man page and the cloud-init module.

They run real programs (dpkg-buildpackage, lintian, rpmbuild, dbus-daemon,
systemd-analyze, Debian's python3 with cloud-init); a test whose program is
missing is skipped and says which Debian package provides it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
#: Debian's python3: it sees cloud-init and the python3-* packages guestfail needs
DEBIAN_PYTHON = "/usr/bin/python3"
#: a PATH without virtualenvs or pyenv shims, for the distribution's tools
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

log = logging.getLogger("tests.integration")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds or installs the DEB/RPM packages (slow; needs Debian's build tools)"
    )


def system_env(**extra: str) -> dict[str, str]:
    """The environment for the distribution's tools: no virtualenv, no pyenv,
    no PYTHONPATH from the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION")
    }
    env["PATH"] = SYSTEM_PATH
    env.update(extra)
    return env


def run(argv: list[str], *, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a program, capture its output as text, log both."""
    log.info("run: %s", " ".join(argv))
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 900)
    proc: subprocess.CompletedProcess[str] = subprocess.run(argv, check=False, **kw)
    if proc.stdout:
        log.info("stdout:\n%s", proc.stdout)
    if proc.stderr:
        log.info("stderr:\n%s", proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def need_tool(name: str, package: str) -> str:
    """The path of a program, or skip the test naming the package to install."""
    path = shutil.which(name, path=SYSTEM_PATH)
    if path is None:
        pytest.skip(f"{name} is not installed (apt install {package})")
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


def need_overlay() -> None:
    """Skip unless this process may make a private mount namespace and mount
    overlayfs in it (root, and a kernel and container that allow it)."""
    need_root()
    need_tool("unshare", "util-linux")
    need_tool("mount", "mount")
    with tempfile.TemporaryDirectory() as d:
        lower1, lower2, target = (Path(d) / n for n in ("l1", "l2", "t"))
        for p in (lower1, lower2, target):
            p.mkdir()
        mount = ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower1}:{lower2}", str(target)]
        proc = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", *mount],
            capture_output=True,
            text=True,
            env=system_env(),
            check=False,
        )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount overlayfs in a private mount namespace: {proc.stderr.strip()}")


def need_debian_python(*modules: str) -> None:
    """Skip unless Debian's python3 can import `modules`."""
    if not Path(DEBIAN_PYTHON).exists():
        pytest.skip(f"{DEBIAN_PYTHON} is missing")
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
    proc = subprocess.run(
        [DEBIAN_PYTHON, "-c", code, *modules], capture_output=True, text=True, env=system_env(), check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} cannot import {', '.join(modules)}: {proc.stderr.strip()[-200:]}")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def guestfail_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The CLI from this tree, with the interpreter running the tests."""
    return run([sys.executable, "-m", "guestfail", *args], cwd=REPO, **kw)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of the test's own, deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    name = f"gf-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
