"""cloud-init's guestfail module (packaging/cloud-init/cc_guestfail.py) with
Debian's cloud-init 22.4, run by Debian's python3 in subprocesses.

The module is never mocked: cloud-init imports it the way it imports config
modules, from user-data that went through a real datasource (DataSourceNone),
and runs it with Modules.run_single / run_section.  Only the programs it
runs are replaced, at the process boundary: `systemctl` by a recorder on
PATH (there is no systemd here), `guestfail` by this tree's CLI.  /etc and
/run are private overlays (see _cloudinit_runner.py), so the host is not
touched.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.9 test run
    import tomli as tomllib

from guestfail.core import config as gf_config
from tests.integration.configkeys import config_keys
from tests.integration.conftest import (
    DEBIAN_PYTHON,
    PACKAGING,
    REPO,
    SYSTEM_PATH,
    guestfail_cli,
    need_debian_python,
    need_overlay,
    need_tool,
    run,
    system_env,
)

MODULE_DIR = PACKAGING / "cloud-init"
RUNNER = Path(__file__).with_name("_cloudinit_runner.py")

GOOD_USER_DATA = """\
#cloud-config
hostname: guest1
guestfail:
  agent:
    naming: keep
    master_name: "bond{n}"
    match: [mac]
    ignore: [eth9, "52:54:00:aa:bb:cc"]
  bond:
    miimon: 50
    fail_over_mac: active
  team:
    hwaddr_policy: by_active
  metrics:
    textfile: /var/lib/prometheus/node-exporter/guestfail.prom
  standby:
    - match: {mac: "52:54:00:12:34:56"}
      serial: 4
      require_mac: false
  pair:
    - name: 'up"link \\ ü'
      standby: {name: ens3}
      primary: {pci: "0000:00:07.0"}
      master: uplink0
    - standby: {vmbus: "0a1b2c3d-0000-1111-2222-333344445555"}
      primary: {serial: 7}
"""

pytestmark = pytest.mark.usefixtures("debian_cloudinit")


@pytest.fixture(scope="module")
def debian_cloudinit() -> None:
    need_debian_python("cloudinit.config.schema", "cloudinit.config.modules", "jsonschema")


def debian_python(code: str, *args: str, check: bool = True) -> Any:
    """Run `code` with Debian's python3 (cc_guestfail importable as a
    top-level module, as cloud-init also finds it); its stdout is JSON."""
    proc = run(
        [DEBIAN_PYTHON, "-c", code, *args],
        env=system_env(PYTHONPATH=str(MODULE_DIR)),
        check=check,
    )
    return json.loads(proc.stdout) if check else proc


# ---------------------------------------------------------------- schema


def test_schema_accepts_good_user_data_through_cloud_init_validator(tmp_path: Path) -> None:
    f = tmp_path / "user-data.yaml"
    f.write_text(GOOD_USER_DATA)
    out = debian_python(
        """
import json, sys
from cloudinit import safeyaml
from cloudinit.config.schema import validate_cloudconfig_schema, get_schema
import cc_guestfail
doc = safeyaml.load(open(sys.argv[1]).read())
validate_cloudconfig_schema(doc, schema=cc_guestfail.SCHEMA, strict=True)
validate_cloudconfig_schema(doc, schema=get_schema(), strict=True)  # the rest is valid cloud-config
print(json.dumps("ok"))
""",
        str(f),
    )
    assert out == "ok"


BAD = [
    ("bond:\n    miimon: 20000", "guestfail.bond.miimon", "20000 is greater than the maximum of 10000"),
    ("agent:\n    bakend: team", "guestfail.agent", "'bakend' was unexpected"),
    ("agent:\n    backend: bonding", "guestfail.agent.backend", "'bonding' is not one of ['bond', 'team']"),
    ("agent:\n    match: [mac, mac]", "guestfail.agent.match", "non-unique elements"),
    ("agent:\n    master_name: bond0", "guestfail.agent.master_name", "does not match"),
    ("pair:\n    - standby: {name: ens3}", "guestfail.pair.0", "'primary' is a required property"),
    (
        "pair:\n    - standby: {name: ens3, mac: '52:54:00:12:34:56'}\n      primary: {slot: '7'}",
        "guestfail.pair.0.standby",
        "has too many properties",
    ),
    (
        "standby:\n    - match: {mac: 52:54:00:12:34:56}\n      serial: 1",
        "guestfail.standby.0.match.mac",
        "is not of type 'string'",  # YAML 1.1 reads it as a base-60 number
    ),
    ("standby:\n    - match: {name: ens3}\n      serial: -1", "guestfail.standby.0.serial", "minimum of 0"),
    ("team: []", "guestfail.team", "is not of type 'object'"),
]


@pytest.mark.parametrize(("body", "key", "problem"), BAD, ids=[b[1] for b in BAD])
def test_schema_rejects_bad_user_data_naming_the_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(f"#cloud-config\nguestfail:\n  {body}\n")
    out = debian_python(
        """
