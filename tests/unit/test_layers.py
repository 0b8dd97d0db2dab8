"""The package's layers, as its folders show them, and what each may import
(each folder's __init__ says it): checked on the source, so a new import that
breaks a layer or closes a cycle fails here, not in a guest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "guestfail"

#: layer -> the layers it may import from (itself included)
ALLOWED = {
    "core": {"core"},
    "system": {"core", "system"},
    "backends": {"core", "system", "backends"},
    "integrations": {"core", "system", "integrations"},
    "agent": {"root", "core", "system", "backends", "integrations", "agent"},
    "cli": {"root", "core", "system", "backends", "integrations", "agent", "cli"},
    "probe": {"root", "core", "probe"},
    "root": {"root", "cli"},  # guestfail/__init__ (the version) and __main__
}
#: libraries that talk to the system: never in the pure layer
IO_LIBRARIES = ("pyroute2", "pyudev", "dbus_fast", "dbus_next", "socket", "subprocess", "fcntl")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "root"
    return parts[1]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(guestfail modules, other top-level modules) that `path` imports,
    at module level or in functions, TYPE_CHECKING blocks aside."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ours: set[str] = set()
    others: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                (ours if a.name.split(".")[0] == "guestfail" else others).add(
                    a.name if a.name.startswith("guestfail") else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "guestfail":
                others.add(node.module.split(".")[0])
                continue
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                ours.add(sub if sub in known else node.module)
    return ours, others


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known)[0] - {m} for m, p in known.items()}


@pytest.mark.parametrize("module", sorted(modules()))
def test_each_module_imports_only_from_the_layers_below(module: str) -> None:
    known = modules()
    ours, others = imports(known[module], known)
    bad = sorted(m for m in ours if layer(m) not in ALLOWED[layer(module)])
    assert bad == [], f"{module} ({layer(module)}) may not import {bad}"
    if layer(module) == "core":
        io = sorted(set(others) & set(IO_LIBRARIES))
        assert io == [], f"{module} is in the pure layer but imports {io}"


def test_no_import_cycles() -> None:
    g = graph()
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        path.append(m)
        for n in sorted(g.get(m, ())):
            if seen.get(n) == 1:
                cycle = [*path[path.index(n) :], n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in seen:
                visit(n)
        path.pop()
        seen[m] = 2

    for m in sorted(g):
        if m not in seen:
            visit(m)


def test_every_layer_says_what_it_may_import() -> None:
    for d in sorted(p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{d.name}/__init__.py does not say what the layer may import"
        assert d.name in ALLOWED, f"{d.name} is a layer this test does not know"


def test_no_module_is_a_warehouse() -> None:
    """The redesign's limits: no module over 500 lines, no class over 25
    methods."""
    for m, p in modules().items():
        text = p.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 500, f"{m} has {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                methods = [x for x in node.body if isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef))]
                assert len(methods) <= 25, f"{m}.{node.name} has {len(methods)} methods"
