"""Run cloud-init's guestfail module through cloud-init's own machinery.

Started by test_cloudinit.py with Debian's python3 (which has cloud-init) as
``unshare --mount --propagation private -- python3 _cloudinit_runner.py``,
so the mounts below are private to this process:

* /etc becomes an overlay whose changes land in WORKDIR/etc-upper (the
  module writes /etc/guestfail/guestfail.toml; the host's /etc is untouched);
* /run becomes an empty tmpfs with /run/systemd/system, so cloud-init's
  distro believes systemd runs and manages the service with systemctl.

--cfg becomes /run/cloud-init/cloud.cfg, the runtime configuration that
ds-identify writes on a real boot (it outlives Init's re-reads, unlike
``cloud-init --file``): cloud-init's paths under WORKDIR, DataSourceNone
with the user-data.  Then it does what ``cloud-init init`` and ``cloud-init
single`` do: read the system configuration, fetch the datasource,
store and consume the user-data (so the ``guestfail`` key comes from the
instance's cloud-config, as on a real boot), then run the module with
``Modules.run_single`` (or ``run_section``).  PATH from the caller decides
which ``systemctl`` and ``guestfail`` programs the module runs: that is where
the test intercepts.  Prints {"which_ran": [...], "failures": [[name, error]]}
and the file cloud-init ran the module from as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any


def isolate(workdir: Path, cfg: Path) -> None:
    upper, work = workdir / "etc-upper", workdir / "etc-work"
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"],
        check=True,
    )
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    Path("/run/systemd/system").mkdir(parents=True)
    Path("/run/cloud-init").mkdir()
    Path("/run/cloud-init/cloud.cfg").write_text(cfg.read_text())


def run_module(section: str) -> dict[str, Any]:
    from cloudinit import importer, stages
    from cloudinit.config.modules import Modules, form_module_name
    from cloudinit.settings import PER_INSTANCE

    init = stages.Init(ds_deps=[])
    init.read_cfg()
    init.initialize()
    init.fetch(existing="trust")
    init.instancify()
    init.update()
    init.consume_data(PER_INSTANCE)
    mods = Modules(init)
    if section:
        which_ran, failures = mods.run_section(section)
    else:
        which_ran, failures = mods.run_single("guestfail", freq="always")
    # the module cloud-init picks: the first it finds, as in Modules._fixup_modules
    found, _ = importer.find_module(form_module_name("guestfail"), ["", "cloudinit.config"], ["handle"])
    return {
        "which_ran": list(which_ran),
        "failures": [[name, str(e)] for name, e in failures],
        "module_file": sys.modules[found[0]].__file__ if found else None,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--cfg", type=Path, required=True, help="runtime cloud-init configuration (YAML)")
    p.add_argument("--section", default="", help="run this module list instead of the module alone")
    args = p.parse_args()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    isolate(args.workdir, args.cfg)
    json.dump(run_module(args.section), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
