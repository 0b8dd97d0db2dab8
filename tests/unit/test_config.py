from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestfail.core import config
from guestfail.core.config import parse
from guestfail.core.errors import ConfigError

FULL = """
[agent]
backend = "team"
naming = "keep"
master_name = "uplink{n}"
master_policy = "from-start"
match = ["mac"]
standby_drivers = ["xen_netfront"]
primary_drivers = ["mlx5_core", "e1000"]
ignore = ["eth9", "02:AA:BB:CC:DD:EE", "0000:00:03.0"]
state_dir = "/run/gf-test"

[bond]
miimon = 50
fail_over_mac = "active"
num_peer_notif = 3
all_slaves_active = "on"

[team]
hwaddr_policy = "by_active"

[[standby]]
match = { name = "eth1" }
serial = 5001

[[standby]]
match = { mac = "02-00-00-00-00-22" }
serial = 7
require_mac = false

[[pair]]
name = "storage"
standby = { pci = "0000:01:00.0" }
primary = { slot = "0-2" }
master = "storage0"
fail_over_mac = "none"
"""


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = config.load()
    assert cfg.backend == "bond"
    assert cfg.naming == "kernel"
    assert cfg.rules == ("serial", "mac")
    assert cfg.standby_drivers == ("virtio_net", "hv_netvsc")
    assert cfg.bond.miimon == 100
    assert cfg.source == "(defaults)"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_full_config() -> None:
    cfg = parse(FULL, "full.toml")
    assert cfg.backend == "team"
    assert cfg.master_name == "uplink{n}"
    assert cfg.rules == ("mac",)
    assert cfg.standby_drivers == ("virtio_net", "hv_netvsc", "xen_netfront")
    assert cfg.ignore == ("eth9", "02:aa:bb:cc:dd:ee", "0000:00:03.0")
    assert cfg.bond.fail_over_mac == "active"
    assert cfg.bond.all_slaves_active == "on"
    assert cfg.team.hwaddr_policy == "by_active"
    assert [(s.standby.key, s.standby.value, s.serial, s.require_mac) for s in cfg.serials] == [
        ("name", "eth1", 5001, True),
        ("mac", "02:00:00:00:00:22", 7, False),
    ]
    (p,) = cfg.pairs
    assert (p.label, p.standby.value, p.primary.key, p.primary.value, p.master) == (
        "storage",
        "0000:01:00.0",
        "slot",
        "0-2",
        "storage0",
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[agent]\nbackend = 'ovs'", "agent.backend", "must be one of bond, team"),
        ("[agent]\nbackned = 'bond'", "agent.backned", "unknown key"),
        ("[agnet]\n", "agnet", "unknown key"),
        ("[bond]\nmiimon = -1", "bond.miimon", "between 0 and 10000"),
        ("[bond]\nmiimon = true", "bond.miimon", "must be an integer, not a boolean"),
        ("[bond]\nmiimon = '100'", "bond.miimon", "must be an integer, not a string"),
        ("[agent]\nmatch = ['mac', 'mac']", "agent.match", "twice"),
        ("[agent]\nmatch = ['colour']", "agent.match[0]", "must be one of serial, mac"),
        ("[agent]\nignore = [1]", "agent.ignore[0]", "must be a string"),
        ("[agent]\nstate_dir = 'run/x'", "agent.state_dir", "absolute"),
        ("[agent]\nmaster_name = 'bond'", "agent.master_name", "needs {n} or {standby}"),
        ("[agent]\nmaster_name = '{x}'", "agent.master_name", "bad template"),
        ("[agent]\nmaster_name = 'averyveryverylong{n}'", "agent.master_name", "bytes long"),
        ("[agent]\nprimary_drivers = ['virtio_net']", "agent.primary_drivers", "also a standby driver"),
        ("[agent]\nprimary_drivers = ['bad driver']", "agent.primary_drivers[0]", "not a driver name"),
        ("[[standby]]\nserial = 1", "standby[0].match", "is required"),
        ("[[standby]]\nmatch = { name = 'eth1' }", "standby[0].serial", "is required"),
        (
            "[[standby]]\nmatch = { name = 'eth1', mac = '02:00:00:00:00:01' }\nserial = 1",
            "standby[0].match",
            "exactly one",
        ),
        ("[[standby]]\nmatch = { nam = 'eth1' }\nserial = 1", "standby[0].match.nam", "unknown key"),
        ("[[standby]]\nmatch = { mac = 'zz' }\nserial = 1", "standby[0].match.mac", "not a MAC address"),
        ("[[standby]]\nmatch = { name = 'a/b' }\nserial = 1", "standby[0].match.name", "contains '/'"),
        (
            "[[standby]]\nmatch = { name = 'sixteen-chars-xx' }\nserial = 1",
            "standby[0].match.name",
            "16 bytes",
        ),
        ("[[standby]]\nmatch = { name = 'a' }\nserial = -1", "standby[0].serial", "0 to 4294967295"),
        (
            "[[standby]]\nmatch = { name = 'a' }\nserial = 1\n"
            "[[standby]]\nmatch = { name = 'b' }\nserial = 1",
            "standby[1].serial",
            "also standby[0]'s",
        ),
        ("[[pair]]\nstandby = { name = 'a' }", "pair[0].primary", "is required"),
        (
            "[[pair]]\nstandby = { name = 'a' }\nprimary = { vmbus = 'x' }",
            "pair[0].primary.vmbus",
            "unknown key",
        ),
        (
            "[[pair]]\nstandby = { pci = '1:2:3' }\nprimary = { slot = '1' }",
            "pair[0].standby.pci",
            "PCI address",
        ),
        (
            "[[pair]]\nstandby = { name = 'a' }\nprimary = { serial = 'x' }",
            "pair[0].primary.serial",
            "integer",
        ),
        (
            "[[pair]]\nstandby = { name = 'a' }\nprimary = { slot = '1' }\n"
            "[[pair]]\nstandby = { name = 'a' }\nprimary = { slot = '2' }",
            "pair[1].standby",
            "same standby as pair[0]",
        ),
        (
            "[[pair]]\nstandby = { name = 'a' }\nprimary = { slot = '1' }\nmaster = 'a b'",
            "pair[0].master",
            "' '",
        ),
        ("pair = 3", "pair", "must be an array"),
        ("[metrics]\ntextfile = 'guestfail.prom'", "metrics.textfile", "absolute path ending in .prom"),
        ("[metrics]\ntextfile = '/var/lib/x.txt'", "metrics.textfile", "absolute path ending in .prom"),
        ("[metrics]\ntextfle = '/x.prom'", "metrics.textfle", "unknown key (did you mean textfile?)"),
        ("[agent]\nbackend = ", "", "not valid TOML"),
    ],
)
def test_errors_name_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "g.toml")
    e = info.value
    assert len(e.errors) == 1, "one mistake, one problem (no follow-on errors)"
    assert e.key == key
    assert problem in e.problem
    msg = str(e)
    assert "\n" not in msg
    assert msg.startswith("g.toml: ")
    if key:
        assert f"{key}: " in msg


