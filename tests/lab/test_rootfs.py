"""The rootfs builder's recipe identity and command line (no mmdebstrap run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import rootfs
from lab.rootfs import Recipe


def test_key_depends_on_content_not_name(tmp_path: Path) -> None:
    a = Recipe("a", "bookworm", packages=("python3",))
    b = Recipe("b", "bookworm", packages=("python3",))
    c = Recipe("a", "bookworm", packages=("python3", "iproute2"))
    assert a.key() == b.key()
    assert a.key() != c.key()


def test_key_follows_copied_file_content(tmp_path: Path) -> None:
    f = tmp_path / "x.deb"
    f.write_text("one")
    k1 = Recipe("a", "trixie", files=((str(f), "/root/x.deb"),)).key()
    f.write_text("two")
    assert Recipe("a", "trixie", files=((str(f), "/root/x.deb"),)).key() != k1


def test_command_lists_suites_packages_and_hooks(tmp_path: Path) -> None:
    r = Recipe(
        "img",
        "bookworm",
        packages=("systemd-sysv", "udev"),
        variant="minbase",
        extra_suites=("bookworm-updates", "bookworm-security"),
        customize=('echo x > "$1/etc/x"',),
    )
    argv = rootfs.command(r, tmp_path / "t")
    assert argv[:2] == ["mmdebstrap", "--quiet"]
    assert "--variant=minbase" in argv
    assert "--include=systemd-sysv,udev" in argv
    assert '--customize-hook=echo x > "$1/etc/x"' in argv
    assert argv[-3:] == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    i = argv.index("bookworm")
    assert argv[i + 1] == str(tmp_path / "t")


def test_cached_build_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUESTFAIL_LAB_CACHE", str(tmp_path))
    r = Recipe("c", "trixie")
    done = rootfs.path_for(r)
    done.mkdir(parents=True)
    (done / rootfs.STAMP).write_text('{"seconds": 1.5}')
    monkeypatch.setattr("lab.rootfs.subprocess.run", lambda *a, **k: pytest.fail("rebuilt"))
    assert rootfs.build(r) == done
    assert rootfs.build_seconds(r) == 1.5
