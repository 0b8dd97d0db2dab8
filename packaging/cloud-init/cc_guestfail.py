"""guestfail: configure the SR-IOV VF failover agent from cloud-config.

A cloud-init config module.  The ``guestfail`` key of the instance's
cloud-config is a mapping that mirrors guestfail's TOML configuration
(tables ``agent``, ``bond``, ``team``; lists ``standby`` and ``pair``, see
guestfail(8)).  The module validates it against its own JSON schema,
writes /etc/guestfail/guestfail.toml (after ``guestfail check-config``
accepted it), then enables guestfail.service and starts it, or restarts it
when the configuration changed.

Installed where cloud-init imports config modules from
(``cloudinit/config/cc_guestfail.py``) by the package guestfail-cloud-init,
and run by its unit guestfail-cloud-init.service (``cloud-init single --name
guestfail``, once per instance, after cloud-init's config stage): no module
list in /etc/cloud is changed, so an image's own lists stay as they are.

Which cloud-init versions take the key where (``cloud-init status`` stays
"done", never "degraded", in each case):

* 22.4 to 23.3: in user-data.  cloud-init lets unknown top-level keys pass;
  this module checks the key itself with cloud-init's validator.
* 23.4 and later: cloud-init's schema refuses unknown top-level keys in
  user-data and reports the instance degraded, and there is no supported
  way for a third-party module to extend that schema.  Put the key in
  vendor-data or in /etc/cloud/cloud.cfg.d/ (neither is checked against the
  schema at boot), or write the file with ``write_files`` and restart the
  service with ``runcmd`` (see guestfail(8), CLOUD-INIT).

``handle`` has the signature the running cloud-init expects: (name, cfg,
cloud, args) from 23.2, which deprecated the ``log`` argument; (name, cfg,
cloud, log, args) before.  The module can be run by hand to check a file::

    python3 -m cloudinit.config.cc_guestfail user-data.yaml
    python3 -m cloudinit.config.cc_guestfail --render user-data.yaml
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Optional

import yaml
from cloudinit import subp, util, version
from cloudinit.config import schema as ci_schema
from cloudinit.distros import ALL_DISTROS
from cloudinit.settings import PER_INSTANCE

if TYPE_CHECKING:
    from cloudinit.cloud import Cloud

LOG = logging.getLogger(__name__)

KEY = "guestfail"
CONFIG_PATH = "/etc/guestfail/guestfail.toml"
SERVICE = "guestfail.service"
HEADER = (
    "# Written by cloud-init (config module guestfail) from the 'guestfail' key\n"
    "# of this instance's cloud-config.  Edits are lost when a new instance\n"
    "# runs the module again.  See guestfail(8), CONFIGURATION.\n"
)

# ---------------------------------------------------------------- schema
# JSON schema (draft 4, what cloud-init 22.4 validates with).  It mirrors
# guestfail/config.py and is never stricter than it: what the schema lets
# through, `guestfail check-config` checks in full before the file is used.
# (A module must not have an attribute named `schema`: cloud-init 22.4
# refuses to load such a module.)

_NAME_CHARS = "[^/: \\t\\n\\v\\f\\r\\x00]"
_IFNAME: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 15,
    "pattern": f"^{_NAME_CHARS}+$",
    "description": "An interface name (at most 15 bytes).",
}
_MAC: dict[str, Any] = {
    "type": "string",
    "pattern": "^\\s*[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}\\s*$",
    "description": "A MAC address, quoted (YAML reads some unquoted ones as numbers).",
}
_PCI: dict[str, Any] = {
    "type": "string",
    "pattern": "^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\\.[0-7]$",
    "description": "A PCI address such as 0000:02:00.0.",
}
_VMBUS: dict[str, Any] = {
    "type": "string",
    "pattern": "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
    "description": "A VMBus device id (a GUID).",
}
_U32: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 4294967295}
_STANDBY_SELECTOR: dict[str, Any] = {
    "type": "object",
    "description": "Exactly one of name, mac, pci, vmbus.",
    "properties": {"name": _IFNAME, "mac": _MAC, "pci": _PCI, "vmbus": _VMBUS},
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}
_PRIMARY_SELECTOR: dict[str, Any] = {
    "type": "object",
    "description": "Exactly one of name, mac, pci, slot, serial.",
    "properties": {
        "name": _IFNAME,
        "mac": _MAC,
        "pci": _PCI,
        "slot": {
            "type": "string",
            "minLength": 1,
            "maxLength": 64,
            "pattern": "^[^/]+$",
            "description": "A PCI slot name as in /sys/bus/pci/slots.",
        },
        "serial": {**_U32, "description": "The serial the host gave the VF's slot."},
    },
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}
_DRIVERS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
}
_FAIL_OVER_MAC = ["auto", "none", "active", "follow"]


def _range(lo: int, hi: int, description: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi, "description": description}


SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {
        KEY: {
            "type": "object",
            "description": "guestfail's configuration, as in /etc/guestfail/guestfail.toml.",
            "additionalProperties": False,
            "properties": {
                "agent": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "backend": {"enum": ["bond", "team"], "description": "Default: bond."},
                        "naming": {"enum": ["kernel", "keep"], "description": "Default: kernel."},
                        "master_name": {
                            "type": "string",
                            "pattern": "\\{(n|standby)\\}",
                            "description": "Template with {n} or {standby}. Default: gf{n}.",
                        },
                        "master_policy": {
                            "enum": ["on-pair", "from-start"],
                            "description": "Default: on-pair.",
                        },
                        "match": {
                            "type": "array",
                            "items": {"enum": ["serial", "mac", "topology"]},
                            "uniqueItems": True,
                            "description": "Matching rules, the first wins. Default: [serial, mac].",
                        },
                        "standby_drivers": {**_DRIVERS, "description": "Extra standby drivers."},
                        "primary_drivers": {**_DRIVERS, "description": "Allowed primary drivers."},
                        "ignore": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Interface names, MACs or PCI addresses to leave alone.",
                        },
                        "state_dir": {
                            "type": "string",
                            "pattern": "^/",
                            "description": "Default: /run/guestfail.",
                        },
                        "announce": {"type": "boolean", "description": "Default: true."},
                        "ingress": {"enum": ["unicast", "off"], "description": "Default: unicast."},
                        "drain_timeout": _range(0, 86400, "Seconds. Default: 120."),
                        "networkmanager": {"enum": ["auto", "off"], "description": "Default: auto."},
                    },
                },
                "bond": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "miimon": _range(0, 10000, "Milliseconds. Default: 100."),
                        "fail_over_mac": {"enum": _FAIL_OVER_MAC, "description": "Default: auto."},
                        "num_peer_notif": _range(0, 255, "Default: 1."),
                        "all_slaves_active": {
                            "enum": ["on", "off"],
                            "description": "Default: off.",
                        },
                    },
                },
                "team": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "teamd": {"type": "string", "description": "Default: teamd."},
                        "hwaddr_policy": {
                            "enum": ["auto", "same_all", "by_active", "only_active"],
                            "description": "Default: auto.",
                        },
                        "link_watch_delay_up": _range(0, 60000, "Milliseconds. Default: 0."),
                        "link_watch_delay_down": _range(0, 60000, "Milliseconds. Default: 0."),
                    },
                },
                "metrics": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "textfile": {
                            "type": "string",
                            "pattern": "^(/.*\\.prom)?$",
                            "description": "A node_exporter textfile (*.prom) to write. Default: none.",
                        },
                    },
                },
                "standby": {
                    "type": "array",
                    "description": "The serial rule: a standby and the serial of its VF's slot.",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["match", "serial"],
                        "properties": {
                            "match": _STANDBY_SELECTOR,
                            "serial": _U32,
                            "require_mac": {"type": "boolean", "description": "Default: true."},
                        },
                    },
                },
                "topology": {
                    "type": "array",
                    "description": "The bridges the topology rule pairs the NICs behind.",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["bridge"],
                        "properties": {
                            "bridge": {
                                "type": "object",
                                "description": "Exactly one of pci, id (vendor:device).",
                                "properties": {
                                    "pci": _PCI,
                                    "id": {
                                        "type": "string",
                                        "pattern": "^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$",
                                        "description": "A PCI vendor:device ID such as 1b36:000c.",
                                    },
                                },
                                "additionalProperties": False,
                                "minProperties": 1,
                                "maxProperties": 1,
                            },
                        },
                    },
                },
                "pair": {
                    "type": "array",
                    "description": "Explicit pairs, matched before any rule.",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["standby", "primary"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 64},
                            "standby": _STANDBY_SELECTOR,
                            "primary": _PRIMARY_SELECTOR,
                            "master": {
                                "type": "string",
                                "maxLength": 15,
                                "pattern": f"^({_NAME_CHARS}+)?$",
                            },
                            "fail_over_mac": {"enum": ["", *_FAIL_OVER_MAC]},
                        },
                    },
                },
            },
        }
    },
}

# The order tables and keys are written in: the schema's.
_TABLES = ("agent", "bond", "team", "metrics")
_ARRAYS = ("standby", "topology", "pair")

MODULE_DESCRIPTION = """\
Writes guestfail's configuration, /etc/guestfail/guestfail.toml, from the
``guestfail`` mapping, which mirrors the TOML file: the tables ``agent``,
``bond`` and ``team``, and the lists ``standby``, ``topology`` and ``pair``.  Keys left out
keep guestfail's defaults; ``guestfail: {}`` writes a file with none set.
The configuration is checked with ``guestfail check-config`` before it
replaces the old file; then guestfail.service is enabled and started, or
restarted if the file changed.  Quote MAC addresses.
"""

meta: ci_schema.MetaSchema = {
    "id": "cc_guestfail",
    "name": "guestfail",
    "title": "Configure guestfail, the SR-IOV VF failover agent",
    "description": MODULE_DESCRIPTION,
    "distros": [ALL_DISTROS],
    "frequency": PER_INSTANCE,
    "examples": [
        "guestfail:\n  agent:\n    naming: kernel\n  bond:\n    miimon: 50\n",
        "guestfail:\n"
        "  standby:\n"
        "    - match: {mac: '52:54:00:12:34:56'}\n"
        "      serial: 4\n"
        "  pair:\n"
        "    - name: uplink\n"
        "      standby: {name: ens3}\n"
        "      primary: {pci: '0000:00:07.0'}\n",
    ],
    "activate_by_schema_keys": [KEY],
}


def cloud_init_version(text: Optional[str] = None) -> tuple[int, ...]:
    """cloud-init's version as numbers, e.g. (22, 4, 2); () if unreadable."""
    raw = version.version_string() if text is None else text
    out = []
    for part in raw.split("-")[0].split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


