"""Shell completion generated from the parser (packaging/completions.py,
shtab) and kept in packaging/completions/, which both packages install
(test_packages): the kept files are what the parser gives now; the bash
script completes commands, options and choices in a real bash, file names
after --config and guestfail's masters where a pair is asked for; the zsh
script parses and uses only the arrays it defines."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from guestfail.cli import commands
from tests.integration.conftest import PACKAGING, need_tool, run, system_env

KEPT = PACKAGING / "completions"


@pytest.fixture(scope="module")
def scripts() -> Path:
    return KEPT


def test_kept_scripts_are_what_the_parser_gives(tmp_path: Path) -> None:
    pytest.importorskip("shtab")
    run([sys.executable, str(PACKAGING / "completions.py"), str(tmp_path)])
    for name in ("guestfail", "_guestfail"):
        assert (tmp_path / name).read_text() == (KEPT / name).read_text(), (
            f"packaging/completions/{name} is stale: run .venv/bin/python packaging/completions.py"
        )


def complete(scripts: Path, line: str, *, netns: str = "") -> list[str]:
    """What bash offers for the last word of `line` (ending in a space: a new word)."""
    bash = need_tool("bash", "bash")
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    code = (
        f"source {shlex.quote(str(scripts / 'guestfail'))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_guestfail guestfail\n"
        "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    argv = [bash, "--norc", "--noprofile", "-c", code]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = run(argv, env=system_env())
    return sorted(x for x in proc.stdout.splitlines() if x)


def test_commands_and_options_complete(scripts: Path) -> None:
    names = sorted(n for a in commands.build_parser()._actions if a.dest == "command" for n in a.choices)  # type: ignore[union-attr]
    assert complete(scripts, "guestfail ") == names
    assert complete(scripts, "guestfail che") == ["check-config"]
    assert complete(scripts, "guestfail status --") == ["--help", "--json", "--no-dbus"]
    assert complete(scripts, "guestfail --v") == ["--verbose", "--version"]
    assert complete(scripts, "guestfail switch ens3 ") == ["primary", "standby"]


def test_config_completes_file_names(scripts: Path, tmp_path: Path) -> None:
    (tmp_path / "guestfail.toml").write_text("")
    (tmp_path / "other.toml").write_text("")
    got = complete(scripts, f"guestfail --config {tmp_path}/gu")
    assert got == [f"{tmp_path}/guestfail.toml"]


def test_pairs_complete_to_guestfails_masters(scripts: Path, netns: str) -> None:
    """`ip netns exec` gives bash the namespace's /sys/class/net: a veth
    carrying guestfail's marker stands in for a master, its peer for a
    link guestfail did not build."""
    ns = ["ip", "netns", "exec", netns]
    run([*ns, "ip", "link", "add", "gfmaster0", "type", "veth", "peer", "name", "gfother0"])
    run([*ns, "ip", "link", "set", "gfmaster0", "alias", "guestfail:1 test"])
    assert complete(scripts, "guestfail switch ", netns=netns) == ["gfmaster0"]
    assert complete(scripts, "guestfail release gfm", netns=netns) == ["gfmaster0"]
    assert complete(scripts, "guestfail release gfo", netns=netns) == []


def test_zsh_script_parses_and_uses_only_what_it_defines(scripts: Path) -> None:
    zsh = need_tool("zsh", "zsh")
    run([zsh, "-n", str(scripts / "_guestfail")])
    text = (scripts / "_guestfail").read_text()
    assert text.startswith("#compdef guestfail")
    used = set(re.findall(r"\$(_shtab_guestfail[\w-]*_options)\b", text))
    defined = set(re.findall(r"^(_shtab_guestfail\w*_options)=\(", text, re.MULTILINE))
    assert used and used <= defined, f"used but not defined: {sorted(used - defined)}"
    for command in ("check-config", "prepare-unplug", "release", "--config", "_guestfail_masters"):
        assert command in text
