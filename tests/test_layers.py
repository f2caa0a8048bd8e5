"""Imports only go down the layers, and never in a circle (docs/architecture.md, Layout).

Every module of `fantasy/` is read with `ast` (nothing is imported): each `import` and `from ... import`, at
module level, inside functions, under `TYPE_CHECKING` and relative ones, is an edge to the deepest module of
the package it names. The checks fail on an import from a lower layer to a higher one (naming file, line
and both layers) and on any circle of imports (naming it), between modules and between the layer map's units.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fantasy"

# The layer map, lowest first: (layer, its units). A unit is a subpackage or a module; a module belongs to the
# unit that names it or its package (the root package itself only by its exact name). A module may import
# from its own layer and the ones below it.
# LAYERS-BEGIN (tests/test_layers.py's map; docs/architecture.md's layer diagram shows the same)
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["fantasy.errors", "fantasy.stop", "fantasy.quiet", "fantasy.examples"]),
    ("media, faces", ["fantasy.media", "fantasy.face"]),
    ("algorithm, metrics", ["fantasy.model", "fantasy.metrics"]),
    ("weights", ["fantasy.weights"]),
    ("speed, training", ["fantasy.speed", "fantasy.train"]),
    ("one generation", ["fantasy.settings", "fantasy.release", "fantasy.long_video", "fantasy.generation"]),
    ("app logic", ["fantasy.app"]),
    ("benchmark", ["fantasy.bench"]),
    ("entry points", ["fantasy.cli", "fantasy.__main__", "fantasy"]),
]
# LAYERS-END


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (the deepest module of the package the import names)
    path: Path
    line: int


def package_modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` file of the package (a package is its `__init__.py`)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _deepest(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path], package: str = PACKAGE) -> list[Edge]:
    """The edges from module `name` (its file `path`) to other modules of the package."""
    own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = own_package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import name`: the module pkg.name if there is one, else pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target == package or target.startswith(package + "."):
                found = _deepest(target, modules)
                if found and found != name:
                    edges.append(Edge(name, found, path, node.lineno))
    return edges


def import_graph(root: Path, package: str = PACKAGE) -> tuple[dict[str, Path], list[Edge]]:
    modules = package_modules(root, package)
    return modules, [edge for name, path in modules.items() for edge in imports_of(name, path, modules, package)]


def unit_of(module: str, layers=LAYERS, package: str = PACKAGE) -> str | None:
    units = [u for _, members in layers for u in members
             if module == u or (u != package and module.startswith(u + "."))]
    return max(units, key=len) if units else None


def layer_index(module: str, layers=LAYERS, package: str = PACKAGE) -> int | None:
    unit = unit_of(module, layers, package)
    return None if unit is None else next(i for i, (_, members) in enumerate(layers) if unit in members)


def upward_imports(edges: list[Edge], root: Path, layers=LAYERS, package: str = PACKAGE) -> list[str]:
    """One line per import from a lower layer to a higher one."""
    found = []
    for edge in edges:
        low, high = layer_index(edge.source, layers, package), layer_index(edge.target, layers, package)
        if low is not None and high is not None and high > low:
            found.append(f"{edge.path.relative_to(root)}:{edge.line}: {edge.source} (layer {layers[low][0]}) "
                         f"imports {edge.target} (layer {layers[high][0]})")
    return found


def circular_groups(pairs: set[tuple[str, str]]) -> list[tuple[list[str], set[str]]]:
    """Each strongly connected group of the graph (Tarjan) with one of its circles, a path `[a, b, ..., a]`."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(pairs):
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth: the package's module count at most
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(group)

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(((_circle_in(min(group), group, graph), group) for group in groups), key=lambda found: found[0])


def cycles(pairs: set[tuple[str, str]]) -> list[list[str]]:
    """One circle per strongly connected group."""
    return [circle for circle, _ in circular_groups(pairs)]


def describe(pairs: set[tuple[str, str]]) -> str:
    return "\n".join(f"{' -> '.join(circle)} (all of {', '.join(sorted(group))} reach each other)"
                     for circle, group in circular_groups(pairs))


