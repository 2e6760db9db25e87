"""The package map of docs/architecture.md, checked on the source: every import (function-level
ones included) points down the layers, and the module graph has no cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Source folder -> the package it installs as (pyproject.toml, [tool.setuptools.package-dir]).
FOLDERS = {"gsaccel": "gsaccel", "hw": "gsaccel.hw", "sw": "gsaccel.sw", "sim": "gsaccel.sim",
           "boards": "gsaccel.boards"}

#: Bottom first; a module may import only from its own layer or a lower one
#: (docs/architecture.md, "Package map").
LAYERS = [
    # The namespace roots: they import nothing but the aliases of old module names, so
    # importing any module (which runs its parent packages first) stays cheap.
    ["gsaccel", "gsaccel.sw", "gsaccel._compat"],
    ["gsaccel.hw"],
    ["gsaccel.sw.errors"],
    ["gsaccel.sw.format"],
    ["gsaccel.sw.golden"],
    ["gsaccel.sw.prune", "gsaccel.sw.models"],
    ["gsaccel.sw.compile"],
    ["gsaccel.sim"],
    ["gsaccel.boards"],
    ["gsaccel.sw.runtime"],
    ["gsaccel.sw.api", "gsaccel.sw.bench", "gsaccel.sw.demo", "gsaccel.sw.sweep"],
    ["gsaccel.sw.cli"],
]


def _modules():
    """Module name -> (path, is a package), for every source module."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            modules[".".join([package, *parts])] = (path, is_package)
    return modules


MODULES = _modules()


def _imports(name):
    """The gsaccel modules ``name`` imports anywhere in its body, with the packages whose
    ``__init__`` such an import runs."""
    path, is_package = MODULES[name]
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # ``from package import submodule`` imports the submodule too.
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names
                                  if f"{module}.{alias.name}" in MODULES]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for end in range(2, len(parts) + 1):     # the parent packages run first
                prefix = ".".join(parts[:end])
                if prefix in MODULES and not name.startswith(prefix + ".") and prefix != name:
                    found.add(prefix)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name):
    best = None
    for rank, members in enumerate(LAYERS):
        for member in members:
            if (name == member or (rank and name.startswith(member + "."))) and \
                    (best is None or len(member) > len(best[1])):
                best = (rank, member)
    return best


def test_every_module_has_a_layer():
    assert [name for name in MODULES if _layer(name) is None] == []


def test_namespace_roots_import_only_the_aliases():
    assert {name: sorted(GRAPH[name]) for name in LAYERS[0]} == {
        "gsaccel": ["gsaccel._compat"], "gsaccel.sw": [], "gsaccel._compat": []}


def test_hw_imports_nothing_above_it():
    bad = {name: sorted(t for t in targets if not t.startswith("gsaccel.hw"))
           for name, targets in GRAPH.items() if name.startswith("gsaccel.hw")}
    assert {name: targets for name, targets in bad.items() if targets} == {}


def test_imports_point_down():
    upward = []
    for name, targets in GRAPH.items():
        rank, _ = _layer(name)
        for target in targets:
            target_rank, member = _layer(target)
            # A package may import its own sub-packages (its __init__ re-exports them).
            if target_rank > rank and not target.startswith(name + "."):
                upward.append(f"{name} -> {target} ({member})")
    assert upward == []


def test_no_import_cycle():
    # Tarjan's strongly connected components; a component of more than one module is a
    # cycle. A package importing its own submodules is not one (Python runs the package
    # first), so edges from a submodule to its own ancestors were left out above.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


def test_sw_has_at_most_a_dozen_modules_of_its_own():
    direct = [path.name for path in (ROOT / "sw").glob("*.py")]
    assert len(direct) <= 12, direct
