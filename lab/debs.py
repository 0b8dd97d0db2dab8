"""The project's .debs for the lab's images: built from this tree with
packaging/build-deb, and the same packages with a higher version (an upgrade,
as a newer build looks to dpkg)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


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


def build_debs() -> Debs:
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
