"""The package as a user installs it: a wheel of `fantasy` alone, its dependency metadata, its console scripts,
and a tiny-preset generation from a folder that is not the repository.

The install test builds the wheel without build isolation (the installed setuptools; no download) and installs it
into a fresh virtual environment made with `--system-site-packages` (and this interpreter's pip), so the heavy dependencies (torch, diffusers,
Gradio...) are reused from this interpreter instead of downloaded; `pip install --no-index` still resolves every
`Requires-Dist` of the wheel against what is installed, so wrong dependency metadata fails the install.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.mp4_probe import probe

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def requirement_lines(path: Path) -> list[str]:
    """A requirements file's requirements, without comments (what setuptools puts into Requires-Dist)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def normalised(requirement: str) -> str:
    """'transformers>=5.0,<6' and 'transformers<6,>=5.0' alike: name lower-cased, specifiers sorted."""
    match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*?)\s*(;.*)?$", requirement)
    name, specifiers, marker = match.group(1), match.group(2), match.group(3) or ""
    name = re.sub(r"[-_.]+", "-", name).lower()
    return name + ",".join(sorted(s.strip() for s in specifiers.split(",") if s.strip())) + marker.replace(" ", "")


def test_the_wheel_lists_every_subpackage_of_fantasy_and_nothing_else():
    on_disk = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "fantasy").rglob("__init__.py"))
    listed = SETUPTOOLS["packages"]
    assert sorted(p for p in listed if p != "fantasy._examples") == on_disk
    assert all(p == "fantasy" or p.startswith("fantasy.") for p in listed)
    assert SETUPTOOLS["package-dir"] == {"fantasy._examples": "examples"}
    assert all((ROOT / "examples" / name).is_file() for name in SETUPTOOLS["package-data"]["fantasy._examples"])


def test_nothing_in_the_package_imports_tests_tools_or_bench():
    """The installed package has no tests/, tools/ or bench/ to import (they stay in the repository)."""
    import ast

    found = []
    for path in sorted((ROOT / "fantasy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                      if n.split(".")[0] in {"tests", "tools", "bench"}]
    assert found == []


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 2 min on an idle 2-core machine: a build, an install, two tiny runs, 3 imports
def test_the_wheel_installs_into_a_fresh_venv_and_generates_from_another_folder(tmp_path):
    started = time.perf_counter()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home")}
    for name in ("PYTHONPATH", "FANTASY_WEIGHTS", "XDG_CACHE_HOME"):
        env.pop(name, None)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(ROOT)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("fantasy_talking_studio-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"fantasy"}
    assert {"fantasy/_examples/portrait.png", "fantasy/_examples/speech.wav", "fantasy/bench/cpu_run.py",
            "fantasy/app/ui.py"} <= set(names)
    requires = [line.removeprefix("Requires-Dist: ") for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")]
    serve = [f'{r}; extra == "serve"' for r in requirement_lines(ROOT / "requirements-serve.txt")]
    assert sorted(map(normalised, requires)) == sorted(map(normalised,
                                                            requirement_lines(ROOT / "requirements.txt") + serve))
    assert "fantasy = fantasy.cli:main" in entry_points and "fantasy-studio = fantasy.app.ui:main" in entry_points

    venv = tmp_path / "venv"
    # Without pip of its own: a venv's bundled setuptools would shadow the installed one, which torch's metadata
    # needs at a newer version; this interpreter's pip installs into the venv instead (`pip --python`).
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # --no-index: every Requires-Dist must be met by what is installed (the system site-packages), or this fails
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", str(wheel)],
         cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run([str(python), "-c", "import fantasy, fantasy.examples as e, fantasy.weights.real as w; "
                  "print(fantasy.__file__); print(e.example_file('portrait.png')); print(w.weights_dir())"],
                 cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where[:2]), where  # the installed copy, not the repository
    assert where[2] == str(tmp_path / "home" / ".cache" / "fantasy-talking-studio" / "weights")
    version = _run([str(bin_dir / "fantasy"), "--version"], cwd=elsewhere, env=env).stdout
    assert re.fullmatch(r"fantasy \d+\.\d+\.\d+\S*\n", version)

    out = elsewhere / "talking.mp4"
    done = _run([str(bin_dir / "fantasy"), "generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH),
                 "--out", out.name, "--steps", "2", "--size", "64", "--max-duration", "1"], cwd=elsewhere, env=env)
    info = probe(out)
    assert info.has_audio and (info.width, info.height) == (64, 64) and info.frames == 25, done.stderr
    assert "Traceback" not in done.stderr
    assert "preset auto: tiny" in done.stderr and "face check: 1 face" in done.stderr  # dlib's models installed

    # python -m fantasy, the API (example files from the package data) and the app's entry, all from elsewhere
    _run([str(python), "-m", "fantasy", "--help"], cwd=elsewhere, env=env)
    api = ("from fantasy import Settings, generate, get_preset, load_pipeline\n"
           "from fantasy.examples import example_file\n"
           "preset = get_preset('tiny')\n"
           "result = generate(load_pipeline('tiny'), example_file('portrait.png'), example_file('speech.wav'), "
           "'api.mp4', Settings(steps=1, longest_edge=64, max_duration=0.5), preset)\n"
           "import sys\n"
           "assert not [m for m in sys.modules if m.split('.')[0] in ('tests', 'tools', 'bench')]\n")
    _run([str(python), "-c", api], cwd=elsewhere, env=env)
    assert probe(elsewhere / "api.mp4").has_audio
    studio = _run([str(bin_dir / "fantasy-studio"), "--help"], cwd=elsewhere, env=env).stdout
    assert "--preset" in studio
    print(f"\nfresh-venv install test: {time.perf_counter() - started:.1f} s wall")
