"""The DEB and the RPMs: built with packaging/build-deb and packaging/build-rpm
(into packaging/out/), lintian clean, the right files in the right places,
the scriptlets that enable/start/stop the service and release the pairs,
and the unit accepted by systemd-analyze as installed.

"As installed" without installing: the package's files are laid over /usr
and /etc with read-only overlays in a private mount namespace, so
systemd-analyze (and the man it runs for Documentation=) sees exactly what
an installation would give, and the host is not changed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from guestfail import __version__
from tests.integration.conftest import (
    PACKAGING,
    need_overlay,
    need_tool,
    run,
    system_env,
)

DEB_FILES = [
    "/usr/bin/guestfail",
    "/usr/bin/guestfail-probe",
    "/usr/lib/python3/dist-packages/guestfail/probe/cli.py",
    "/usr/share/man/man8/guestfail-probe.8.gz",
    "/usr/lib/python3/dist-packages/guestfail/__init__.py",
    "/usr/lib/python3/dist-packages/guestfail/cli/commands.py",
    "/usr/lib/python3/dist-packages/guestfail/agent/daemon.py",
    f"/usr/lib/python3/dist-packages/guestfail-{__version__}.dist-info/entry_points.txt",
    "/lib/systemd/system/guestfail.service",
    "/lib/udev/rules.d/81-guestfail.rules",
    "/lib/systemd/network/05-guestfail-members.network",
    "/usr/share/dbus-1/system.d/io.github.guestfail1.conf",
    "/usr/share/man/man8/guestfail.8.gz",
    "/usr/share/doc/guestfail/examples/guestfail.toml",
    "/usr/share/doc/guestfail/copyright",
    "/usr/share/bash-completion/completions/guestfail",
    "/usr/share/zsh/vendor-completions/_guestfail",
]

# guestfail-cloud-init: the module and the unit that runs it; no file in
# /etc/cloud (cloud-init's module lists stay the image's own)
DEB_CLOUD_INIT_FILES = [
    "/usr/lib/python3/dist-packages/cloudinit/config/cc_guestfail.py",
    "/lib/systemd/system/guestfail-cloud-init.service",
    "/usr/share/doc/guestfail-cloud-init/copyright",
]

# the packaged copy of each file in the tree
SHIPPED = {
    "packaging/systemd/guestfail.service": "guestfail.service",
    "udev-rules/81-guestfail.rules": "81-guestfail.rules",
    "packaging/networkd/05-guestfail-members.network": "05-guestfail-members.network",
    "packaging/dbus/io.github.guestfail1.conf": "io.github.guestfail1.conf",
    "packaging/examples/guestfail.toml": "guestfail.toml",
    "packaging/completions/guestfail": "completions/guestfail",
    "packaging/completions/_guestfail": "_guestfail",
}
SHIPPED_CLOUD_INIT = {
    "packaging/cloud-init/cc_guestfail.py": "cc_guestfail.py",
    "packaging/cloud-init/guestfail-cloud-init.service": "guestfail-cloud-init.service",
}

# ---------------------------------------------------------------- versions (fast)


def test_versions_agree() -> None:
    changelog = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"^guestfail \({re.escape(__version__)}\) ", changelog), changelog
    spec = (PACKAGING / "rpm" / "guestfail.spec").read_text()
    assert re.search(rf"^Version:\s+{re.escape(__version__)}$", spec, re.MULTILINE)
    assert re.search(rf"^\* .* - {re.escape(__version__)}-1$", spec, re.MULTILINE), "the spec's %changelog"


def test_lintian_overrides_give_their_reasons() -> None:
    for f in (PACKAGING / "debian").glob("*lintian-overrides"):
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip() and not line.startswith("#"):
                assert i > 0 and lines[i - 1].startswith("#"), f"{f.name}: {line!r} has no reason above it"


# ---------------------------------------------------------------- DEB


@dataclass
class Built:
    files: list[Path]

    def one(self, pattern: str) -> Path:
        found = [f for f in self.files if re.fullmatch(pattern, f.name)]
        assert len(found) == 1, (pattern, self.files)
        return found[0]


@pytest.fixture(scope="module")
def debs() -> Built:
    need_tool("dpkg-buildpackage", "dpkg-dev")
    need_tool("dh", "debhelper")
    need_tool("pybuild", "dh-python")
    proc = run([str(PACKAGING / "build-deb")], env=system_env())
    return Built([Path(x) for x in proc.stdout.split()])


@pytest.fixture(scope="module")
def deb(debs: Built) -> Path:
    return debs.one(rf"guestfail_{re.escape(__version__)}_all\.deb")


@pytest.fixture(scope="module")
def deb_cloud_init(debs: Built) -> Path:
    return debs.one(rf"guestfail-cloud-init_{re.escape(__version__)}_all\.deb")


@pytest.mark.packaging
def test_deb_is_lintian_clean(deb: Path, deb_cloud_init: Path) -> None:
    lintian = need_tool("lintian", "lintian")
    proc = run(
        [lintian, "--fail-on", "error,warning", "--display-info", str(deb), str(deb_cloud_init)],
        env=system_env(),
        check=False,
    )
    tags = [x for x in proc.stdout.splitlines() if re.match(r"^[EW]: ", x)]
    assert tags == []
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.packaging
def test_deb_contents(deb: Path, tmp_path: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(deb)], env=system_env()).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    missing = [f for f in DEB_FILES if f not in paths]
    assert missing == []
    root = tmp_path / "root"
    run(["dpkg-deb", "-x", str(deb), str(root)], env=system_env())
    # the packaged copies are the files of this tree
    for src, name in SHIPPED.items():
        (dest,) = [p for p in DEB_FILES if p.endswith("/" + name)]
        assert (root / dest.lstrip("/")).read_bytes() == (PACKAGING.parent / src).read_bytes(), src
    assert (root / "usr/bin/guestfail").stat().st_mode & 0o111
    assert (root / "usr/bin/guestfail").read_text().startswith("#!/usr/bin/python3\n")
    assert not [p for p in paths if "cloud" in p], "cloud-init's files belong to guestfail-cloud-init"


@pytest.mark.packaging
def test_deb_cloud_init_package(deb_cloud_init: Path, tmp_path: Path) -> None:
    listing = run(["dpkg-deb", "-c", str(deb_cloud_init)], env=system_env()).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    assert [f for f in DEB_CLOUD_INIT_FILES if f not in paths] == []
    assert not [p for p in paths if p.startswith("/etc/")], "no conffile: the module lists stay the image's"
    root = tmp_path / "root"
    run(["dpkg-deb", "-x", str(deb_cloud_init), str(root)], env=system_env())
    for src, name in SHIPPED_CLOUD_INIT.items():
        (dest,) = [p for p in DEB_CLOUD_INIT_FILES if p.endswith("/" + name)]
        assert (root / dest.lstrip("/")).read_bytes() == (PACKAGING.parent / src).read_bytes(), src
    fields = run(["dpkg-deb", "-f", str(deb_cloud_init)], env=system_env()).stdout
    field = dict(re.findall(r"^(\S+): (.*(?:\n .*)*)", fields, re.MULTILINE))
    depends = [d.strip() for d in field["Depends"].split(",")]
    assert f"guestfail (= {__version__})" in depends and "cloud-init" in depends, depends
    control = tmp_path / "DEBIAN"
    run(["dpkg-deb", "-e", str(deb_cloud_init), str(control)], env=system_env())
    postinst = (control / "postinst").read_text()
    # enabled (cloud-init.target wants it), never started by the installation
    assert "deb-systemd-helper enable 'guestfail-cloud-init.service'" in postinst
    assert "deb-systemd-invoke" not in postinst


@pytest.mark.packaging
def test_deb_control(deb: Path) -> None:
    fields = run(["dpkg-deb", "-f", str(deb)], env=system_env()).stdout
    field = dict(re.findall(r"^(\S+): (.*(?:\n .*)*)", fields, re.MULTILINE))
    assert field["Package"] == "guestfail"
    assert field["Version"] == __version__
    assert field["Architecture"] == "all"
    depends = [d.strip() for d in field["Depends"].split(",")]
    pyroute2 = f"python3-pyroute2 (>= {pyproject_minimums()['pyroute2']})"
    for dep in (pyroute2, "python3-pyudev", "python3-dbus-fast", "python3-tenacity"):
        assert dep in depends, field["Depends"]
    assert "python3:any" in depends  # ${python3:Depends}
    assert "libteam-utils" in field["Suggests"]


@pytest.mark.packaging
def test_deb_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    control = tmp_path / "DEBIAN"
    run(["dpkg-deb", "-e", str(deb), str(control)], env=system_env())
    postinst = (control / "postinst").read_text()
    prerm = (control / "prerm").read_text()
    postrm = (control / "postrm").read_text()
    # enabled and started on install (restarted on upgrade)
    assert "deb-systemd-helper enable 'guestfail.service'" in postinst
    assert "deb-systemd-invoke $_dh_action 'guestfail.service'" in postinst
    assert "_dh_action=start" in postinst
    # stopped on removal, then the pairs are released
    stop_at = prerm.index("deb-systemd-invoke stop 'guestfail.service'")
    release_at = prerm.index("guestfail release --all")
    assert stop_at < release_at
    assert "deb-systemd-helper purge 'guestfail.service'" in postrm
    for script in ("postinst", "prerm", "postrm"):
        run(["sh", "-n", str(control / script)])
    assert not (control / "conffiles").exists()
    # 0.1.0's cloud.cfg.d drop-in (it replaced the image's module list) goes on upgrade
    preinst = (control / "preinst").read_text()
    assert "rm_conffile /etc/cloud/cloud.cfg.d/90_guestfail.cfg 0.1.1" in preinst


def stage_root(tree: Path) -> Path:
    """The package's files as a merged-/usr system has them: /lib is /usr/lib."""
    if (tree / "lib").is_dir():
        shutil.copytree(tree / "lib", tree / "usr" / "lib", dirs_exist_ok=True, symlinks=True)
        shutil.rmtree(tree / "lib")
    return tree


