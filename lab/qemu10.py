"""QEMU 10 from Debian 13's own packages, for the emulated SR-IOV NIC `igb`.

Debian 12's QEMU 7.2 has no SR-IOV NIC model; Debian 13's QEMU 10 has `igb`
(an Intel 82576 with SR-IOV, driven by Linux's own igb and igbvf drivers).
`build()` makes a Debian 13 root file system holding `qemu-system-x86` with
`lab.rootfs` (cached), and `wrapper()` writes a small program that runs that
QEMU on this machine, outside the chroot, so virtme-run can boot a guest with
this machine's root file system as usual (`virtme-run --qemu-bin WRAPPER`):

- the chroot's own dynamic loader and libraries run the chroot's binary;
- `-L <chroot>/usr/share/qemu` gives it its own firmware and option ROMs;
- QEMU loads its modules only from the directory it was built for
  (/usr/lib/x86_64-linux-gnu/qemu) and refuses another version's, so the
  wrapper runs it in a private mount namespace (`unshare -m`) with the
  chroot's module directory bind-mounted over this machine's.

Nothing here is started at import; `python -m lab.qemu10` builds the chroot
and prints the wrapper's path and QEMU's version.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from lab import rootfs

RECIPE = rootfs.Recipe(
    name="qemu10",
    suite="trixie",
    packages=("qemu-system-x86", "qemu-system-data", "seabios", "ipxe-qemu"),
    variant="apt",
)
MODULE_DIR = "/usr/lib/x86_64-linux-gnu/qemu"
LIB_DIRS = ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib")


class Qemu10Error(RuntimeError):
    """The chroot could not be built or its QEMU does not run here."""


def build() -> Path:
    """The Debian 13 root holding QEMU 10 (built once, then cached)."""
    return rootfs.build(RECIPE)


def wrapper_text(root: Path) -> str:
    """The wrapper program for the QEMU in `root` (pure: the tests read it)."""
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    libs = ":".join(str(root / d) for d in LIB_DIRS)
    qemu = root / "usr" / "bin" / "qemu-system-x86_64"
    inner = (
        f"mount --bind {shlex.quote(str(root / MODULE_DIR.lstrip('/')))} {MODULE_DIR} && "
        f"exec {shlex.quote(str(loader))} --library-path {shlex.quote(libs)} {shlex.quote(str(qemu))} "
        f'-L {shlex.quote(str(root / "usr" / "share" / "qemu"))} "$@"'
    )
    return (
        "#!/bin/sh\n"
        "# QEMU 10 from the Debian 13 root file system below (lab/qemu10.py): its own\n"
        "# loader, libraries, firmware and modules, in a private mount namespace.\n"
        f'exec unshare --mount --propagation private -- sh -c {shlex.quote(inner)} qemu "$@"\n'
    )


def wrapper(root: Path | None = None) -> Path:
    """Write (if changed) and return the wrapper for the cached QEMU 10."""
    root = root or build()
    path = root.parent / f"{root.name}.qemu-system-x86_64"
    text = wrapper_text(root)
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
    return path


def version(qemu: Path) -> str:
    """The first line of `qemu --version`, or Qemu10Error."""
    proc = subprocess.run([str(qemu), "--version"], capture_output=True, text=True, check=False, timeout=60)
    if proc.returncode != 0:
        raise Qemu10Error(f"{qemu} --version exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc.stdout.splitlines()[0] if proc.stdout else ""


def main() -> int:
    w = wrapper()
    print(w)
    print(version(w))
    return 0


if __name__ == "__main__":
    sys.exit(main())
