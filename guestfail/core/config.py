"""The configuration: TOML at /etc/guestfail/guestfail.toml, validated into
frozen dataclasses.  Pure: `parse()` takes text; only `load()` reads a file.

Every problem is one `ConfigError` naming the key (dotted, with list indexes,
e.g. ``pair[1].primary.slot``) and what is wrong with it; `parse()` finds
them all and raises them together (`ConfigErrors`), one line each.  An
unknown key that is close to a known one gets a "did you mean".
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from guestfail.core.errors import ConfigError
from guestfail.core.tables import Problems, Reader, did_you_mean, type_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/guestfail/guestfail.toml")
DEFAULT_STATE_DIR = "/run/guestfail"
IFNAMSIZ = 16  # including the terminating NUL: names are at most 15 bytes

BACKENDS = ("bond", "team")
NAMINGS = ("kernel", "keep")
MASTER_POLICIES = ("on-pair", "from-start")
#: the matching rules agent.match may list (after the explicit pairs, in the
#: order it lists them); DEFAULT_RULES when it lists none
RULES = ("serial", "mac", "topology")
DEFAULT_RULES = ("serial", "mac")
FAIL_OVER_MAC = ("auto", "none", "active", "follow")
#: bonding's fail_over_mac: the names the config and the bond's sysfs use,
#: by the number the kernel takes and reports (IFLA_BOND_FAIL_OVER_MAC)
FAIL_OVER_MAC_VALUES = {"none": 0, "active": 1, "follow": 2}


def fail_over_mac_name(value: int) -> str:
    return next((k for k, v in FAIL_OVER_MAC_VALUES.items() if v == value), "none")


ALL_SLAVES_ACTIVE = ("on", "off")
INGRESS = ("unicast", "off")
HWADDR_POLICIES = ("auto", "same_all", "by_active", "only_active")
STANDBY_KEYS = ("name", "mac", "pci", "vmbus")
PRIMARY_KEYS = ("name", "mac", "pci", "slot", "serial")
BRIDGE_KEYS = ("pci", "id")

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_VMBUS_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BAD_NAME_CHARS = frozenset("/: \t\n\v\f\r\0")
_DRIVER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PCI_ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")


def ifname_problem(name: str) -> Optional[str]:
    """Why `name` cannot be a Linux interface name, or None if it can
    (the kernel's dev_valid_name: 1-15 bytes, not . or .., no / : or space)."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        return "is empty"
    if len(raw) >= IFNAMSIZ:
        return f"is {len(raw)} bytes long (at most {IFNAMSIZ - 1})"
    if name in (".", ".."):
        return "is . or .."
    for ch in name:
        # the kernel's isspace() is ASCII: a non-breaking space is a legal name
        if ch in _BAD_NAME_CHARS:
            return f"contains {ch!r}"
    return None


@dataclass(frozen=True)
class Selector:
    """Which device: exactly one of its keys is set."""

    key: str  # name | mac | pci | vmbus | slot | serial; a bridge's: pci | id
    value: str  # normalised: MACs lowercase, serials as decimal text

    def describe(self) -> str:
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class StandbySerial:
    """The serial rule: a standby and the serial the host gave its VF."""

    standby: Selector
    serial: int
    require_mac: bool = True


@dataclass(frozen=True)
class ExplicitPair:
    label: str
    standby: Selector
    primary: Selector
    master: str = ""
    fail_over_mac: str = ""  # "" = the [bond] default


@dataclass(frozen=True)
class BondOptions:
    miimon: int = 100
    fail_over_mac: str = "auto"
    num_peer_notif: int = 1
    all_slaves_active: str = "off"


@dataclass(frozen=True)
class TeamOptions:
    teamd: str = "teamd"
    hwaddr_policy: str = "auto"
    link_watch_delay_up: int = 0
    link_watch_delay_down: int = 0


@dataclass(frozen=True)
class MetricsOptions:
    #: node_exporter textfile to write (atomically) on every change; "" = none
    textfile: str = ""


@dataclass(frozen=True)
class Config:
    backend: str = "bond"
    naming: str = "kernel"
    master_name: str = "gf{n}"
    master_policy: str = "on-pair"
    rules: tuple[str, ...] = DEFAULT_RULES
    standby_drivers: tuple[str, ...] = ("virtio_net", "hv_netvsc")
    primary_drivers: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    state_dir: str = DEFAULT_STATE_DIR
    announce: bool = True
    ingress: str = "unicast"
    networkmanager: str = "auto"
    # seconds a drained VF (prepare-unplug) may stay before the drain is
    # undone; 0: never
    drain_timeout: int = 120
    bond: BondOptions = field(default_factory=BondOptions)
    team: TeamOptions = field(default_factory=TeamOptions)
    metrics: MetricsOptions = field(default_factory=MetricsOptions)
    serials: tuple[StandbySerial, ...] = ()
    pairs: tuple[ExplicitPair, ...] = ()
    # the topology rule's bridges (none: any bridge with NICs below it)
    bridges: tuple[Selector, ...] = ()
    source: str = ""


def normalise_mac(value: str) -> Optional[str]:
    v = value.strip().lower().replace("-", ":")
    return v if _MAC_RE.match(v) else None


def _selector(table: Any, path: str, problems: Problems, keys: tuple[str, ...]) -> Optional[Selector]:
    """The selector, or None with its problems recorded."""
    if not isinstance(table, dict):
        problems.add(path, f"must be a table like {{ {keys[0]} = ... }}, not {type_name(table)}")
        return None
    present = [k for k in table if k in keys]
    unknown = sorted(k for k in table if k not in keys)
    for k in unknown:
        close = did_you_mean(k, keys)
        hint = f"{close[:-1]} use one of" if close else " (use one of"
        problems.add(f"{path}.{k}", f"unknown key{hint} {', '.join(keys)})")
    if unknown:
        return None
    if len(present) != 1:
        problems.add(path, f"needs exactly one of {', '.join(keys)}")
        return None
    key = present[0]
    value = table[key]
    where = f"{path}.{key}"
    if key == "serial":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            problems.add(where, "must be an integer from 0 to 4294967295")
            return None
        return Selector(key, str(value))
    if not isinstance(value, str):
        problems.add(where, f"must be a string, not {type_name(value)}")
        return None
    problem: Optional[str] = None
    if key == "name":
        why = ifname_problem(value)
        if why:
            problem = f"{value!r} is not an interface name: it {why}"
    elif key == "mac":
        mac = normalise_mac(value)
        if mac is None:
            problem = f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)"
        else:
            value = mac
    elif key == "pci":
        if not _PCI_RE.match(value.lower()):
            problem = f"{value!r} is not a PCI address (0000:02:00.0)"
        value = value.lower()
    elif key == "vmbus":
        if not _VMBUS_RE.match(value.lower()):
            problem = f"{value!r} is not a VMBus device id (a GUID)"
        value = value.lower()
    elif key == "id":
        if not _PCI_ID_RE.match(value.lower()):
            problem = f"{value!r} is not a PCI vendor:device ID (1b36:000c)"
        value = value.lower()
    # slot: a PCI slot name as the kernel shows it in /sys/bus/pci/slots
    elif not value or "/" in value or len(value) > 64 or not value.isprintable() or value in (".", ".."):
        problem = f"{value!r} is not a PCI slot name"
    if problem:
        problems.add(where, problem)
        return None
    return Selector(key, value)


