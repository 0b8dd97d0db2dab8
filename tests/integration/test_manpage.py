"""guestfail(8) must not drift from the code: the commands and options of
`build_parser()`, the exit codes of `errors.Exit` (and the --help epilog),
the configuration keys of config.py with their defaults, the status
document's fields, the D-Bus API and the naming rule's example."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.9 test run
    import tomli as tomllib

from guestfail.cli import commands as cli
from guestfail.core import config as gf_config
from guestfail.core import naming
from guestfail.core import records as state
from guestfail.core.errors import Exit
from guestfail.core.match import KernelManaged, MatchResult, Refusal, Unpaired
from guestfail.core.model import Link, Snapshot
from tests.integration.configkeys import config_keys
from tests.integration.conftest import PACKAGING, REPO, SYSTEM_PATH

MAN = PACKAGING / "man" / "guestfail.8"

_ESCAPES = [
    ("\\(dq", '"'),
    ("\\(->", "->"),
    ("\\(em", "--"),
    ("\\-", "-"),
    ("\\~", " "),
    ("\\&", ""),
    ("\\e", "\\"),
]


ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}


def plain(line: str) -> str:
    """A troff line as text: no macro name, font changes, quotes or escapes.
    Macro arguments are split as troff does ("..." groups); the alternating
    font macros (.BR, .BI, ...) join theirs without spaces."""
    m = re.match(r"^\.([A-Za-z]+)\s*(.*)$", line)
    if m:
        macro, args = m.groups()
        tokens = [q if q or not b else b for q, b in re.findall(r'"([^"]*)"|(\S+)', args)]
        text = ("" if macro in ALTERNATING else " ").join(tokens)
    else:
        text = line
    text = re.sub(r"\\f[BIRP]", "", text)
    for esc, repl in _ESCAPES:
        text = text.replace(esc, repl)
    return text.strip()


@dataclass
class Item:
    """A .TP paragraph: its tag line and its body, at a .RS depth."""

    header: str
    depth: int
    body: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(plain(x) for x in self.body if plain(x))


def sections(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith(".SH "):
            current = line[4:].strip().strip('"')
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def subsections(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in lines:
        if line.startswith(".SS "):
            current = line[4:].strip().strip('"')
            out[current] = []
        else:
            out[current].append(line)
    return out


def items(lines: list[str]) -> list[Item]:
    """The .TP items of a section; .TQ adds another tag to the same item."""
    out: list[Item] = []
    depth = 0
    tag_next = ""
    for line in lines:
        if line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
        elif line.startswith((".TP", ".TQ")):
            tag_next = line[:3]
        elif tag_next:
            shared = out[-1].body if tag_next == ".TQ" and out else []
            tag_next = ""
            out.append(Item(plain(line), depth, shared))
        elif line.startswith((".SS", ".PP", ".SH")):
            if out and depth == 0:
                out.append(Item("", -1))  # ends the last item's body
        elif out:
            out[-1].body.append(line)
    return [i for i in out if i.depth >= 0]


@pytest.fixture(scope="module")
def man() -> dict[str, list[str]]:
    return sections(MAN.read_text(encoding="utf-8"))


OPTION_RE = re.compile(r"(?<![\w-])--?[a-z][a-z-]*")


def cli_options(parser: argparse.ArgumentParser) -> dict[str, str | None]:
    """Option string -> metavar (None for flags), from the parser itself;
    options hidden from --help are not expected in the man page either."""
    out: dict[str, str | None] = {}
    for a in parser._actions:
        if not a.option_strings or a.help == argparse.SUPPRESS:
            continue
        metavar = None
        if a.nargs != 0:
            metavar = str(a.metavar or a.dest.upper())
        for o in a.option_strings:
            out[o] = metavar
    return out


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    raise AssertionError("guestfail has no subcommands?")


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    return [str(a.metavar or a.dest) for a in parser._actions if not a.option_strings]


def test_every_command_with_its_arguments_and_options(man: dict[str, list[str]]) -> None:
    parser = cli.build_parser()
    commands = subcommands(parser)
    documented: dict[str, Item] = {}
    options: dict[str, list[str]] = {}
    last = ""
    for item in items(man["COMMANDS"]):
        if item.depth == 0:
            last = item.header.split()[0]
            assert last not in documented, f"{last} is documented twice"
            documented[last] = item
            options[last] = []
        else:
            options[last].append(item.header)
    assert sorted(documented) == sorted(commands), "COMMANDS and build_parser() list different commands"
    for name, sub in commands.items():
        header = documented[name].header
        args = [w for w in re.split(r"[\s\[\]]+", header)[1:] if w and w != "..."]
        assert args == positionals(sub), f"{name}: the man page shows {args}"
        want = {o: m for o, m in cli_options(sub).items() if o not in ("-h", "--help")}
        got: dict[str, str | None] = {}
        for h in options[name]:
            words = h.split()
            got[words[0]] = words[1] if len(words) > 1 else None
        assert got == want, f"{name}: options in the man page {got}, in the CLI {want}"


def test_every_global_option(man: dict[str, list[str]]) -> None:
    parser = cli.build_parser()
    want = cli_options(parser)
    got: dict[str, str | None] = {}
    for item in items(man["OPTIONS"]):
        opts = OPTION_RE.findall(item.header)
        assert opts, item.header
        rest = OPTION_RE.sub("", item.header).replace(",", " ").split()
        for o in opts:
            got[o] = rest[0] if rest else None
    assert got == want
    synopsis = " ".join(plain(x) for x in man["SYNOPSIS"])
    for o, metavar in want.items():
        assert o in synopsis
        if metavar:
            assert f"{o} {metavar}" in synopsis


def test_exit_status_is_errors_exit_and_the_help_epilog(man: dict[str, list[str]]) -> None:
    documented = {int(i.header): i.text for i in items(man["EXIT STATUS"])}
    assert set(documented) == {int(e) for e in Exit}
    epilog = dict(
        (int(m.group(1)), m.group(2)) for m in re.finditer(r"^\s+(\d+)\s+(.+)$", cli.EPILOG, re.MULTILINE)
    )
    assert set(epilog) == set(documented), "the --help epilog and errors.Exit disagree"
    for code, text in documented.items():
        assert text.rstrip(".").lower() == epilog[code].lower(), f"exit status {code}"


def _defaults() -> dict[str, dict[str, Any]]:
    """What each documented default must be, from config.py's dataclasses."""
    c = gf_config.Config()
    agent = {
        "backend": c.backend,
        "naming": c.naming,
        "master_name": c.master_name,
        "master_policy": c.master_policy,
        "match": list(c.rules),
        # the extra standby drivers: virtio_net and hv_netvsc are always there
        "standby_drivers": [d for d in c.standby_drivers if d not in ("virtio_net", "hv_netvsc")],
        "primary_drivers": list(c.primary_drivers),
        "ignore": list(c.ignore),
        "state_dir": c.state_dir,
    }
    pair_fields = {f.name: f.default for f in dataclasses.fields(gf_config.ExplicitPair)}
    serial_fields = {f.name: f.default for f in dataclasses.fields(gf_config.StandbySerial)}
    return {
        "agent": agent,
        "bond": dataclasses.asdict(gf_config.BondOptions()),
        "team": dataclasses.asdict(gf_config.TeamOptions()),
        "metrics": dataclasses.asdict(gf_config.MetricsOptions()),
        "standby": {"require_mac": serial_fields["require_mac"]},
        "pair": {"master": pair_fields["master"], "fail_over_mac": pair_fields["fail_over_mac"]},
        "topology": {},  # bridge: required, no default
    }


