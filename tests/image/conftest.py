"""The `image` tier: Debian 12 and 13 guests booted by systemd from images the
lab builds (lab.image), with the project's .debs installed by apt, the
distribution's udev, journald, D-Bus, network stack and cloud-init.  Each test
is one boot that goes through several scenarios; a failing test gets the
boot's console, the journal and the guest's logs in its report, and a copy
under lab-runs/image/<test>/.

Every boot's timings go to lab-runs/image-timings.jsonl (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

import pytest

from lab import image
from lab.debs import Debs, build_debs
from lab.imagelab import ImageLab
from lab.topology import Topology

REPO = Path(__file__).resolve().parent.parent.parent
RUNS = REPO / "lab-runs"
TIMINGS = RUNS / "image-timings.jsonl"


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


@pytest.fixture(scope="session")
def debs() -> Debs:
    return build_debs()


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
        net = lab.net_report()  # first: what the failure left, before anything else runs
        lab.save_journal()
        kept = lab.keep(RUNS / "image" / re.sub(r"[^\w.-]+", "_", item.name))
        rep.sections.append((f"{b.name}: files kept", str(kept)))
        rep.sections.append((f"{b.name}: console (tail)", lab.console_tail(60)))
        journal = kept / "journal.txt"
        text = journal.read_text(errors="replace") if journal.exists() else lab.journal_console_tail(200)
        rep.sections.append((f"{b.name}: journal (tail)", "\n".join(text.splitlines()[-250:])))
        rep.sections.append((f"{b.name}: network", net))
        with contextlib.suppress(OSError):
            (kept / "network.txt").write_text(net + "\n")


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
