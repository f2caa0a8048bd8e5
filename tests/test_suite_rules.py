"""Rules the suite keeps about itself: every expected error names its message; a hang fails with its name."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from .conftest import ROOT


def raises_without_match() -> list[str]:
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "raises"
                    and not any(k.arg == "match" for k in node.keywords)):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_every_expected_error_names_its_message():
    assert raises_without_match() == []


def test_a_hanging_test_fails_with_its_name(tmp_path: Path, request):
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert config["timeout"] == 300 and float(request.config.getini("timeout")) == 300  # in force in this run
    assert request.config.pluginmanager.hasplugin("timeout")
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import threading

        def test_waits_forever():
            threading.Event().wait()

        def test_after_it():
            pass
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=1", "test_hang.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout
    assert "FAILED test_hang.py::test_waits_forever - Failed: Timeout (>1.0s)" in proc.stdout
    assert "1 failed, 1 passed" in proc.stdout  # the run went on
