"""Rules the suite keeps about itself: every expected error names its message (ruff's PT011, checked here to
be configured so); a hang fails with its name; the mutation bench and mutmut agree."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT


def ruff_says(code: str) -> list[str]:
    """ruff's findings, with this repository's configuration, for `code` as a test file."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache",
                           "--stdin-filename", "tests/test_example.py", "-"],
                          input=code, cwd=ROOT, capture_output=True, text=True, timeout=60)
    return [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("tests/test_example.py:")]


def test_every_expected_error_names_its_message():
    """ruff's PT011, configured for every exception (pyproject.toml), refuses a `pytest.raises` without `match=`."""
    code = textwrap.dedent("""\
        import pytest

        from fantasy.errors import FantasyError


        def test_a():
            with pytest.raises(FantasyError):
                pass
            with pytest.raises(KeyError):
                pass
            with pytest.raises(FantasyError, match="^a message$"):
                pass
    """)
    assert ruff_says(code) == [
        "PT011 `pytest.raises(fantasy.errors.FantasyError)` is too broad, set the `match` parameter or use a more "
        "specific exception",
        "PT011 `pytest.raises(KeyError)` is too broad, set the `match` parameter or use a more specific exception",
    ]


@pytest.mark.slow
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


def test_the_mutation_bench_and_mutmut_mutate_the_same_files():
    """`tools.mutation.MODULES` is the one list to update when files move; mutmut's `only_mutate` must follow."""
    from tools.mutation import MODULES

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert sorted(MODULES.values()) == sorted(config["only_mutate"])
    assert [p for p in MODULES.values() if not (ROOT / p).is_file()] == []


def test_mutation_scores_count_only_checked_mutants(tmp_path, monkeypatch):
    """A partial run gives its score over the mutants it checked, and says how many of all those were."""
    import json

    from tools import mutation

    meta = tmp_path / "mutants" / "fantasy" / "model" / "windows.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"a": 1, "b": 1, "c": 0, "d": None, "e": 36, "f": 33}  # killed 2, survived, unchecked, timeout, no tests
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    monkeypatch.setattr(mutation, "ROOT", tmp_path)
    assert mutation.score_line("windows") == "| fantasy/model/windows.py | 3/5 | 60.0 % | 5/6 | 1 no tests, 1 survived |"
    assert mutation.survivors("windows") == ["c", "f"]
    assert mutation.undetected("windows") == ["c", "d", "f"]
    assert mutation.unchecked_sample("windows", 5) == ["d"]


@pytest.mark.slow
def test_a_test_that_needs_no_torch_runs_without_importing_it():
    """conftest.py imports nothing heavy: a test of the docs runs without torch, diffusers or Gradio loaded
    (`-X importtime` lists every module the run imported; `-s` keeps pytest from capturing that list)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/test_docs.py::test_the_readme_is_short"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert {"numpy", "soundfile", "pytest"} <= imported  # the list holds conftest's own imports
    assert {"torch", "diffusers", "transformers", "gradio", "fantasy"} & imported == set()


def test_the_fast_loops_marker_does_not_change_the_mutation_selection():
    """mutmut runs the selected files minus explicit deselects, never `-m "not slow"`: marking a test slow for the
    fast local loop must not drop it from the tests the recorded mutation scores were measured with."""
    selection = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["pytest_add_cli_args_test_selection"]
    assert "-m" not in selection and not any(arg.startswith("-m") for arg in selection)


def test_the_slowest_files_list_names_test_files_that_exist_once_each():
    """A renamed or removed file in `SLOWEST_FILES` would silently stop being scheduled first."""
    from tests.conftest import SLOWEST_FILES

    assert len(set(SLOWEST_FILES)) == len(SLOWEST_FILES)
    missing = [name for name in SLOWEST_FILES if not (Path(__file__).parent / name).is_file()]
    assert missing == []