def test_configuration_has_every_key_with_its_default(man: dict[str, list[str]]) -> None:
    keys = config_keys()
    assert {"backend", "naming", "state_dir"} <= keys["agent"], "configkeys cannot read config.py any more"
    defaults = _defaults()
    subs = subsections(man["CONFIGURATION"])
    tables = {name.strip("[]"): lines for name, lines in subs.items() if name.startswith("[")}
    assert set(tables) == keys[""], "CONFIGURATION needs one subsection per table"
    for table, lines in tables.items():
        documented: dict[str, str] = {}
        for item in items(lines):
            key, eq, value = item.header.partition(" = ")
            assert eq, f"[{table}] {item.header!r}: expected 'key = default'"
            documented[key] = value
            assert item.text, f"[{table}] {key} has no description"
        assert set(documented) == keys[table], f"[{table}]"
        for key, want in defaults[table].items():
            got = tomllib.loads(f"x = {documented[key]}")["x"]
            assert got == want, f"[{table}] {key}: the man page says {documented[key]}, config.py {want!r}"


def _status_fields() -> set[str]:
    link = Link(ifindex=1, name="eth0")
    sections_ = state.match_sections(
        MatchResult(
            refusals=[Refusal((1,), "r")],
            unpaired=[Unpaired(1, "standby", "r")],
            kernel_managed=[KernelManaged("netvsc", 1, (1,))],
            ignored=[(1, "r")],
        ),
        Snapshot(links={1: link}),
    )
    doc = state.document([state.PairRecord("k")], sections_, {"running": False}, "live")
    fields = set(doc) | set(doc["pairs"][0])
    for section in ("refusals", "unpaired", "kernel_managed", "ignored"):
        fields |= set(doc[section][0])
    fields |= set(state.Switch(0.0, "a", "b", "r", None, "guestfail").to_json())
    # the daemon's own section, and what `status` adds for a state file
    fields |= _dict_keys_returned(REPO / "guestfail" / "agent" / "daemon.py", "daemon_info")
    fields |= _subscript_assignments(REPO / "guestfail" / "cli" / "status.py", "gather")
    return fields


