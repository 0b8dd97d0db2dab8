"""The `image` tier: Debian 12 and 13 guests booted by systemd from images the
lab builds (lab.image), with the project's .debs installed by apt, the
distribution's udev, journald, D-Bus, network stack and cloud-init.  Each test
is one boot that goes through several scenarios; a failing test gets the
boot's console, the journal and the guest's logs in its report, and a copy
under lab-runs/image/<test>/.

Every boot's timings go to lab-runs/image-timings.jsonl (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

import pytest

from lab import image
from lab.imagelab import ImageLab
from lab.topology import Topology

REPO = Path(__file__).resolve().parent.parent.parent
RUNS = REPO / "lab-runs"
TIMINGS = RUNS / "image-timings.jsonl"
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def lab_missing() -> Optional[str]:
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("mmdebstrap", "mmdebstrap")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt install {pkg})"
    if shutil.which("dpkg-buildpackage") is None:
        return "dpkg-buildpackage is not installed (apt install dpkg-dev)"
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, mount namespaces)"
    return None


def _interrupt(signum: int, _frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = lab_missing()
    for item in items:
        if "tests/image/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.image)
            if why and not os.environ.get("GUESTFAIL_REQUIRE_LAB"):
                item.add_marker(pytest.mark.skip(reason=f"no image lab: {why}"))


# ------------------------------------------------------------------ packages


@dataclass(frozen=True)
class Debs:
    """The packages of this tree, and the same rebuilt with a higher version
    (an upgrade for the package-life test)."""

    version: str
    current: tuple[Path, ...]  # guestfail, guestfail-cloud-init
    upgrade: tuple[Path, ...]
    upgrade_version: str

    @property
    def all(self) -> list[Path]:
        return [*self.current, *self.upgrade]

    def names(self, debs: tuple[Path, ...]) -> list[str]:
        return [d.name for d in debs]


def _bump(deb: Path, version: str, new: str, out: Path) -> Path:
    """The same package with Version (and the exact dependency between the
    two packages) raised to `new`: what a newer build looks like to dpkg."""
    tree = out / f"{deb.stem}-tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, env=SYSTEM_ENV)
    control = tree / "DEBIAN" / "control"
    text = control.read_text()
    text = re.sub(rf"^Version: {re.escape(version)}$", f"Version: {new}", text, flags=re.MULTILINE)
    text = text.replace(f"guestfail (= {version})", f"guestfail (= {new})")
    control.write_text(text)
    name = deb.name.replace(f"_{version}_", f"_{new}_")
    dest = out / name
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "-b", str(tree), str(dest)],
        check=True,
        capture_output=True,
        env={**SYSTEM_ENV, "SOURCE_DATE_EPOCH": "1800000000"},
    )
    shutil.rmtree(tree)
    return dest


@pytest.fixture(scope="session")
def debs() -> Debs:
    return make_debs()


def make_debs() -> Debs:
    """This tree's packages (packaging/build-deb) and their upgrade builds."""
    proc = subprocess.run(
        [str(REPO / "packaging" / "build-deb")], capture_output=True, text=True, check=False, env=SYSTEM_ENV
    )
    if proc.returncode != 0:
        raise RuntimeError(f"packaging/build-deb failed:\n{proc.stderr[-3000:]}")
    built = [Path(p) for p in proc.stdout.split() if p.endswith(".deb")]
    version = re.match(r"guestfail_([^_]+)_all\.deb", next(p.name for p in built if "cloud" not in p.name))
    assert version is not None
    v = version.group(1)
    current = tuple(sorted(built))
    out = REPO / "packaging" / "out" / "upgrade"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    nv = f"{v}+lab1"
    upgrade = tuple(_bump(d, v, nv, out) for d in current)
    return Debs(v, current, upgrade, nv)


def build_image(debs: Debs, fl: image.Flavour) -> image.Image:
    img = image.build(fl, debs.all, install=debs.names(debs.current))
    record({"kind": "build", "flavour": fl.name, "seconds": img.seconds, "base_seconds": img.base_seconds})
    return img


# ------------------------------------------------------------------ records


def record(entry: dict[str, Any]) -> None:
    RUNS.mkdir(exist_ok=True)
    entry = {"t": time.strftime("%Y-%m-%dT%H:%M:%S"), **entry}
    with TIMINGS.open("a") as f:
        f.write(json.dumps(entry) + "\n")


# ------------------------------------------------------------------ boots


@dataclass
class Boot:
    """A booted image guest and what the test learnt along the way."""

    lab: ImageLab
    name: str
    t0: float
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        self.marks[what] = round(time.monotonic() - self.t0, 1)


_BOOTS = pytest.StashKey[list[Boot]]()
_FAILED = pytest.StashKey[bool]()
#: boots that live longer than one test (module-scoped fixtures): a failing
#: test of theirs gets their files too
SHARED: list[Boot] = []


def start(
    img: image.Image,
    topo: Topology,
    *,
    seed: Optional[Path] = None,
    before_start: Optional[Callable[[ImageLab], None]] = None,
) -> Boot:
    """Boot `img` and wait until systemd finished booting."""
    name = img.flavour.name
    lab = ImageLab(topo, img, name=name, seed=seed)
    b = Boot(lab, name, time.monotonic())
    try:
        if before_start is not None:
            before_start(lab)  # e.g. the DHCP server, before the guest asks
        lab.start()
        b.mark("helper")
        state = lab.wait_booted()
        b.mark("booted")
        b.marks["degraded"] = 0.0 if state == "running" else 1.0
    except BaseException:
        lab.save_journal()
        lab.keep(RUNS / "image" / f"boot-failed-{name}")
        lab.close()
        raise
    return b


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.when != "call":
        return
    item.stash[_FAILED] = rep.failed
    if not rep.failed:
        return
    for b in [*item.stash.get(_BOOTS, []), *SHARED]:
        lab = b.lab
        lab.save_journal()
        kept = lab.keep(RUNS / "image" / re.sub(r"[^\w.-]+", "_", item.name))
        rep.sections.append((f"{b.name}: files kept", str(kept)))
        rep.sections.append((f"{b.name}: console (tail)", lab.console_tail(60)))
        journal = kept / "journal.txt"
        text = journal.read_text(errors="replace") if journal.exists() else lab.journal_console_tail(200)
        rep.sections.append((f"{b.name}: journal (tail)", "\n".join(text.splitlines()[-250:])))


@pytest.fixture
def boot(request: pytest.FixtureRequest) -> Iterator[Callable[..., Boot]]:
    """boot(image, topology, seed=None, before_start=None) -> Boot, booted
    (systemd finished); always torn down, its files kept if the test failed."""
    boots: list[Boot] = []
    request.node.stash[_BOOTS] = boots

    def _boot(
        img: image.Image,
        topo: Topology,
        *,
        seed: Optional[Path] = None,
        before_start: Optional[Callable[[ImageLab], None]] = None,
    ) -> Boot:
        b = start(img, topo, seed=seed, before_start=before_start)
        boots.append(b)
        return b

    yield _boot
    for b in boots:
        record({"kind": "boot", "test": request.node.name, "flavour": b.name, "marks": b.marks})
        b.lab.close()