OVERLAY_RUN = r"""
import os, subprocess, sys
stage, argv = sys.argv[1], sys.argv[2:]
for top in ("usr", "etc"):
    lower = os.path.join(stage, top)
    if os.path.isdir(lower):
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}:/{top}", f"/{top}"],
                       check=True)
os.execvp(argv[0], argv)
"""


def as_installed(stage: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` with the package's files laid over /usr and /etc, in a
    private mount namespace."""
    need_overlay()
    cmd = ["unshare", "--mount", "--propagation", "private", "--"]
    return run([*cmd, sys.executable, "-c", OVERLAY_RUN, str(stage), *argv], env=system_env(), check=False)


@pytest.fixture
def deb_root(deb: Path, deb_cloud_init: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in (deb, deb_cloud_init):
        run(["dpkg-deb", "-x", str(d), str(root)], env=system_env())
    return stage_root(root)


@pytest.mark.packaging
def test_deb_unit_verifies_as_installed(deb_root: Path) -> None:
    need_tool("systemd-analyze", "systemd")
    proc = as_installed(deb_root, "systemd-analyze", "verify", "guestfail.service")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    # with cloud-init's own units (installed here): no ordering cycle, the
    # module's unit verifies too
    if Path("/lib/systemd/system/cloud-init.service").exists():
        units = ["guestfail.service", "guestfail-cloud-init.service", "cloud-init.target"]
        proc = as_installed(deb_root, "systemd-analyze", "verify", *units)
        assert proc.returncode == 0, proc.stderr
        assert "cycle" not in proc.stderr and "deleted to break" not in proc.stderr, proc.stderr


@pytest.mark.packaging
def test_systemd_analyze_would_catch_a_broken_unit(deb_root: Path) -> None:
    """The harness above can fail: the same unit with a missing program does."""
    need_tool("systemd-analyze", "systemd")
    unit = deb_root / "usr/lib/systemd/system/guestfail.service"
    unit.write_text(
        unit.read_text().replace("ExecStart=/usr/bin/guestfail run", "ExecStart=/usr/bin/gf-nope run")
    )
    proc = as_installed(deb_root, "systemd-analyze", "verify", "guestfail.service")
    assert proc.returncode != 0
    assert "/usr/bin/gf-nope" in proc.stderr


@pytest.mark.packaging
def test_deb_cloud_init_module_is_found_where_installed(deb_root: Path) -> None:
    """cloud-init imports config modules from cloudinit.config: the packaged
    module is found and accepted there."""
    if not Path("/usr/lib/python3/dist-packages/cloudinit").is_dir():
        pytest.skip("cloud-init is not installed")
    code = (
        "import importlib.util\n"
        "from cloudinit import importer\n"
        "from cloudinit.config.modules import validate_module\n"
        "found, _ = importer.find_module('cc_guestfail', ['cloudinit.config'], ['handle'])\n"
        "mod = importer.import_module(found[0])\n"
        "validate_module(mod, 'guestfail')\n"
        "print(mod.__file__)\n"
    )
    proc = as_installed(deb_root, "/usr/bin/python3", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "/usr/lib/python3/dist-packages/cloudinit/config/cc_guestfail.py"


# ---------------------------------------------------------------- RPM


@pytest.fixture(scope="module")
def rpms() -> Built:
    need_tool("rpmbuild", "rpm")
    proc = run([str(PACKAGING / "build-rpm")], env=system_env())
    return Built([Path(x) for x in proc.stdout.split()])


RPM_FILES = {
    "guestfail": [
        "/usr/bin/guestfail",
        "/usr/lib/python3.*/site-packages/guestfail/__init__.py",
        "/usr/lib/python3.*/site-packages/guestfail/cli/commands.py",
        f"/usr/lib/python3.*/site-packages/guestfail-{re.escape(__version__)}.dist-info/METADATA",
        "/usr/lib/systemd/system/guestfail.service",
        "/usr/lib/udev/rules.d/81-guestfail.rules",
        "/usr/lib/systemd/network/05-guestfail-members.network",
        "/usr/share/dbus-1/system.d/io.github.guestfail1.conf",
        r"/usr/share/man/man8/guestfail\.8(\.gz)?",
        "/usr/bin/guestfail-probe",
        "/usr/lib/python3.*/site-packages/guestfail/probe/cli.py",
        r"/usr/share/man/man8/guestfail-probe\.8(\.gz)?",
        "/usr/share/doc/guestfail/examples/guestfail.toml",
        "/usr/share/bash-completion/completions/guestfail",
        "/usr/share/zsh/site-functions/_guestfail",
        "/usr/share/licenses/guestfail[^/]*/LICENSE",
    ],
    "guestfail-cloud-init": [
        "/usr/lib/python3.*/site-packages/cloudinit/config/cc_guestfail.py",
        "/usr/lib/python3.*/site-packages/cloudinit/config/__pycache__/cc_guestfail.cpython-.*.pyc",
        "/usr/lib/systemd/system/guestfail-cloud-init.service",
    ],
}


def rpm_query(path: Path, *args: str) -> str:
    return run(["rpm", "-qp", *args, str(path)], env=system_env()).stdout


@pytest.mark.packaging
@pytest.mark.parametrize("name", sorted(RPM_FILES))
def test_rpm_contents(rpms: Built, name: str) -> None:
    rpm = rpms.one(rf"{re.escape(name)}-{re.escape(__version__)}-1[^-]*\.noarch\.rpm")
    assert rpm_query(rpm, "--qf", "%{ARCH}") == "noarch"
    files = rpm_query(rpm, "-l").split()
    missing = [p for p in RPM_FILES[name] if not any(re.fullmatch(p, f) for f in files)]
    assert missing == [], files


@pytest.mark.packaging
def test_rpm_requires_and_scriptlets(rpms: Built) -> None:
    rpm = rpms.one(rf"guestfail-{re.escape(__version__)}-1[^-]*\.noarch\.rpm")
    requires = rpm_query(rpm, "--requires").splitlines()
    # rpm generates the Python dependencies from the wheel (pyproject.toml's
    # minimums); the spec does not repeat them
    for name, version in pyproject_minimums().items():
        minimum = re.sub(r"(\.0)+$", "", version)  # rpm writes 0.22.0 as 0.22
        assert any(
            re.fullmatch(rf"python3\.\d+dist\({name}\) >= {re.escape(minimum)}", r) for r in requires
        ), (
            name,
            requires,
        )
    assert not [r for r in requires if r.startswith("python3-")], requires
    scripts = rpm_query(rpm, "--scripts")
    post = scripts.split("preuninstall scriptlet")[0]
    preun = scripts.split("preuninstall scriptlet")[1].split("postuninstall scriptlet")[0]
    postun = scripts.split("postuninstall scriptlet")[1]
    # %systemd_post: presets on first install; %systemd_preun: disable and
    # stop on removal, then release; %systemd_postun_with_restart: restart
    # after an upgrade.  (Fedora's macros, or the spec's equivalents.)
    assert re.search(r"preset .*guestfail\.service|install-system-units .*guestfail\.service", post), post
    assert re.search(r"disable --now .*guestfail\.service|stop .*guestfail\.service", preun), preun
    assert preun.index("guestfail.service") < preun.index("guestfail release --all"), preun
    assert re.search(r"try-restart .*guestfail\.service|mark-restart-system-units .*guestfail", postun)
    for text in (post, preun, postun):
        body = text.split("\n", 1)[1]
        run(["sh", "-n", "/dev/stdin"], input=body)
    cloud = rpms.one(rf"guestfail-cloud-init-{re.escape(__version__)}-1[^-]*\.noarch\.rpm")
    cloud_requires = rpm_query(cloud, "--requires").splitlines()
    assert "cloud-init" in cloud_requires
    assert any(r.startswith("guestfail = ") for r in cloud_requires)


def pyproject_minimums() -> dict[str, str]:
    """{name: minimum} of pyproject.toml's dependencies without a marker."""
    text = (PACKAGING.parent / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL)
    assert deps
    return dict(re.findall(r'^\s+"([\w.-]+)>=([\w.]+)",$', deps.group(1), re.MULTILINE))


@pytest.mark.packaging
def test_rpm_spec_url_and_source() -> None:
    spec = (PACKAGING / "rpm" / "guestfail.spec").read_text()
    url = re.search(r"^URL:\s+(\S+)$", spec, re.MULTILINE)
    assert url and url.group(1).startswith("https://")
    assert re.search(
        r"^Source0:\s+%\{url\}/archive/v%\{version\}/%\{name\}-%\{version\}\.tar\.gz$", spec, re.MULTILINE
    )
    assert re.search(r"^%pyproject_check_import$", spec, re.MULTILINE)


@pytest.mark.packaging
def test_rpms_are_rpmlint_clean(rpms: Built) -> None:
    """rpmlint over the spec and every RPM finds nothing; what Debian's
    generic rpmlint defaults flag and a Fedora build would not is filtered,
    each with its reason, in packaging/rpm/rpmlint.toml."""
    rpmlint = need_tool("rpmlint", "rpmlint")
    spec = PACKAGING / "rpm" / "guestfail.spec"
    proc = run(
        [rpmlint, "-c", str(PACKAGING / "rpm" / "rpmlint.toml"), str(spec), *map(str, rpms.files)],
        env=system_env(),
        check=False,
    )
    findings = [x for x in proc.stdout.splitlines() if re.search(r": [EW]: ", x)]
    assert findings == []
    assert re.search(
        rf"{len(rpms.files)} packages and 1 specfiles checked; 0 errors, 0 warnings", proc.stdout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def rpm_root(rpms: Built, tmp_path: Path) -> Iterator[Path]:
    need_tool("rpm2cpio", "rpm2cpio")
    need_tool("cpio", "cpio")
    root = tmp_path / "root"
    root.mkdir()
    for rpm in rpms.files:
        if rpm.name.endswith(".noarch.rpm"):
            payload = subprocess.run(["rpm2cpio", str(rpm)], capture_output=True, check=True).stdout
            subprocess.run(["cpio", "-idm", "--quiet"], input=payload, cwd=root, check=True)
    yield stage_root(root)


@pytest.mark.packaging
def test_rpm_unit_verifies_as_installed(rpm_root: Path) -> None:
    need_tool("systemd-analyze", "systemd")
    proc = as_installed(rpm_root, "systemd-analyze", "verify", "guestfail.service")
    assert proc.returncode == 0, proc.stderr