import json, sys
from cloudinit import safeyaml
from cloudinit.config.schema import SchemaValidationError, validate_cloudconfig_schema
import cc_guestfail
doc = safeyaml.load(open(sys.argv[1]).read())
try:
    validate_cloudconfig_schema(doc, schema=cc_guestfail.SCHEMA, strict=True)
except SchemaValidationError as e:
    print(json.dumps({"message": str(e), "paths": [p.path for p in e.schema_errors]}))
else:
    print(json.dumps(None))
""",
        str(f),
    )
    assert out is not None, "the schema accepted it"
    assert key in out["paths"], out
    assert out["message"].startswith("Cloud config schema errors: ")
    assert f"{key}: " in out["message"] and problem in out["message"], out["message"]


def test_schema_is_valid_under_cloud_inits_strict_metaschema() -> None:
    out = debian_python(
        """
import json
from cloudinit.config.schema import get_jsonschema_validator, validate_cloudconfig_metaschema
import cc_guestfail
validator, _ = get_jsonschema_validator()
validate_cloudconfig_metaschema(validator, cc_guestfail.SCHEMA, throw=True)
print(json.dumps("ok"))
"""
    )
    assert out == "ok"


def test_schema_has_every_config_key_and_no_other() -> None:
    schema = debian_python("import json, cc_guestfail; print(json.dumps(cc_guestfail.SCHEMA))")
    section = schema["properties"]["guestfail"]
    keys = config_keys()
    assert set(section["properties"]) == keys[""]
    for table in ("agent", "bond", "team", "metrics"):
        assert set(section["properties"][table]["properties"]) == keys[table], table
        assert section["properties"][table]["additionalProperties"] is False
    for table in ("standby", "pair"):
        assert set(section["properties"][table]["items"]["properties"]) == keys[table], table
    items = section["properties"]
    assert set(items["standby"]["items"]["properties"]["match"]["properties"]) == set(gf_config.STANDBY_KEYS)
    assert set(items["pair"]["items"]["properties"]["standby"]["properties"]) == set(gf_config.STANDBY_KEYS)
    assert set(items["pair"]["items"]["properties"]["primary"]["properties"]) == set(gf_config.PRIMARY_KEYS)
    # the enums are config.py's
    agent = items["agent"]["properties"]
    assert agent["backend"]["enum"] == list(gf_config.BACKENDS)
    assert agent["naming"]["enum"] == list(gf_config.NAMINGS)
    assert agent["master_policy"]["enum"] == list(gf_config.MASTER_POLICIES)
    assert agent["match"]["items"]["enum"] == list(gf_config.RULES)
    assert items["bond"]["properties"]["fail_over_mac"]["enum"] == list(gf_config.FAIL_OVER_MAC)
    assert items["bond"]["properties"]["all_slaves_active"]["enum"] == list(gf_config.ALL_SLAVES_ACTIVE)
    assert items["team"]["properties"]["hwaddr_policy"]["enum"] == list(gf_config.HWADDR_POLICIES)


def test_cloud_init_schema_command_accepts_good_user_data(tmp_path: Path) -> None:
    cloud_init = need_tool("cloud-init", "cloud-init")
    f = tmp_path / "user-data.yaml"
    f.write_text(GOOD_USER_DATA)
    proc = run([cloud_init, "schema", "--config-file", str(f)], env=system_env())
    assert f"Valid cloud-config: {f}" in proc.stdout


def test_cloud_init_loads_the_module() -> None:
    """cloud-init 22.4 refuses a module with a `schema` attribute or without
    a proper `meta`; this one passes its own check."""
    out = debian_python(
        """
