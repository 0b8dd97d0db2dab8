"""The wrapper that runs Debian 13's QEMU on this machine (no QEMU run here:
the igb lab in tests/vm boots it)."""

from __future__ import annotations

from pathlib import Path

from lab import qemu10


def test_the_wrapper_runs_the_chroots_qemu_with_its_own_loader_libraries_and_modules() -> None:
    root = Path("/var/cache/guestfail-lab/qemu10-x")
    text = qemu10.wrapper_text(root)
    assert text.startswith("#!/bin/sh\n")
    assert "exec unshare --mount --propagation private -- sh -c " in text
    assert f"mount --bind {root}/usr/lib/x86_64-linux-gnu/qemu /usr/lib/x86_64-linux-gnu/qemu" in text
    assert f"exec {root}/lib64/ld-linux-x86-64.so.2 --library-path {root}/usr/lib/x86_64-linux-gnu:" in text
    assert f"{root}/usr/bin/qemu-system-x86_64 -L {root}/usr/share/qemu" in text
    assert text.rstrip().endswith('qemu "$@"')


def test_the_recipe_is_debian_13s_qemu() -> None:
    assert qemu10.RECIPE.suite == "trixie"
    assert "qemu-system-x86" in qemu10.RECIPE.packages
