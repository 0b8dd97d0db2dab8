"""cc_guestfail against each cloud-init it supports: Debian 12's 22.4 (this
machine's) and Debian 13's 25.x (in the lab's Debian 13 root file system,
built by lab.rootfs, run with chroot).  What changed between them and what
the module does about it:

* `handle`: 22.4 calls it with (name, cfg, cloud, log, args); from 23.2 a
  five-parameter handle is logged as deprecated (and the instance then
  reports degraded), so the module defines the four-parameter one there;
* `get_meta_doc`: a warning stub from 24.4 on; the module never calls it;
* the schema: from 23.4 unknown top-level user-data keys fail cloud-init's
  own validation (degraded), and no third-party module can extend it: the
  documented ways there are vendor-data, /etc/cloud/cloud.cfg.d, or
  write_files + runcmd, which 25.x's schema accepts.

The image tier boots both distributions with the packages installed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DEBIAN_PYTHON, PACKAGING, need_root, need_tool, system_env

MODULE = PACKAGING / "cloud-init" / "cc_guestfail.py"

PROBE = r"""
import inspect, io, json, logging, sys
from cloudinit import importer, version
from cloudinit.config.modules import form_module_name, validate_module
from cloudinit.config.schema import get_schema, validate_cloudconfig_schema, SchemaValidationError
import yaml

warnings = io.StringIO()
handler = logging.StreamHandler(warnings)
handler.setLevel(logging.WARNING)
logging.getLogger().addHandler(handler)
found, _ = importer.find_module(form_module_name("guestfail"), ["", "cloudinit.config"], ["handle"])
mod = importer.import_module(found[0])
validate_module(mod, "guestfail")

def schema_errors(text):
    try:
        validate_cloudconfig_schema(yaml.safe_load(text), schema=get_schema(), strict=True)
    except SchemaValidationError as e:
        return [p.path for p in e.schema_errors]
    return []

print(json.dumps({
    "version": version.version_string(),
    "handle": list(inspect.signature(mod.handle).parameters),
    "warnings_at_import": warnings.getvalue(),
    "user_data_key": schema_errors("#cloud-config\nguestfail: {bond: {miimon: 50}}\n"),
    "write_files": schema_errors(sys.argv[1]),
}))
"""

WRITE_FILES = """\
#cloud-config
write_files:
  - path: /etc/guestfail/guestfail.toml
    content: |
      [bond]
      miimon = 50
runcmd:
  - [systemctl, restart, guestfail.service]
"""


def _probe(argv: list[str]) -> dict[str, Any]:
    proc = subprocess.run(
        [*argv, "-c", PROBE, WRITE_FILES], capture_output=True, text=True, env=system_env(), check=False
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def debian13_tree() -> Path:
    need_root()
    need_tool("mmdebstrap", "mmdebstrap")
    from lab import image, rootfs

    return rootfs.build(image.base_recipe("debian13"))


def test_cloud_init_22_4() -> None:
    out = _probe(["env", f"PYTHONPATH={MODULE.parent}", DEBIAN_PYTHON])
    if not out["version"].startswith("22."):
        pytest.skip(f"this machine's cloud-init is {out['version']}")
    assert out["handle"] == ["name", "cfg", "cloud", "log", "args"]
    assert out["warnings_at_import"] == ""
    assert out["user_data_key"] == []  # 22.4 lets the key pass; the module checks it
    assert out["write_files"] == []


def test_cloud_init_25(debian13_tree: Path) -> None:
    dest = debian13_tree / "usr/lib/python3/dist-packages/cloudinit/config/cc_guestfail.py"
    # the tree is the lab's cache: the module goes in for the probe and out again
    dest.write_bytes(MODULE.read_bytes())
    try:
        out = _probe(["chroot", str(debian13_tree), "/usr/bin/python3"])
    finally:
        dest.unlink()
    major = int(out["version"].split(".")[0])
    assert major >= 25, out["version"]
    assert out["handle"] == ["name", "cfg", "cloud", "args"]  # no deprecation warning
    assert out["warnings_at_import"] == ""  # no get_meta_doc stub warning
    # why user-data needs another way there: the key itself is refused...
    assert out["user_data_key"] == ["guestfail"]
    # ...and the documented one is valid cloud-config
    assert out["write_files"] == []