def _function(path: Path, name: str) -> ast.FunctionDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"no {name}() in {path}")


def _dict_keys_returned(path: Path, name: str) -> set[str]:
    out = set()
    for node in ast.walk(_function(path, name)):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
            out |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    assert out, f"{name}() returns no dict literal any more"
    return {str(k) for k in out}


def _subscript_assignments(path: Path, name: str) -> set[str]:
    out = set()
    for node in ast.walk(_function(path, name)):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant):
                    out.add(str(t.slice.value))
    return out


def test_status_json_names_every_field(man: dict[str, list[str]]) -> None:
    text = " ".join(plain(x) for x in man["STATUS JSON"])
    fields = _status_fields()
    assert {"schema", "health", "pairs", "latency_ms", "pid", "state_file_age_s"} <= fields
    missing = sorted(f for f in fields if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text))
    assert missing == [], f"STATUS JSON does not mention {missing}"


def test_metrics_names_every_metric(man: dict[str, list[str]]) -> None:
    """METRICS lists every metric guestfail.system.metrics writes (without the
    guestfail_ prefix; a histogram by its name)."""
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from guestfail.system import metrics
    from tests.unit.test_metrics import doc_of, record, switch

    rec = record()
    switch(rec, 2, "ens4npf lost carrier", 12.0)
    counters = metrics.Counters()
    doc = doc_of(rec)
    counters.update(doc)
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry(doc, counters)).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    assert {"guestfail_up", "guestfail_pair_switches_total", "guestfail_pair_switch_latency_seconds"} <= names
    documented = " ".join(plain(x) for x in man["METRICS"])
    missing = sorted(
        n
        for n in names
        if not re.search(rf"(?<![\w]){re.escape(n[len('guestfail_') :])}(?![\w])", documented)
    )
    assert missing == [], f"METRICS does not mention {missing}"


def test_dbus_api_names_every_method_signal_and_property(man: dict[str, list[str]]) -> None:
    text = " ".join(plain(x) for x in man["D-BUS API"])
    tree = ast.parse((REPO / "guestfail" / "agent" / "server.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AgentInterface")
    members = []
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in node.decorator_list:
                fn = d.func if isinstance(d, ast.Call) else d
                if isinstance(fn, ast.Name) and fn.id in ("method", "signal", "dbus_property"):
                    members.append(node.name)
    assert {"Status", "Rescan", "Switch", "PrepareUnplug", "ActiveChanged", "Health"} <= set(members)
    constants = {
        n.targets[0].id: n.value.value
        for n in tree.body
        if isinstance(n, ast.Assign)
        and isinstance(n.targets[0], ast.Name)
        and isinstance(n.value, ast.Constant)
        and isinstance(n.value.value, str)
    }
    names = [
        constants[k]
        for k in constants
        if k in ("BUS_NAME", "OBJECT_PATH", "INTERFACE") or k.startswith("ERR_")
    ]
    for word in [*members, *names]:
        assert re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", text), f"D-BUS API does not mention {word}"


def test_naming_example_is_what_the_code_does(man: dict[str, list[str]]) -> None:
    text = " ".join(plain(x) for x in man["DESCRIPTION"])
    m = re.search(r"(\S+) gives (\S+) and (\S+?)[.,]? ", text)
    assert m, "the naming example is gone"
    name, sby, prim = m.groups()
    assert len(name.encode()) + len(naming.STANDBY_SUFFIX) > naming.MAX, "the example should need shortening"
    assert (sby, prim) == (naming.standby_name(name), naming.primary_name(name))
    assert f"{naming.STANDBY_SUFFIX}" in text and f"{naming.PRIMARY_SUFFIX}" in text


def test_header_version_is_the_package_version() -> None:
    from guestfail import __version__

    th = next(x for x in MAN.read_text().splitlines() if x.startswith(".TH "))
    assert f'"guestfail {__version__}"' in th


def test_man_renders_without_warnings() -> None:
    man_cmd = shutil.which("man", path=SYSTEM_PATH)
    if man_cmd is None:
        pytest.skip("man is not installed (apt install man-db)")
    proc = subprocess.run(
        [man_cmd, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(MAN)],
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH, "LC_ALL": "C.UTF-8", "MANROFFSEQ": ""},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