import json
from cloudinit import importer
from cloudinit.config.modules import form_module_name, validate_module
name = form_module_name("guestfail")
found, _ = importer.find_module(name, ["", "cloudinit.config"], ["handle"])
mod = importer.import_module(found[0])
validate_module(mod, "guestfail")
print(json.dumps({"name": name, "file": mod.__file__, "meta": mod.meta}))
"""
    )
    assert out["name"] == "cc_guestfail"
    assert out["file"] == str(MODULE_DIR / "cc_guestfail.py")
    assert out["meta"]["activate_by_schema_keys"] == ["guestfail"]


# ---------------------------------------------------------------- TOML


def test_render_round_trips_through_a_toml_parser() -> None:
    section = {
        "agent": {"master_name": "x{n}", "ignore": ['a"b', "c\\d", "e\nf", "tab\there", "\x01\x7f", "ü€😀"]},
        "bond": {"miimon": 0},
        "standby": [{"match": {"mac": "52:54:00:12:34:56"}, "serial": 4294967295, "require_mac": False}],
        "pair": [{"name": "[[pair]] = 'x'", "standby": {"name": "ens3"}, "primary": {"serial": 0}}],
    }
    text = debian_python(
        "import json, sys, cc_guestfail; print(json.dumps(cc_guestfail.render(json.loads(sys.argv[1]))))",
        json.dumps(section),
    )
    assert text.startswith("# Written by cloud-init")
    assert tomllib.loads(text) == section


def test_render_refuses_what_toml_cannot_hold() -> None:
    proc = debian_python(
        "import cc_guestfail; cc_guestfail.render({'bond': {'miimon': 1.5}})",
        check=False,
    )
    assert proc.returncode != 0
    assert "guestfail.bond.miimon: float values cannot be written" in proc.stderr


# ---------------------------------------------------------------- command line


def test_module_command_line_checks_files(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD_USER_DATA)
    bad.write_text("#cloud-config\nguestfail:\n  bond:\n    num_peer_notif: 256\n")
    script = str(MODULE_DIR / "cc_guestfail.py")
    env = system_env()
    ok = run([DEBIAN_PYTHON, script, str(good)], env=env)
    assert ok.stdout.strip() == f"Valid guestfail cloud-config: {good}"
    ko = run([DEBIAN_PYTHON, script, str(good), str(bad)], env=env, check=False)
    assert ko.returncode == 1
    assert "guestfail.bond.num_peer_notif: 256 is greater than the maximum of 255" in ko.stderr
    rendered = run([DEBIAN_PYTHON, script, "--render", str(good)], env=env)
    toml = tmp_path / "guestfail.toml"
    toml.write_text(rendered.stdout)
    guestfail_cli("--config", str(toml), "check-config")


# ---------------------------------------------------------------- the module in cloud-init


@dataclass
class CloudInitRun:
    which_ran: list[str]
    failures: list[list[str]]
    module_file: str  # where cloud-init ran cc_guestfail from
    systemctl: list[list[str]]
    config: Path  # where /etc/guestfail/guestfail.toml ended up


class Harness:
    """A guest's /etc and cloud-init state.  `run()` may be called repeatedly:
    runs with the same `instance` are boots of one instance (cloud-init keeps
    its datasource, and so its user-data, from the first); another
    `instance` is a new instance of the same image (the same /etc)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fakebin = workdir / "bin"
        self.fakebin.mkdir()
        self.calls = workdir / "systemctl.jsonl"
        _script(
            self.fakebin / "systemctl",
            "import json, os, sys\n"
            "with open(os.environ['GF_SYSTEMCTL_LOG'], 'a') as f:\n"
            "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n",
        )
        # `guestfail check-config` as the module runs it: this tree's CLI
        _script(
            self.fakebin / "guestfail",
            f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from guestfail.cli import main\nsys.exit(main())\n",
        )

    def run(
        self, user_data: str, section: str = "", modules: list[str] | None = None, instance: str = "i-1"
    ) -> CloudInitRun:
        cfg: dict[str, Any] = {
            "system_info": {
                "paths": {
                    "cloud_dir": str(self.workdir / f"cloud-{instance}"),
                    "run_dir": str(self.workdir / f"run-cloud-init-{instance}"),
                }
            },
            "datasource_list": ["None"],
            "datasource": {"None": {"userdata_raw": user_data}},
            "def_log_file": str(self.workdir / "cloud-init.log"),
            "syslog_fix_perms": ["root:root"],
        }
        if modules is not None:
            cfg["cloud_config_modules"] = modules
        cfg_file = self.workdir / "test.cfg"
        cfg_file.write_text(json.dumps(cfg))  # JSON is YAML
        self.calls.write_text("")
        argv = ["unshare", "--mount", "--propagation", "private", "--"]
        argv += [DEBIAN_PYTHON, str(RUNNER), "--workdir", str(self.workdir), "--cfg", str(cfg_file)]
        if section:
            argv += ["--section", section]
        env = system_env(
            PATH=f"{self.fakebin}:{SYSTEM_PATH}",
            PYTHONPATH=str(MODULE_DIR),
            GF_SYSTEMCTL_LOG=str(self.calls),
        )
        out = json.loads(run(argv, env=env, timeout=300).stdout)
        calls = [json.loads(line) for line in self.calls.read_text().splitlines()]
        return CloudInitRun(
            out["which_ran"],
            out["failures"],
            out["module_file"],
            calls,
            self.workdir / "etc-upper" / "guestfail" / "guestfail.toml",
        )


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{DEBIAN_PYTHON}\n{body}")
    path.chmod(0o755)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    need_overlay()
    return Harness(tmp_path)


