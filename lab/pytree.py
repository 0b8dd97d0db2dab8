"""What a lab guest's Python imports for guestfail, copied into the guest's RAM.

The lab's guest sees this machine's root over 9p, mounted by virtme-ng's
initramfs without a cache (`sync,dirsync`, no `cache=`; the kernel command
line cannot change it).  Every `stat`, `open` and `read` an import makes is a
round trip to QEMU, and a TCG guest makes them slowly: measured with
scratch runs of `python -c "import guestfail.agent.daemon"` in a guest,
12-18 s, of which the same imports' CPU time is about 3 s (the host does
them in 0.18 s; a CPU-bound loop runs about 20 times slower in the guest);
`import asyncio` alone took 3.4-5.4 s.  A vm test starts Python dozens of
times (the crash test about 50), so most of the vm tier's time was spent
walking 9p.

So the lab ships, once per guest, an uncompressed tar of what guestfail
imports: this checkout's `guestfail` package, its dependencies' packages
whole (pyroute2 and others import submodules lazily) and the standard
library's modules and packages it imports (a package whole, so a submodule
imported later is there too), with their bytecode and extension modules.
The guest unpacks it into a tmpfs and puts it first on PYTHONPATH
(`lab.agent.agent_argv`).  The code that runs is the same bytes: the
source files and the .pyc compiled from them, mtimes kept so the bytecode
stays valid.  A module the tree lacks is still found on the shared root,
more slowly.  GUESTFAIL_LAB_PYTREE=0 turns it off (every import over 9p).
"""

from __future__ import annotations

import atexit
import compileall
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: where the guest unpacks the tree (a tmpfs in the guest)
GUEST_DIR = "/run/guestfail-lab-python"
#: PYTHONPATH entries in the guest, in order: the checkout, dependencies, stdlib
GUEST_PATH = [f"{GUEST_DIR}/co", f"{GUEST_DIR}/sp", f"{GUEST_DIR}/lib"]

#: what guestfail's commands import (each a process entry point or a
#: module loaded on demand)
ENTRY_MODULES = [
    "guestfail.cli.commands",
    "guestfail.cli.status",
    "guestfail.agent.daemon",
    "guestfail.agent.server",
    "guestfail.system.dbus",
    "guestfail.backends.team",
    "guestfail.integrations.nmclient",
    "guestfail.probe.cli",
    "pyroute2.iproute.linux",  # loaded when the first IPRoute is made
    "pyroute2.netlink.rtnl.tcmsg",
    "concurrent.futures.thread",
    "asyncio.unix_events",
]

#: dependencies copied whole (top-level package or module names)
DEPENDENCIES = ["pyroute2", "pyudev", "tenacity", "dbus_fast", "prometheus_client", "typing_extensions"]

_RECORD = r"""
import importlib, json, sys
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except ImportError:
        pass
print(json.dumps(sorted({f for mod in list(sys.modules.values())
                         if (f := getattr(mod, "__file__", None))})))
"""

_built: dict[str, Path] = {}


def enabled() -> bool:
    return os.environ.get("GUESTFAIL_LAB_PYTREE", "1") != "0"


def _imported_files() -> list[str]:
    """The files of every module guestfail's entry points import, recorded
    by importing them in a fresh interpreter here."""
    out = subprocess.run(
        [sys.executable, "-c", _RECORD, *ENTRY_MODULES],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files: list[str] = json.loads(out)
    return files


def _add_tree(tar: tarfile.TarFile, src: Path, arcname: str) -> None:
    """A package directory with its sources, bytecode (this interpreter's
    cache tag, optimization level 0) and extension modules."""
    tag = sys.implementation.cache_tag
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if d not in ("tests", "test")]
        rel = os.path.relpath(dirpath, src)
        for f in filenames:
            if f.endswith((".py", ".so")) or (
                os.path.basename(dirpath) == "__pycache__" and f.endswith(f".{tag}.pyc")
            ):
                path = os.path.join(dirpath, f)
                tar.add(path, os.path.normpath(os.path.join(arcname, rel, f)), recursive=False)


def _add_module(tar: tarfile.TarFile, path: Path, arcdir: str) -> None:
    tar.add(str(path), f"{arcdir}/{path.name}", recursive=False)
    if path.suffix == ".py":
        from importlib.util import cache_from_source

        pyc = Path(cache_from_source(str(path)))
        if pyc.exists():
            tar.add(str(pyc), f"{arcdir}/__pycache__/{pyc.name}", recursive=False)


def build() -> Path:
    """The tar (built once per process, in a temporary directory)."""
    if "tar" in _built and _built["tar"].exists():
        return _built["tar"]
    for pkg in ("guestfail",):
        compileall.compile_dir(str(REPO / pkg), quiet=1)
    paths = sysconfig.get_paths()
    stdlib, platstdlib = Path(paths["stdlib"]), Path(paths["platstdlib"])
    dynload = Path(stdlib, "lib-dynload")
    site = Path(paths["purelib"])
    tmp = tempfile.mkdtemp(prefix="guestfail-pytree-")
    atexit.register(shutil.rmtree, tmp, True)
    out = Path(tmp) / "pytree.tar"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, REPO / "guestfail", "co/guestfail")
        for dep in DEPENDENCIES:
            if (site / dep).is_dir():
                _add_tree(tar, site / dep, f"sp/{dep}")
            elif (site / f"{dep}.py").exists():
                _add_module(tar, site / f"{dep}.py", "sp")
        seen: set[str] = set()
        for f in _imported_files():
            p = Path(f)
            for root in (dynload, stdlib, platstdlib):
                try:
                    rel = p.relative_to(root)
                except ValueError:
                    continue
                if root != dynload and rel.parts[0] in ("site-packages", "lib-dynload"):
                    continue
                top = rel.parts[0]
                if top in seen:
                    break
                seen.add(top)
                if len(rel.parts) > 1:  # a package: whole
                    _add_tree(tar, root / top, f"lib/{top}")
                else:
                    _add_module(tar, p, "lib")
                break
    _built["tar"] = out
    return out


def install(lab: object) -> None:
    """Unpack the tree into the guest's tmpfs (lab: a lab.vm.Lab)."""
    from lab.vm import Lab

    assert isinstance(lab, Lab)
    tar = build()
    local = lab.workdir / "pytree.tar"
    if not local.exists():
        try:
            os.link(tar, local)
        except OSError:
            shutil.copyfile(tar, local)
    lab.run("mkdir", "-p", GUEST_DIR)
    lab.run("tar", "-xf", lab.guest_path("pytree.tar"), "-C", GUEST_DIR, timeout=300)
