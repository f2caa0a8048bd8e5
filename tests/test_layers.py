"""Imports only go down the layers and never in a circle (docs/architecture.md, Layout).

The rules are import-linter contracts in pyproject.toml (`[tool.importlinter]`), which CI also runs as
`lint-imports`. Here: they hold, they fail on each kind of break (an upward import, one inside a function or
under `TYPE_CHECKING`, a circle, a lower module importing the public API, the CLI reaching past the app layer, a
module without a row), and what no tool does: the docs' diagram is the contract, and app.py (a script outside
the package, which import-linter cannot analyse) uses only the public API and the app layer.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACTS = {c["id"]: c for c in CONFIG["contracts"]}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with this repository's contracts on the package under `root`."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                               "sys.exit(c(['--no-cache', '--no-logo', sys.argv[1]]))", str(ROOT / "pyproject.toml")],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )


def test_the_package_keeps_every_contract():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in proc.stdout


BREAKS = {
    "an upward import inside a function": (
        "fantasy/media/audio.py", "\n\ndef _break():\n    from fantasy.generation import generate\n",
        r"fantasy\.media is not allowed to import fantasy\.generation:\n\n- fantasy\.media\.audio -> fantasy\.generation \(l\.\d+\)"),
    "an upward import under TYPE_CHECKING": (
        "fantasy/model/windows.py", "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import fantasy.weights.presets\n",
        r"fantasy\.model is not allowed to import fantasy\.weights:\n\n- fantasy\.model\.windows -> fantasy\.weights\.presets \(l\.\d+\)"),
    "a relative upward import": (
        "fantasy/face/geometry.py", "\n\ndef _break():\n    from ..app import studio\n",
        r"fantasy\.face is not allowed to import fantasy\.app:\n\n- fantasy\.face\.geometry -> fantasy\.app\.studio \(l\.\d+\)"),
    "a circle inside a package": (
        "fantasy/model/frame_shards.py", "\n\ndef _break():\n    from fantasy.model import adapter\n",
        r"No cycles are allowed in fantasy\.model\.\n.*removing 1 dependency:\n\n- \.frame_shards -> \.adapter"),
    "a lower module importing the public API": (
        "fantasy/errors.py", "\n\ndef _break():\n    import fantasy\n",
        r"fantasy\.errors -> fantasy \(l\.\d+\)"),
    "the CLI reaching past the app layer": (
        "fantasy/cli.py", "\n\ndef _break():\n    from fantasy.model import pipeline\n",
        r"fantasy\.cli -> fantasy\.model\.pipeline \(l\.\d+\)"),
    "a new top-level module without a row": (
        "fantasy/newcomer.py", "X = 1\n", r"fantasy\.newcomer"),
}


def test_each_kind_of_break_is_caught_and_named(tmp_path):
    """All the breaks in one copy of the package, one run: each is reported, with its file and line."""
    shutil.copytree(ROOT / "fantasy", tmp_path / "fantasy", ignore=shutil.ignore_patterns("__pycache__"))
    for path, code, _ in BREAKS.values():
        file = tmp_path / path
        file.write_text((file.read_text() if file.exists() else "") + code)
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"Contracts: 0 kept, {len(CONTRACTS)} broken." in proc.stdout, proc.stdout
    assert {kind: bool(re.search(named, proc.stdout, re.S)) for kind, (_, _, named) in BREAKS.items()} == {
        kind: True for kind in BREAKS}, proc.stdout


# ---- what no tool does -------------------------------------------------------------------------------------

def diagram_rows(text: str) -> list[set[str]]:
    """The units of each row of the layer diagram (the code block under '## Layout'), top row first."""
    block = text.split("\n## Layout\n", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    rows: list[set[str]] = [set()]
    for line in block.splitlines():
        if set(line.strip()) == {"─"}:
            rows.append(set())
            continue
        for token in re.findall(r"fantasy/[\w/]*?(?:\.py|/)(?=[\s,;]|$)", line):
            rows[-1].add(token.removesuffix(".py").removesuffix("/").removesuffix("/__init__").replace("/", "."))
    return [row for row in rows if row]


def contract_rows() -> list[set[str]]:
    """The layers contract's rows, top first, as dotted names; the public API (`fantasy`) sits on the top row."""
    container = CONTRACTS["layers"]["containers"][0]
    rows = [{f"{container}.{tail.strip()}" for tail in re.split(r"[:|]", row)} for row in CONTRACTS["layers"]["layers"]]
    rows[0].add(container)
    return rows


def test_the_docs_diagram_is_the_layers_contract():
    assert diagram_rows((ROOT / "docs" / "architecture.md").read_text()) == contract_rows()


def test_the_diagram_parse_sees_each_row():
    text = ("x\n## Layout\n\n```text\napp.py · fantasy/cli.py · fantasy/__init__.py   entry\n───\nfantasy/app/   a\n───\n"
            "fantasy/x.py   b · fantasy/y.py c\n```\n")
    assert diagram_rows(text) == [{"fantasy.cli", "fantasy"}, {"fantasy.app"}, {"fantasy.x", "fantasy.y"}]


# What app.py may import of the package: the public API (`fantasy`, its errors), the entry points' start-up
# helpers and the app layer.
APP_MAY_IMPORT = ("fantasy", "fantasy.errors", "fantasy.quiet", "fantasy.stop", "fantasy.app")


def package_imports_beyond(path: Path, allowed: tuple[str, ...]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            if (name == "fantasy" or name.startswith("fantasy.")) and not any(
                    name == m or (m != "fantasy" and name.startswith(m + ".")) for m in allowed):
                found.append(f"{path.name}:{node.lineno}: imports {name}")
    return found


def test_app_py_uses_only_the_public_api_and_the_app_layer(tmp_path):
    assert package_imports_beyond(ROOT / "app.py", APP_MAY_IMPORT) == []
    script = tmp_path / "app.py"
    script.write_text("import fantasy\nfrom fantasy.app import studio\n\n\ndef f():\n    from fantasy.model.pipeline import X\n")
    assert package_imports_beyond(script, APP_MAY_IMPORT) == ["app.py:6: imports fantasy.model.pipeline"]


def test_paths_computed_from_a_modules_file_reach_the_repository(monkeypatch):
    """The modules that find the repository from their own file (moving a file changes its depth)."""
    from fantasy.app.serve import package_root
    from fantasy.weights.real import weights_dir

    monkeypatch.delenv("FANTASY_WEIGHTS", raising=False)
    assert weights_dir() == ROOT / "weights" and package_root() == str(ROOT)
    assert sorted(str(p.relative_to(ROOT)) for p in (ROOT / "fantasy").rglob("*.py") if "__file__" in p.read_text()) == [
        "fantasy/app/serve.py", "fantasy/examples.py", "fantasy/weights/real.py",
    ]
