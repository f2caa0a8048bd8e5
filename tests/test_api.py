"""The public API: importable from `fantasy` itself, loaded lazily, and the README's example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import fantasy
from fantasy.generation import generate, prepare_inputs
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.settings import Result, Settings
from fantasy.weights.presets import PRESETS, Preset, get_preset, load_pipeline

ROOT = Path(__file__).resolve().parent.parent


def test_the_public_names_are_the_modules_own_objects():
    assert fantasy.generate is generate and fantasy.prepare_inputs is prepare_inputs
    assert fantasy.Settings is Settings and fantasy.Result is Result
    assert fantasy.load_pipeline is load_pipeline and fantasy.get_preset is get_preset
    assert fantasy.Preset is Preset and fantasy.PRESETS is PRESETS
    assert fantasy.FantasyTalkingPipeline is FantasyTalkingPipeline
    assert sorted(fantasy.__all__) == fantasy.__all__ and set(fantasy.__all__) <= set(dir(fantasy))
    for name in fantasy.__all__:
        assert getattr(fantasy, name) is not None


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'fantasy' has no attribute 'genrate'$"):
        fantasy.genrate  # noqa: B018


@pytest.mark.slow
def test_import_fantasy_loads_no_heavy_package_and_each_name_on_first_use():
    code = (
        "import sys, fantasy\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'gradio', 'numpy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "from fantasy import Settings\n"
        "print(Settings.__module__, 'fantasy.generation' in sys.modules)\n"
        "from fantasy import generate, load_pipeline, FantasyTalkingPipeline\n"
        "print(generate.__module__, load_pipeline.__module__, FantasyTalkingPipeline.__module__, fantasy.generate is generate)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "[]",
        "fantasy.settings False",
        "fantasy.generation fantasy.weights.presets fantasy.model.pipeline True",
    ]


@pytest.mark.slow
def test_the_readme_python_example_writes_the_video(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(from fantasy import [^\n]*\n.*?)```", readme, re.S).group(1)
    assert len(example.splitlines()) <= 10
    code = example.replace('"out.mp4"', f'"{tmp_path}/out.mp4"')  # run from the repository root, as README says
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    from tests.mp4_probe import probe

    info = probe(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frames, info.has_audio) == (128, 128, 73, True)  # 3 s: int(69 // 4) * 4 + 5
    assert out.splitlines()[-1].startswith(f"{tmp_path}/out.mp4 73 23 ")
