"""The configuration keys guestfail/core/config.py accepts, read from its source.

`parse()` takes keys out of each TOML table through a `Reader`
(``agent.take("backend", ...)``, ``b.int_range("miimon", ...)``,
``s.table.pop("match")``...).  Reading those calls from the AST gives the
real key set, so the man page, the example configuration and the cloud-init
schema can be checked against it: a key added to config.py and not
documented fails a test.
"""

from __future__ import annotations

import ast
from pathlib import Path

CONFIG_PY = Path(__file__).resolve().parents[2] / "guestfail" / "core" / "config.py"
_READER_METHODS = {"take", "choice", "int_range", "str_list"}


def _literal_prefix(node: ast.expr) -> str:
    """'standby' for f"standby[{i}]", 'agent' for "agent"."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value.split("[", 1)[0]
    raise ValueError(f"cannot read a table name from {ast.dump(node)}")


def config_keys(source: str | None = None) -> dict[str, set[str]]:
    """{table: keys}; the root table is "" (its keys are the table names)."""
    tree = ast.parse(source if source is not None else CONFIG_PY.read_text(encoding="utf-8"))
    parse = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "parse")

    # string variables the readers get their path from (path = f"standby[{i}]"),
    # with the line they are set on: a reader uses the latest one above it
    strings: list[tuple[int, str, ast.expr]] = []
    for node in ast.walk(parse):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, (ast.Constant, ast.JoinedStr))
        ):
            strings.append((node.lineno, node.targets[0].id, node.value))

    readers: dict[str, str] = {}
    for node in ast.walk(parse):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "Reader"
        ):
            path = node.value.args[1]
            if isinstance(path, ast.Name):
                name, line = path.id, node.lineno
                path = max((s for s in strings if s[1] == name and s[0] < line), key=lambda s: s[0])[2]
            readers[node.targets[0].id] = _literal_prefix(path)

    keys: dict[str, set[str]] = {table: set() for table in readers.values()}
    for node in ast.walk(parse):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute) or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        owner = node.func.value
        # reader.take("key", ...) and friends
        if node.func.attr in _READER_METHODS and isinstance(owner, ast.Name) and owner.id in readers:
            keys[readers[owner.id]].add(first.value)
        # reader.table.pop("key")
        elif (
            node.func.attr == "pop"
            and isinstance(owner, ast.Attribute)
            and owner.attr == "table"
            and isinstance(owner.value, ast.Name)
            and owner.value.id in readers
        ):
            keys[readers[owner.value.id]].add(first.value)
    return keys