#: from this cloud-init on, handle() has no `log` argument (23.2 deprecated it)
HANDLE_WITHOUT_LOG = (23, 2)
#: from this cloud-init on, unknown top-level user-data keys make it degraded
SCHEMA_REFUSES_UNKNOWN_KEYS = (23, 4)


# ---------------------------------------------------------------- validate


def validate(cloud_config: dict[str, Any]) -> None:
    """Check the ``guestfail`` key of a cloud-config with cloud-init's own
    validator; raises SchemaValidationError (a ValueError) naming the key,
    e.g. ``guestfail.bond.miimon: 20000 is greater than the maximum of 10000``."""
    if KEY not in cloud_config:
        return
    ci_schema.validate_cloudconfig_schema({KEY: cloud_config[KEY]}, schema=SCHEMA, strict=True)


# ---------------------------------------------------------------- TOML

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"{value!r} contains a lone surrogate, which TOML cannot hold")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _toml_string(key)


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v, f'{where}.{k}')}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ValueError(f"{where}: {type(value).__name__} values cannot be written to guestfail's TOML")


def _table_body(table: Any, where: str) -> list[str]:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be a mapping")
    return [f"{_toml_key(str(k))} = {_toml_value(v, f'{where}.{k}')}" for k, v in table.items()]


def render(section: Any) -> str:
    """The TOML text for a validated ``guestfail`` mapping.  Only the keys it
    sets are written; the rest keep guestfail's defaults."""
    if not isinstance(section, dict):
        raise ValueError(f"{KEY}: must be a mapping")
    unknown = sorted(set(section) - set(_TABLES) - set(_ARRAYS))
    if unknown:
        raise ValueError(f"{KEY}.{unknown[0]}: unknown key")
    lines = [HEADER.rstrip("\n")]
    for name in _TABLES:
        if name in section:
            lines += ["", f"[{name}]", *_table_body(section[name], f"{KEY}.{name}")]
    for name in _ARRAYS:
        entries = section.get(name, [])
        if not isinstance(entries, list):
            raise ValueError(f"{KEY}.{name}: must be a list")
        for i, entry in enumerate(entries):
            lines += ["", f"[[{name}]]", *_table_body(entry, f"{KEY}.{name}.{i}")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- apply


def install_config(text: str, path: str = CONFIG_PATH) -> bool:
    """Put `text` at `path` once guestfail accepts it; False if it was
    already there.  An invalid configuration never replaces a valid one."""
    try:
        if util.load_file(path) == text:
            LOG.debug("%s is up to date", path)
            return False
    except FileNotFoundError:
        pass
    tmp = f"{path}.cloud-init-new"
    util.write_file(tmp, text, mode=0o644)
    try:
        subp.subp(["guestfail", "--config", tmp, "check-config"], capture=True)
    except subp.ProcessExecutionError as e:
        util.del_file(tmp)
        detail = (e.stderr or "").strip() or str(e)
        raise ValueError(f"guestfail rejected the configuration from the '{KEY}' key: {detail}") from None
    os.replace(tmp, path)
    LOG.info("wrote %s", path)
    return True


def start_service(distro: Any, changed: bool) -> None:
    """Enable guestfail.service and start it (restart it if the file changed:
    the daemon reads its configuration when it starts)."""
    if not distro.uses_systemd():
        LOG.warning("%s not started: this system does not run systemd", SERVICE)
        return
    distro.manage_service("enable", SERVICE)
    distro.manage_service("restart" if changed else "start", SERVICE)


def apply(name: str, cfg: dict[str, Any], cloud: Cloud) -> None:
    """What the module does, whatever cloud-init calls it with."""
    if KEY not in cfg:
        LOG.debug("Skipping module named %s, no '%s' key in configuration", name, KEY)
        return
    validate(cfg)
    changed = install_config(render(cfg[KEY]))
    start_service(cloud.distro, changed)


if cloud_init_version() >= HANDLE_WITHOUT_LOG:

    def handle(name: str, cfg: dict[str, Any], cloud: Cloud, args: list[str]) -> None:
        apply(name, cfg, cloud)

else:  # cloud-init 22.4 to 23.1 call handle(name, cfg, cloud, log, args)

    def handle(  # type: ignore[misc]
        name: str, cfg: dict[str, Any], cloud: Cloud, log: Any, args: list[str]
    ) -> None:
        apply(name, cfg, cloud)


# ---------------------------------------------------------------- command line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m cloudinit.config.cc_guestfail",
        description="Check the 'guestfail' key of cloud-config files (cloud-init 22.4's "
        "'cloud-init schema' does not know it).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="#cloud-config YAML files")
    parser.add_argument(
        "--render", action="store_true", help="print the guestfail.toml each valid file gives"
    )
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            content = util.load_file(path)
        except OSError as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            status = 1
            continue
        if not content.startswith("#cloud-config"):
            print(f"{path}: does not begin with #cloud-config", file=sys.stderr)
            status = 1
            continue
        try:
            doc = yaml.safe_load(content)
        except Exception as e:  # whatever the YAML loader raises
            print(f"{path}: not valid YAML: {e}", file=sys.stderr)
            status = 1
            continue
        if not isinstance(doc, dict) or KEY not in doc:
            print(f"{path}: no '{KEY}' key", file=sys.stderr)
            continue
        try:
            validate(doc)
            text = render(doc[KEY])
        except ValueError as e:
            print(f"{path}: {e}", file=sys.stderr)
            status = 1
            continue
        if args.render:
            sys.stdout.write(text)
        else:
            print(f"Valid guestfail cloud-config: {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