def test_module_writes_valid_config_and_starts_the_service(harness: Harness) -> None:
    r = harness.run(GOOD_USER_DATA)
    assert r.failures == []
    assert r.which_ran == ["guestfail"]
    assert r.module_file == str(MODULE_DIR / "cc_guestfail.py")
    assert stat.S_IMODE(r.config.stat().st_mode) == 0o644
    guestfail_cli("--config", str(r.config), "check-config")
    cfg = gf_config.parse(r.config.read_text(), str(r.config))
    assert (cfg.naming, cfg.master_name, cfg.rules) == ("keep", "bond{n}", ("mac",))
    assert cfg.ignore == ("eth9", "52:54:00:aa:bb:cc")
    assert (cfg.bond.miimon, cfg.bond.fail_over_mac) == (50, "active")
    assert cfg.bond.num_peer_notif == gf_config.BondOptions().num_peer_notif  # not set: the default
    assert cfg.team.hwaddr_policy == "by_active"
    assert [(s.standby.describe(), s.serial, s.require_mac) for s in cfg.serials] == [
        ("mac=52:54:00:12:34:56", 4, False)
    ]
    assert [(p.label, p.standby.describe(), p.primary.describe(), p.master) for p in cfg.pairs] == [
        ('up"link \\ ü', "name=ens3", "pci=0000:00:07.0", "uplink0"),
        ("pair1", "vmbus=0a1b2c3d-0000-1111-2222-333344445555", "serial=7", ""),
    ]
    assert r.systemctl == [["enable", "guestfail.service"], ["restart", "guestfail.service"]]
    assert not (r.config.parent / "guestfail.toml.cloud-init-new").exists()

    # the next boot of the same instance: nothing changed, the service is
    # (still) enabled and started, not restarted
    before = r.config.read_text()
    again = harness.run(GOOD_USER_DATA)
    assert again.failures == []
    assert again.config.read_text() == before
    assert again.systemctl == [["enable", "guestfail.service"], ["start", "guestfail.service"]]


