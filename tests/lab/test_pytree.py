"""lab.pytree: the tree a guest imports guestfail from holds everything the
daemon's, the CLI's and the probe's imports load, so a guest's Python does
not fall back to the shared root (slow over 9p) for any of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from lab import pytree


def test_the_tree_alone_serves_every_import_of_guestfail(tmp_path: Path) -> None:
    tar = pytree.build()
    with tarfile.open(tar) as t:
        t.extractall(tmp_path)
    paths = [str(tmp_path / Path(p).name) for p in pytree.GUEST_PATH]
    probe = (
        "import importlib, json, sys\n"
        "for m in sys.argv[1:]: importlib.import_module(m)\n"
        "print(json.dumps([m.__file__ for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None) and getattr(m.__spec__, 'origin', '') != 'frozen']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *pytree.ENTRY_MODULES, "pyroute2.netlink.rtnl.tcmsg.cls_basic"],
        env={**os.environ, "PYTHONPATH": ":".join(paths), "PYTHONSAFEPATH": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = json.loads(out)
    outside = [
        f
        for f in files
        if not f.startswith(str(tmp_path))
        # the venv's .pth hooks, read at every start wherever the code is
        and not f.startswith(str(Path(sys.prefix)))
    ]
    assert outside == [], outside
    assert any(f.startswith(str(tmp_path / "co" / "guestfail")) for f in files)


def test_built_once_per_process() -> None:
    assert pytree.build() == pytree.build()