# ------------------------------------------------------------------ parse


def parse(text: str, source: str = "") -> Config:
    """Validate a TOML document into a Config, or raise a ConfigError that
    names every problem (a ConfigErrors when there are several)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"not valid TOML: {e}", source) from None
    except (ValueError, RecursionError) as e:  # e.g. deeply nested arrays
        raise ConfigError("", f"not valid TOML: {e}", source) from None

    problems = Problems(source)
    root = Reader(doc, "", problems)
    agent = Reader(root.take("agent", dict, {}), "agent", problems)
    backend = agent.choice("backend", BACKENDS, "bond")
    naming = agent.choice("naming", NAMINGS, "kernel")
    master_name = agent.take("master_name", str, "gf{n}")
    if not _check_template(master_name, "agent.master_name", problems):
        master_name = "gf{n}"
    master_policy = agent.choice("master_policy", MASTER_POLICIES, "on-pair")
    rules = agent.str_list("match", DEFAULT_RULES)
    for i, r in enumerate(rules):
        if r not in RULES:
            problems.add(f"agent.match[{i}]", f"must be one of {', '.join(RULES)}, not {r!r}")
    if len(set(rules)) != len(rules):
        problems.add("agent.match", "lists a rule twice")
    extra_sby = agent.str_list("standby_drivers", ())
    primary_drivers = agent.str_list("primary_drivers", ())
    for key, drivers in (("standby_drivers", extra_sby), ("primary_drivers", primary_drivers)):
        for i, d in enumerate(drivers):
            if not _DRIVER_RE.match(d):
                problems.add(f"agent.{key}[{i}]", f"{d!r} is not a driver name")
    standby_drivers = tuple(dict.fromkeys(("virtio_net", "hv_netvsc", *extra_sby)))
    overlap = set(standby_drivers) & set(primary_drivers)
    if overlap:
        problems.add("agent.primary_drivers", f"{sorted(overlap)[0]} is also a standby driver")
    ignore = agent.str_list("ignore", ())
    for i, item in enumerate(ignore):
        if normalise_mac(item) is None and ifname_problem(item) and not _PCI_RE.match(item.lower()):
            problems.add(f"agent.ignore[{i}]", f"{item!r} is no interface name, MAC or PCI address")
    ignore = tuple(normalise_mac(i) or i for i in ignore)
    state_dir = agent.take("state_dir", str, DEFAULT_STATE_DIR)
    announce = agent.take("announce", bool, True)
    ingress = agent.choice("ingress", INGRESS, "unicast")
    networkmanager = agent.choice("networkmanager", ("auto", "off"), "auto")
    drain_timeout = agent.int_range("drain_timeout", 0, 86400, 120)
    if not state_dir.startswith("/"):
        problems.add("agent.state_dir", "must be an absolute path")
    agent.done()

    b = Reader(root.take("bond", dict, {}), "bond", problems)
    bond = BondOptions(
        miimon=b.int_range("miimon", 0, 10000, 100),
        fail_over_mac=b.choice("fail_over_mac", FAIL_OVER_MAC, "auto"),
        num_peer_notif=b.int_range("num_peer_notif", 0, 255, 1),
        all_slaves_active=b.choice("all_slaves_active", ALL_SLAVES_ACTIVE, "off"),
    )
    b.done()

    t = Reader(root.take("team", dict, {}), "team", problems)
    team = TeamOptions(
        teamd=t.take("teamd", str, "teamd"),
        hwaddr_policy=t.choice("hwaddr_policy", HWADDR_POLICIES, "auto"),
        link_watch_delay_up=t.int_range("link_watch_delay_up", 0, 60000, 0),
        link_watch_delay_down=t.int_range("link_watch_delay_down", 0, 60000, 0),
    )
    t.done()

    m = Reader(root.take("metrics", dict, {}), "metrics", problems)
    textfile = m.take("textfile", str, "")
    if textfile and not (textfile.startswith("/") and textfile.endswith(".prom")):
        # node_exporter's textfile collector reads *.prom files only
        m.err("textfile", f"must be an absolute path ending in .prom, not {textfile!r}")
        textfile = ""
    m.done()
    metrics = MetricsOptions(textfile=textfile)

    serials: list[tuple[int, StandbySerial]] = []
    raw_standbys = root.take("standby", list, [])
    for i, entry in enumerate(raw_standbys):
        path = f"standby[{i}]"
        s = Reader(entry, path, problems)
        sel = None
        if s.has("match"):
            sel = _selector(s.table.pop("match"), f"{path}.match", problems, STANDBY_KEYS)
        elif isinstance(entry, dict):
            problems.add(f"{path}.match", "is required")
        serial = None
        if s.has("serial"):
            serial = s.take("serial", int, None)
            if serial is not None and not 0 <= serial < 2**32:
                problems.add(f"{path}.serial", "must be an integer from 0 to 4294967295")
                serial = None
        elif isinstance(entry, dict):
            problems.add(f"{path}.serial", "is required")
        require_mac = s.take("require_mac", bool, True)
        s.done()
        if sel is not None and serial is not None:
            serials.append((i, StandbySerial(sel, serial, require_mac)))
    seen_serials: dict[int, int] = {}
    seen_sby: dict[Selector, int] = {}
    for i, st in serials:
        if st.serial in seen_serials:
            problems.add(f"standby[{i}].serial", f"{st.serial} is also standby[{seen_serials[st.serial]}]'s")
        else:
            seen_serials[st.serial] = i
        if st.standby in seen_sby:
            problems.add(f"standby[{i}].match", f"same standby as standby[{seen_sby[st.standby]}]")
        else:
            seen_sby[st.standby] = i

    pairs: list[tuple[int, ExplicitPair]] = []
    raw_pairs = root.take("pair", list, [])
    for i, entry in enumerate(raw_pairs):
        path = f"pair[{i}]"
        p = Reader(entry, path, problems)
        label = p.take("name", str, f"pair{i}")
        if not label or not label.isprintable() or len(label) > 64:
            problems.add(f"{path}.name", "must be 1-64 printable characters")
        sby = pri = None
        if p.has("standby"):
            sby = _selector(p.table.pop("standby"), f"{path}.standby", problems, STANDBY_KEYS)
        elif isinstance(entry, dict):
            problems.add(f"{path}.standby", "is required")
        if p.has("primary"):
            pri = _selector(p.table.pop("primary"), f"{path}.primary", problems, PRIMARY_KEYS)
        elif isinstance(entry, dict):
            problems.add(f"{path}.primary", "is required")
        master = p.take("master", str, "")
        if master:
            problem = ifname_problem(master)
            if problem:
                problems.add(f"{path}.master", f"{master!r} is not an interface name: it {problem}")
        fom = p.take("fail_over_mac", str, "")
        if fom and fom not in FAIL_OVER_MAC:
            problems.add(
                f"{path}.fail_over_mac",
                f"must be one of {', '.join(FAIL_OVER_MAC)}{did_you_mean(fom, FAIL_OVER_MAC)}",
            )
        p.done()
        if sby is not None and pri is not None:
            pairs.append((i, ExplicitPair(label, sby, pri, master, fom)))
    for n, (i, a) in enumerate(pairs):
        for j, b2 in pairs[:n]:
            if a.label == b2.label:
                problems.add(f"pair[{i}].name", f"{a.label!r} is also pair[{j}]'s name")
            if a.standby == b2.standby:
                problems.add(f"pair[{i}].standby", f"same standby as pair[{j}]")
            if a.master and a.master == b2.master:
                problems.add(f"pair[{i}].master", f"same master as pair[{j}]")
    bridges: list[Selector] = []
    for i, entry in enumerate(root.take("topology", list, [])):
        path = f"topology[{i}]"
        tp = Reader(entry, path, problems)
        if tp.has("bridge"):
            sel = _selector(tp.table.pop("bridge"), f"{path}.bridge", problems, BRIDGE_KEYS)
            if sel is not None and sel in bridges:
                problems.add(f"{path}.bridge", f"same bridge as topology[{bridges.index(sel)}]")
            elif sel is not None:
                bridges.append(sel)
        elif isinstance(entry, dict):
            problems.add(f"{path}.bridge", "is required")
        tp.done()
    root.done()
    problems.raise_any()

    return Config(
        backend=backend,
        naming=naming,
        master_name=master_name,
        master_policy=master_policy,
        rules=rules,
        standby_drivers=standby_drivers,
        primary_drivers=primary_drivers,
        ignore=ignore,
        state_dir=state_dir,
        announce=announce,
        ingress=ingress,
        networkmanager=networkmanager,
        drain_timeout=drain_timeout,
        bond=bond,
        team=team,
        metrics=metrics,
        serials=tuple(st for _, st in serials),
        pairs=tuple(pr for _, pr in pairs),
        bridges=tuple(bridges),
        source=source,
    )


#: standby names a template is tried with: short, the longest possible, not ASCII
_TEMPLATE_SAMPLES = (("eth0", 0), ("enp0s20f0u1u2c3", 99), ("ünï", 1023))


def _check_template(template: str, key: str, problems: Problems) -> bool:
    """The template must give a valid name for any standby.  With a short
    standby name the name must fit as it is; longer ones are cut by the
    naming rule (guestfail.naming.fit), so for those only the characters
    count.  Everything else is a problem now, not at pairing time."""
    for i, (standby, n) in enumerate(_TEMPLATE_SAMPLES):
        try:
            sample = template.format(n=n, standby=standby)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            problems.add(key, f"bad template (placeholders are {{n}} and {{standby}}): {e}")
            return False
        problem = ifname_problem(sample)
        if i > 0 and problem is not None and problem.startswith("is ") and "bytes long" in problem:
            problem = None  # cut to 15 bytes when used
        if problem:
            problems.add(key, f"gives {sample!r} for a standby named {standby!r}, which {problem}")
            return False
    if "{n" not in template and "{standby" not in template:
        problems.add(key, "needs {n} or {standby} so that masters get different names")
        return False
    return True


def load(path: Optional[Path] = None) -> Config:
    """Read and validate the config file; a missing default file means the
    defaults (guestfail works without configuration)."""
    explicit = path is not None
    p = path or DEFAULT_PATH
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError("", "no such file", str(p)) from None
        return Config(source="(defaults)")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("", f"cannot read: {e}", str(p)) from None
    return parse(text, str(p))
