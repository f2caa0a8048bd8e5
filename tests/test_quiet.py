"""Quiet as a library: the Python API prints none of the known import noise of torch, torchao, diffusers and
transformers that the entry points filter (`fantasy.quiet`), because `import fantasy` installs the filters; so do
`fantasy serve`'s replicas, which import the package before anything else."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT

NOISE = ("torchao", "_pytree", "Enum subclass", "Unable to import", "torchvision", "lm_head", "Traceback")


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_importing_fantasy_installs_the_filters_and_nothing_heavy(tmp_path):
    done = run_python("import logging, sys\nimport fantasy\n"
                      "from fantasy.quiet import KNOWN_NOISE\n"
                      "print(all(logging.getLogger(name).filters for name, _ in KNOWN_NOISE))\n"
                      "print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))", tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n[]\n", "")


@pytest.mark.slow
def test_the_python_api_is_quiet_from_any_folder(tmp_path):
    code = ("from fantasy import Settings, generate, get_preset, load_pipeline\n"
            "pipe = load_pipeline('tiny')\n"
            "pipe.set_progress_bar_config(disable=True)\n"
            f"result = generate(pipe, {str(EXAMPLE_IMAGE)!r}, {str(EXAMPLE_SPEECH)!r}, 'o.mp4', "
            "Settings(steps=1, longest_edge=64, max_duration=0.5), get_preset('tiny'))\n"
            "print(result.num_frames)\n")
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "13\n"
    assert [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)] == []
    assert done.stderr == ""


@pytest.mark.slow
def test_the_serve_replicas_module_is_quiet(tmp_path):
    """What a Ray worker does first: import the deployment's module (`fantasy.app.serve`) and load a preset."""
    done = run_python("import fantasy.app.serve\nfrom fantasy.weights.presets import load_pipeline\n"
                      "load_pipeline('tiny')\nprint('loaded')\n", tmp_path)
    assert (done.returncode, done.stdout) == (0, "loaded\n"), done.stderr[-3000:]
    assert [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)] == []
