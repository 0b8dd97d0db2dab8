"""The licence metadata and the build: the sdist and wheel build without a
single warning both with Debian 12's setuptools 66 (what dpkg-buildpackage
and the RPM build use here) and with setuptools >= 77 (PEP 639; the test
venv's), and both carry the licence (GPL-2.0-or-later) and the LICENSE file.

setuptools 66 refuses `project.license` as a string and calls
[tool.setuptools] beta; >= 77 deprecates the table form: see setup.cfg.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from guestfail import __version__
from tests.integration.conftest import DEBIAN_PYTHON, PACKAGING, REPO, run, system_env


def _setuptools_version(python: str, env: dict[str, str]) -> tuple[int, ...]:
    proc = run(
        [python, "-c", "import build, setuptools; print(setuptools.__version__)"], env=env, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"{python} has no setuptools or build: {proc.stderr.strip()[-200:]}")
    return tuple(int(x) for x in re.findall(r"\d+", proc.stdout)[:2])


def _build(python: str, env: dict[str, str], tmp: Path) -> tuple[str, Path, Path]:
    """sdist and wheel of this tree (as the packages' builds see it: the
    tarball of make-tarball), built without isolation by `python`."""
    tarball = run([str(PACKAGING / "make-tarball"), str(tmp)]).stdout.strip()
    with tarfile.open(tarball) as t:
        t.extractall(tmp / "src")
    src = tmp / "src" / f"guestfail-{__version__}"
    out = tmp / "dist"
    proc = run([python, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], env=env)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return proc.stdout + proc.stderr, sdist, wheel


def _check(log: str, sdist: Path, wheel: Path) -> None:
    noise = [x for x in log.splitlines() if re.search(r"\bwarning\b|deprecat", x, re.IGNORECASE)]
    assert noise == [], "the build warned:\n" + "\n".join(noise)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"guestfail-{__version__}.dist-info/METADATA").decode()
        licence = [
            n
            for n in names
            if re.fullmatch(rf"guestfail-{re.escape(__version__)}\.dist-info/(licenses/)?LICENSE", n)
        ]
        assert licence, names
        assert z.read(licence[0]) == (REPO / "LICENSE").read_bytes()
    assert re.search(r"^License: GPL-2\.0-or-later$", meta, re.MULTILINE), meta
    assert re.search(r"^License-File: LICENSE$", meta, re.MULTILINE), meta
    assert re.search(rf"^Version: {re.escape(__version__)}$", meta, re.MULTILINE)
    with tarfile.open(sdist) as t:
        members = t.getnames()
    assert f"guestfail-{__version__}/LICENSE" in members
    assert f"guestfail-{__version__}/setup.cfg" in members


def test_licence_file_is_the_gpl_2() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    copyright_ = (PACKAGING / "debian" / "copyright").read_text()
    assert re.search(r"^License: GPL-2\.0-or-later$", copyright_, re.MULTILINE)
    spec = (PACKAGING / "rpm" / "guestfail.spec").read_text()
    assert re.search(r"^License:\s+GPL-2\.0-or-later$", spec, re.MULTILINE)
    assert re.search(r"^%license LICENSE$", spec, re.MULTILINE)


@pytest.mark.packaging
def test_builds_without_warnings_with_debians_setuptools_66(tmp_path: Path) -> None:
    env = system_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # distutils would say it skips byte-compiling
    version = _setuptools_version(DEBIAN_PYTHON, env)
    if version >= (77,):
        pytest.skip(f"Debian's setuptools is {version}: the old-setuptools case needs < 77 (Debian 12)")
    _check(*_build(DEBIAN_PYTHON, env, tmp_path))


@pytest.mark.packaging
def test_builds_without_warnings_with_setuptools_77_or_later(tmp_path: Path) -> None:
    env = system_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    python = sys.executable
    version = _setuptools_version(python, env)
    assert version >= (77,), f"the test venv should have setuptools >= 77 (pyproject [test]), not {version}"
    _check(*_build(python, env, tmp_path))


def test_pyproject_leaves_licence_version_and_packages_to_setup_cfg() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version", "license"\]$', text, re.MULTILINE)
    assert "[tool.setuptools" not in text, "setuptools 66 calls [tool.setuptools] beta (a warning)"
    assert not re.search(r"^license\s*=", text, re.MULTILINE)
    cfg = (REPO / "setup.cfg").read_text()
    assert "license = GPL-2.0-or-later" in cfg and "include = guestfail*" in cfg


def test_the_minimum_versions_are_the_oldest_tested() -> None:
    """pyproject.toml's minimums are exactly the versions .ci/test runs the
    unit and netlink tests with (.ci/oldest-deps.txt)."""
    text = (REPO / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert deps
    minimums = dict(re.findall(r'^\s+"([\w.-]+)>=([\w.]+)[";]', deps.group(1), re.MULTILINE))
    extras = dict(
        re.findall(
            r'"([\w.-]+)>=([\w.]+)"', text.split("[project.optional-dependencies]")[1].split("test = ")[0]
        )
    )
    minimums.update(extras)
    oldest = dict(
        re.findall(r"^([\w.-]+)==([\w.]+)$", (REPO / ".ci" / "oldest-deps.txt").read_text(), re.MULTILINE)
    )
    assert {"pyroute2", "pyudev", "tenacity", "dbus-fast", "tomli", "prometheus-client"} <= set(minimums)
    assert minimums == oldest
