"""Reading TOML tables for guestfail.core.config (pure): a reader per table
that takes values out with their type checked, so what is left over are
unknown keys, and a collector of problems, so that one pass names them all,
each with the dotted key and, for a misspelt key or value, a "did you
mean"."""

from __future__ import annotations

import difflib
from typing import Any

from guestfail.core.errors import ConfigError, ConfigErrors


class Problems:
    """Every problem of one file, in the order they are found: `parse()`
    goes on after a bad value (using the default in its place) so that
    `check-config` can name them all at once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[ConfigError] = []

    def add(self, key: str, problem: str) -> None:
        self.found.append(ConfigError(key, problem, self.source))

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise self.found[0]
        if self.found:
            raise ConfigErrors(self.found)


def did_you_mean(word: str, known: Any) -> str:
    """' (did you mean X?)' when one of `known` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Reader:
    """Takes values out of one TOML table, so leftovers are unknown keys.
    A bad value is recorded in `problems` and the default used instead."""

    def __init__(self, table: Any, path: str, problems: Problems) -> None:
        self.path = path
        self.problems = problems
        self.known: set[str] = set()
        if not isinstance(table, dict):
            problems.add(path, f"must be a table, not {type_name(table)}")
            table = {}
        self.table = dict(table)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def err(self, name: str, problem: str) -> None:
        self.problems.add(self.key(name), problem)

    def has(self, name: str) -> bool:
        self.known.add(name)
        return name in self.table

    def take(self, name: str, typ: type, default: Any) -> Any:
        if not self.has(name):
            return default
        value = self.table.pop(name)
        # bool is an int in Python; TOML keeps them apart, so do we.
        if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
            self.err(name, f"must be an integer, not {type_name(value)}")
            return default
        if typ is not int and not isinstance(value, typ):
            self.err(name, f"must be {type_name_of(typ)}, not {type_name(value)}")
            return default
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.take(name, str, default)
        if value not in choices:
            self.err(
                name, f"must be one of {', '.join(choices)}, not {value!r}{did_you_mean(value, choices)}"
            )
            return default
        return str(value)

    def int_range(self, name: str, lo: int, hi: int, default: int) -> int:
        value = int(self.take(name, int, default))
        if not lo <= value <= hi:
            self.err(name, f"must be between {lo} and {hi}, not {value}")
            return default
        return value

    def str_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.take(name, list, None)
        if value is None:
            return default
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.problems.add(f"{self.key(name)}[{i}]", f"must be a string, not {type_name(item)}")
        return tuple(out)

    def done(self) -> None:
        """Every key left over is unknown: each is a problem of its own."""
        for name in sorted(self.table):
            self.err(name, "unknown key" + did_you_mean(name, self.known))


def type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def type_name_of(typ: type) -> str:
    return {str: "a string", bool: "a boolean", list: "an array", dict: "a table"}.get(typ, typ.__name__)
