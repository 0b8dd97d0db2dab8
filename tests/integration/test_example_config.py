"""The example configuration the packages ship
(/usr/share/doc/guestfail/examples/guestfail.toml): every key at its
default, valid for `guestfail check-config`, and its commented examples of
[[standby]] and [[pair]] valid too once uncommented."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.9 test run
    import tomli as tomllib

from guestfail.core import config as gf_config
from tests.integration.configkeys import config_keys
from tests.integration.conftest import PACKAGING, guestfail_cli

EXAMPLE = PACKAGING / "examples" / "guestfail.toml"


def uncommented(text: str) -> str:
    """The example with its commented [[standby]]/[[pair]] entries active."""
    out = []
    active = False
    for line in text.splitlines():
        if re.match(r"^# \[\[\w+\]\]$", line):
            active = True  # an entry begins
        elif not re.match(r"^# \w+ = ", line):
            active = False  # not one of its keys: the entry is over
        out.append(line[2:] if active else line)
    return "\n".join(out) + "\n"


def test_example_is_the_defaults() -> None:
    cfg = gf_config.parse(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert dataclasses.replace(cfg, source="") == gf_config.Config()


def test_example_sets_every_key_of_the_tables() -> None:
    doc = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    keys = config_keys()
    assert set(doc) == {"agent", "bond", "team", "metrics"}
    for table in ("agent", "bond", "team", "metrics"):
        assert set(doc[table]) == keys[table], table


def test_commented_entries_are_valid_and_show_every_key(tmp_path: Path) -> None:
    text = uncommented(EXAMPLE.read_text(encoding="utf-8"))
    doc = tomllib.loads(text)
    keys = config_keys()
    assert set(doc["standby"][0]) == keys["standby"]
    assert set(doc["pair"][0]) == keys["pair"]
    cfg = gf_config.parse(text, "uncommented example")
    assert len(cfg.serials) == 1 and len(cfg.pairs) == 1
    f = tmp_path / "guestfail.toml"
    f.write_text(text)
    out = guestfail_cli("--config", str(f), "check-config")
    assert "1 explicit pairs, 1 serials" in out.stdout


def test_check_config_accepts_the_example() -> None:
    out = guestfail_cli("--config", str(EXAMPLE), "check-config")
    assert out.stdout.startswith(f"{EXAMPLE}: ok")