def _circle_in(start: str, group: set[str], graph: dict[str, list[str]]) -> list[str]:
    """A shortest path from `start` back to itself inside one strongly connected group (breadth first)."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in graph[v]:
                if w == start:
                    path = [v]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w in group and w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no circle through {start}")


def unit_pairs(edges: list[Edge], layers=LAYERS, package: str = PACKAGE) -> set[tuple[str, str]]:
    pairs = {(unit_of(e.source, layers, package), unit_of(e.target, layers, package)) for e in edges}
    return {(a, b) for a, b in pairs if a and b and a != b}


# ---- the package --------------------------------------------------------------------------------

MODULES, EDGES = import_graph(ROOT)


def test_every_module_has_a_layer():
    assert [m for m in MODULES if unit_of(m) is None] == []
    assert len(MODULES) > 50 and len(EDGES) > 150  # the walk saw the package


def test_every_unit_of_the_map_exists():
    assert [u for _, members in LAYERS for u in members if u not in MODULES] == []


def test_no_import_goes_up_a_layer():
    found = upward_imports(EDGES, ROOT)
    assert not found, "imports from a lower layer to a higher one:\n" + "\n".join(found)


def test_no_circle_of_imports_between_modules():
    pairs = {(e.source, e.target) for e in EDGES}
    assert not cycles(pairs), "circles of imports:\n" + describe(pairs)


def test_no_circle_of_imports_between_units():
    pairs = unit_pairs(EDGES)
    assert not cycles(pairs), "circles of imports between units:\n" + describe(pairs)


def test_paths_computed_from_a_modules_file_reach_the_repository(monkeypatch):
    """The modules that find the repository from their own file (moving a file changes its depth)."""
    from fantasy.app.serve import package_root
    from fantasy.weights.real import weights_dir

    monkeypatch.delenv("FANTASY_WEIGHTS", raising=False)
    assert weights_dir() == ROOT / "weights" and package_root() == str(ROOT)
    assert [str(p.relative_to(ROOT)) for p in MODULES.values() if "__file__" in p.read_text()] == [
        "fantasy/app/serve.py", "fantasy/examples.py", "fantasy/weights/real.py",
    ]


# ---- the entry points and the README ------------------------------------------------------------

# What app.py and the CLI may import of the package: the public API (`fantasy`, its errors), the app layer, the
# entry points' own start-up helpers, and each package's command (`python -m fantasy <command>`).
ENTRY_IMPORTS = ("fantasy", "fantasy.errors", "fantasy.quiet", "fantasy.stop", "fantasy.app")


def entry_point_violations(path: Path, modules: dict[str, Path], name: str) -> list[str]:
    allowed = [m for m in ENTRY_IMPORTS if m in modules]
    found = []
    for edge in imports_of(name, path, modules):
        target = edge.target
        if target in allowed or any(target.startswith(m + ".") for m in allowed if m != PACKAGE):
            continue
        if name == "fantasy.cli" and target.rpartition(".")[2] == "command":
            continue
        found.append(f"{path.relative_to(ROOT)}:{edge.line}: imports {target}")
    return found


def test_app_and_cli_use_only_the_public_api_and_the_app_layer():
    found = entry_point_violations(ROOT / "app.py", MODULES, "app")
    found += entry_point_violations(MODULES["fantasy.cli"], MODULES, "fantasy.cli")
    assert not found, "app.py and the CLI import past the public API and the app layer:\n" + "\n".join(found)


def readme_layers(readme: str) -> list[set[str]]:
    """The units of each row of the layer diagram (the code block under '## Layout'), top row first."""
    block = readme.split("\n## Layout\n", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    rows: list[set[str]] = [set()]
    for line in block.splitlines():
        if set(line.strip()) == {"─"}:
            rows.append(set())
            continue
        for token in re.findall(r"fantasy/[\w/]*?(?:\.py|/)(?=[\s,;]|$)", line):
            rows[-1].add(token.removesuffix(".py").removesuffix("/").removesuffix("/__init__").replace("/", "."))
    return [row for row in rows if row]


def test_the_readme_diagram_is_the_layer_map():
    rows = readme_layers((ROOT / "docs" / "architecture.md").read_text())
    assert rows == [set(units) for _, units in reversed(LAYERS)]


def test_the_readme_parse_sees_each_row():
    text = ("x\n## Layout\n\n```text\napp.py · fantasy/cli.py · fantasy/__init__.py   entry\n───\nfantasy/app/   a\n───\n"
            "fantasy/x.py   b · fantasy/y.py c\n```\n")
    assert readme_layers(text) == [{"fantasy.cli", "fantasy"}, {"fantasy.app"}, {"fantasy.x", "fantasy.y"}]


# ---- the checks themselves fail when they should --------------------------------------------------

SYNTHETIC = {
    "pkg/__init__.py": "",
    "pkg/low/__init__.py": "",
    "pkg/low/a.py": "from pkg.low import b\n",
    "pkg/low/b.py": "def f():\n    from . import c\n",
    "pkg/low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.low.a\n",
    "pkg/low/d.py": "import os\n\n\ndef g():\n    from ..high.top import run\n",
    "pkg/high/__init__.py": "from .top import run\n",
    "pkg/high/top.py": "from pkg.low.d import g\nimport pkg.low\n\nrun = g\n",
}
SYNTHETIC_LAYERS = [("bottom", ["pkg.low"]), ("top", ["pkg.high", "pkg"])]


@pytest.fixture
def synthetic(tmp_path):
    for name, text in SYNTHETIC.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_walk_sees_function_level_relative_and_type_checking_imports(synthetic):
    modules, edges = import_graph(synthetic, "pkg")
    assert sorted((e.source, e.target, e.line) for e in edges) == [
        ("pkg.high", "pkg.high.top", 1),
        ("pkg.high.top", "pkg.low", 2),
        ("pkg.high.top", "pkg.low.d", 1),
        ("pkg.low.a", "pkg.low.b", 1),
        ("pkg.low.b", "pkg.low.c", 2),
        ("pkg.low.c", "pkg.low.a", 3),
        ("pkg.low.d", "pkg.high.top", 5),
    ]


def test_an_upward_import_is_named_with_file_line_and_layers(synthetic):
    _, edges = import_graph(synthetic, "pkg")
    assert upward_imports(edges, synthetic, SYNTHETIC_LAYERS, "pkg") == [
        "pkg/low/d.py:5: pkg.low.d (layer bottom) imports pkg.high.top (layer top)",
    ]


def test_a_circle_is_named(synthetic):
    _, edges = import_graph(synthetic, "pkg")
    assert cycles({(e.source, e.target) for e in edges}) == [
        ["pkg.high.top", "pkg.low.d", "pkg.high.top"],
        ["pkg.low.a", "pkg.low.b", "pkg.low.c", "pkg.low.a"],
    ]
    assert cycles(unit_pairs(edges, SYNTHETIC_LAYERS, "pkg")) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert describe({("x", "y"), ("y", "z"), ("z", "x"), ("y", "x")}) == "x -> y -> x (all of x, y, z reach each other)"
    assert cycles({("x", "x")}) == [["x", "x"]]
    assert cycles({("x", "y"), ("y", "z")}) == []