def test_module_refuses_bad_user_data_and_writes_nothing(harness: Harness) -> None:
    r = harness.run("#cloud-config\nguestfail:\n  bond:\n    miimon: 20000\n")
    assert r.which_ran == ["guestfail"]
    assert len(r.failures) == 1
    name, message = r.failures[0]
    assert name == "guestfail"
    assert "guestfail.bond.miimon: 20000 is greater than the maximum of 10000" in message
    assert not r.config.exists()
    assert r.systemctl == []


def test_config_guestfail_refuses_keeps_the_old_file(harness: Harness) -> None:
    """The schema cannot see every rule (here: two standbys with one serial);
    guestfail check-config does, and the working file stays."""
    good = harness.run(GOOD_USER_DATA)
    assert good.failures == []
    before = good.config.read_text()
    r = harness.run(
        "#cloud-config\nguestfail:\n  standby:\n"
        "    - {match: {name: ens3}, serial: 4}\n"
        "    - {match: {name: ens4}, serial: 4}\n",
        instance="i-2",
    )
    assert len(r.failures) == 1
    assert "guestfail rejected the configuration" in r.failures[0][1]
    assert "standby[1].serial: 4 is also standby[0]'s" in r.failures[0][1]
    assert r.config.read_text() == before
    assert not (r.config.parent / "guestfail.toml.cloud-init-new").exists()
    assert r.systemctl == []


def test_module_list_runs_it_only_for_a_guestfail_key(harness: Harness) -> None:
    without = harness.run(
        "#cloud-config\nhostname: x\n", section="cloud_config_modules", modules=["guestfail"]
    )
    assert without.failures == []
    assert without.which_ran == []  # activate_by_schema_keys: not applicable
    assert not without.config.exists()
    assert without.systemctl == []

    empty = harness.run(
        "#cloud-config\nguestfail: {}\n",
        section="cloud_config_modules",
        modules=["guestfail"],
        instance="i-2",
    )
    assert empty.failures == []
    assert empty.which_ran == ["guestfail"]
    assert dataclass_equal_defaults(empty.config)
    assert empty.systemctl == [["enable", "guestfail.service"], ["restart", "guestfail.service"]]


def dataclass_equal_defaults(path: Path) -> bool:
    return dataclasses.replace(gf_config.parse(path.read_text()), source="") == gf_config.Config()


# ---------------------------------------------------------------- how cloud-init runs it


def test_unit_runs_the_module_once_per_instance_after_the_config_stage() -> None:
    """guestfail-cloud-init.service runs the module with `cloud-init single`:
    no module list in /etc/cloud is replaced (a cloud.cfg.d list would)."""
    unit = (MODULE_DIR / "guestfail-cloud-init.service").read_text()
    assert "ExecStart=/usr/bin/cloud-init single --name guestfail --frequency instance" in unit
    assert "After=cloud-config.service" in unit and "Before=cloud-final.service" in unit
    assert "WantedBy=cloud-init.target" in unit
    assert not list(MODULE_DIR.glob("*.cfg")), "no cloud.cfg.d drop-in: it would replace the image's list"


def test_single_runs_the_module_from_the_instance_user_data(harness: Harness) -> None:
    r = harness.run(GOOD_USER_DATA)  # Modules.run_single, what `cloud-init single` does
    assert r.failures == [] and r.which_ran == ["guestfail"]
    assert r.systemctl == [["enable", "guestfail.service"], ["restart", "guestfail.service"]]


def test_module_parses_as_python39() -> None:
    """RHEL 9 runs cloud-init on Python 3.9: no newer syntax in the module."""
    ast.parse((MODULE_DIR / "cc_guestfail.py").read_text(), "cc_guestfail.py", feature_version=(3, 9))