def test_names_with_odd_but_legal_characters() -> None:
    # the kernel allows any byte but / : NUL and ASCII whitespace
    cfg = parse('[[pair]]\nstandby = { name = "ét-0\u00a0x" }\nprimary = { mac = "02:00:00:00:00:01" }')
    assert cfg.pairs[0].standby.value == "ét-0\u00a0x"
    assert config.ifname_problem("a" * 15) is None
    assert config.ifname_problem("é" * 8) == "is 16 bytes long (at most 15)"
    assert config.ifname_problem("..") == "is . or .."


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_text_loads_or_fails_with_one_line(text: str) -> None:
    try:
        parse(text)
    except ConfigError as e:
        _one_line_each(e)


def _one_line_each(e: ConfigError) -> None:
    """Each problem is one line of the message, naming its key."""
    assert e.errors
    assert str(e).splitlines() == [str(x) for x in e.errors]
    for x in e.errors:
        assert "\n" not in str(x)
        assert str(x).endswith(x.problem)


_value = st.recursive(
    st.one_of(st.integers(-5, 70000), st.booleans(), st.text(max_size=20), st.floats(allow_nan=False)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["name", "mac", "serial", "slot", "x"]), inner, max_size=3),
    ),
    max_leaves=8,
)
_tables = st.dictionaries(
    st.sampled_from(["agent", "bond", "team", "standby", "pair", "other"]),
    st.one_of(
        st.dictionaries(
            st.sampled_from(
                [
                    "backend",
                    "naming",
                    "miimon",
                    "match",
                    "ignore",
                    "master_name",
                    "serial",
                    "standby",
                    "primary",
                    "x",
                ]
            ),
            _value,
            max_size=4,
        ),
        st.lists(
            st.dictionaries(
                st.sampled_from(["match", "serial", "standby", "primary", "name", "master"]),
                _value,
                max_size=4,
            ),
            max_size=3,
        ),
    ),
    max_size=4,
)


