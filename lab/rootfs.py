"""Debian root file systems built by the lab itself from Debian's packages.

A `Recipe` says what goes in (suite, variant, packages, hooks); `build()`
runs mmdebstrap once per recipe and keeps the result under the lab's cache,
named by a hash of the recipe, so a changed recipe is rebuilt from nothing and
an unchanged one costs nothing.  No prebuilt image is ever downloaded: only
Debian's packages, from the mirror this machine's apt uses.

Users of it: the image tier (a Debian guest booted by systemd), the probe's
lab (QEMU 10 from Debian 13 for the SR-IOV `igb`), the cloud-init tests
(Debian 13's cloud-init in a chroot).

Cache: $GUESTFAIL_LAB_CACHE, else /var/cache/guestfail-lab.  Concurrent
builds of one recipe wait for each other (flock); a build that fails or is
interrupted leaves nothing behind under the final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("lab.rootfs")

#: bump when build() changes what it makes from the same recipe
BUILDER_VERSION = 1
MIRROR = "http://deb.debian.org/debian"
STAMP = ".guestfail-rootfs.json"


class RootfsError(RuntimeError):
    """mmdebstrap failed, or is not installed."""


@dataclass(frozen=True)
class Recipe:
    """What a root file system holds.  `name` is only for people (the cache
    directory's prefix); the hash of every other field decides identity."""

    name: str
    suite: str  # bookworm, trixie
    packages: tuple[str, ...] = ()
    variant: str = "apt"  # mmdebstrap --variant
    components: tuple[str, ...] = ("main",)
    # e.g. ("bookworm-updates", "bookworm-security"): the kernel and libraries
    # the suite's users actually get
    extra_suites: tuple[str, ...] = ()
    # mmdebstrap --customize-hook commands ($1 is the root); run by
    # mmdebstrap, in order, after the packages are installed
    customize: tuple[str, ...] = ()
    # files copied into the tree before the hooks: (host path, path in root)
    files: tuple[tuple[str, str], ...] = ()

    def key(self) -> str:
        doc = asdict(self)
        doc.pop("name")
        doc["builder"] = BUILDER_VERSION
        # a copied file is part of the recipe by its content
        doc["files"] = [(_digest(Path(src)), dst) for src, dst in self.files]
        raw = json.dumps(doc, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("GUESTFAIL_LAB_CACHE", "/var/cache/guestfail-lab"))


def path_for(recipe: Recipe) -> Path:
    return cache_dir() / f"{recipe.name}-{recipe.key()}"


def is_built(recipe: Recipe) -> bool:
    return (path_for(recipe) / STAMP).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="ascii") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mirrors(recipe: Recipe) -> list[str]:
    comps = " ".join(recipe.components)
    out = [f"deb {MIRROR} {recipe.suite} {comps}"]
    for suite in recipe.extra_suites:
        base = "http://deb.debian.org/debian-security" if suite.endswith("-security") else MIRROR
        out.append(f"deb {base} {suite} {comps}")
    return out


def command(recipe: Recipe, target: Path) -> list[str]:
    """The mmdebstrap command line for `recipe` (pure: tests read it)."""
    argv = ["mmdebstrap", "--quiet", f"--variant={recipe.variant}", "--mode=root"]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    for src, dst in recipe.files:
        argv.append(f"--customize-hook=copy-in {src} {os.path.dirname(dst) or '/'}")
        if os.path.basename(dst) != os.path.basename(src):
            argv.append(
                f'--customize-hook=mv "$1/{os.path.dirname(dst).strip("/")}/{os.path.basename(src)}" '
                f'"$1/{dst.lstrip("/")}"'
            )
    argv.extend(f"--customize-hook={hook}" for hook in recipe.customize)
    argv.extend([recipe.suite, str(target), *_mirrors(recipe)])
    return argv


def build(recipe: Recipe) -> Path:
    """The root file system of `recipe`, built now if the cache lacks it."""
    final = path_for(recipe)
    if is_built(recipe):
        return final
    if shutil.which("mmdebstrap") is None:
        raise RootfsError("mmdebstrap is not installed (apt-get install mmdebstrap; .ci/setup does)")
    with _locked(cache_dir() / f".{final.name}.lock"):
        if is_built(recipe):  # another process built it while we waited
            return final
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        t0 = time.monotonic()
        log.info("building %s (%s) with mmdebstrap", recipe.name, recipe.suite)
        try:
            proc = subprocess.run(command(recipe, tmp), capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-20:])
                raise RootfsError(f"mmdebstrap for {recipe.name} exited {proc.returncode}:\n{tail}")
            seconds = round(time.monotonic() - t0, 1)
            stamp = {"recipe": asdict(recipe), "key": recipe.key(), "seconds": seconds}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("built %s in %.1f s: %s", recipe.name, seconds, final)
    return final


def build_seconds(recipe: Recipe) -> float | None:
    """How long the cached build took (None if not built)."""
    try:
        return float(json.loads((path_for(recipe) / STAMP).read_text())["seconds"])
    except (OSError, ValueError, KeyError):
        return None