def _tv(v: object) -> str:
    """A TOML rendering of a Python value (inline tables for dicts)."""
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, int) else json.dumps(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_tv(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_tv(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def _toml(doc: dict) -> str:  # type: ignore[type-arg]
    return "\n".join(f"{k} = {_tv(v)}" for k, v in doc.items())


@settings(max_examples=300, deadline=None)
@given(_tables)
def test_structured_garbage_loads_or_fails_with_one_line(doc: dict) -> None:  # type: ignore[type-arg]
    text = _toml(doc)
    try:
        parse(text)
    except ConfigError as e:
        _one_line_each(e)


def test_every_problem_is_reported_in_order() -> None:
    text = (
        "[agent]\n"
        "backned = 'bond'\n"  # misspelt key
        "naming = 'kernal'\n"  # misspelt value
        "[bond]\n"
        "miimon = -4\n"
        "[[standby]]\n"
        "match = { nmae = 'eth1' }\n"
        "[[pair]]\n"
        "standby = { name = 'a' }\n"
        "primary = { slot = '1' }\n"
        "mastre = 'x'\n"
        "[bnod]\n"
    )
    with pytest.raises(ConfigError) as info:
        parse(text, "g.toml")
    lines = str(info.value).splitlines()
    assert lines == [
        "g.toml: agent.naming: must be one of kernel, keep, not 'kernal' (did you mean kernel?)",
        "g.toml: agent.backned: unknown key (did you mean backend?)",
        "g.toml: bond.miimon: must be between 0 and 10000, not -4",
        "g.toml: standby[0].match.nmae: unknown key (did you mean name? use one of name, mac, pci, vmbus)",
        "g.toml: standby[0].serial: is required",
        "g.toml: pair[0].mastre: unknown key (did you mean master?)",
        "g.toml: bnod: unknown key (did you mean bond?)",
    ]
    assert info.value.key == "agent.naming"  # the first, for callers that want one


def test_no_did_you_mean_for_a_key_unlike_any() -> None:
    with pytest.raises(ConfigError) as info:
        parse("[agent]\nzzzz = 1\n", "g.toml")
    assert str(info.value) == "g.toml: agent.zzzz: unknown key"


def test_a_table_that_is_not_a_table_and_a_bad_entry_do_not_hide_the_rest() -> None:
    with pytest.raises(ConfigError) as info:
        parse("agent = 3\nstandby = [1]\n[bond]\nmiimon = 'x'\n", "g.toml")
    assert [e.key for e in info.value.errors] == ["agent", "bond.miimon", "standby[0]"]


def test_metrics_textfile() -> None:
    assert parse("").metrics.textfile == ""
    cfg = parse('[metrics]\ntextfile = "/var/lib/prometheus/node-exporter/guestfail.prom"\n')
    assert cfg.metrics.textfile == "/var/lib/prometheus/node-exporter/guestfail.prom"


@pytest.mark.parametrize(
    ("template", "culprit"),
    [
        ("{standby}:{n}", "contains ':'"),
        ("{standby:.0}", "is empty"),
        ("averyveryverylong{n}", "bytes long"),
    ],
)
def test_a_master_template_is_tried_with_every_kind_of_standby_name(template: str, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit) as e:
        parse(f"[agent]\nnaming = 'keep'\nmaster_name = '{template}'\n")
    assert e.value.key == "agent.master_name"


def test_a_master_template_that_only_long_standby_names_make_too_long_is_fine() -> None:
    assert parse("[agent]\nnaming = 'keep'\nmaster_name = '{standby}-bond'\n").master_name == "{standby}-bond"
