"""The command line answers at once: `--help`, `--version`, a mistyped command and argument errors import none of
torch, diffusers, peft or Gradio, cost well under a second of CPU, and say one line; `--help` shows the defaults;
the names the parsers spell out equal the modules that implement them."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import resource
import subprocess
import sys

import pytest

from fantasy import __version__
from fantasy.cli import COMMANDS, build_parser, command_in

from .conftest import ROOT

HEAVY = ("torch", "diffusers", "peft", "gradio", "transformers", "ray")
# Runs the CLI in a fresh interpreter and reports which heavy libraries it imported.
DRIVER = (
    "import json, sys\n"
    "from fantasy.cli import main\n"
    "code = main(sys.argv[1:])\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def run_light(*args: str, cwd=ROOT) -> tuple[int, str, str, list[str], float]:
    """(exit status, stdout, stderr without the report line, heavy modules imported, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    *lines, report = proc.stderr.rstrip("\n").split("\n")
    return proc.returncode, proc.stdout, "\n".join(lines), json.loads(report), cpu


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([name, "--help"] for name in COMMANDS)])
def test_help_and_version_import_nothing_heavy(args):
    code, out, err, heavy, cpu = run_light(*args)
    assert (code, err, heavy) == (0, "", [])
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"
    if args == ["--version"]:
        assert out == f"fantasy {__version__}\n"
    else:
        assert out.startswith("usage: fantasy")


@pytest.mark.parametrize("args, message", [
    (["generat"], "fantasy: error: argument COMMAND: invalid choice: 'generat' (choose from 'generate', 'batch', "
                  "'download', 'convert', 'eval', 'train', 'make-clips', 'serve', 'bench')"),
    ([], "fantasy: error: the following arguments are required: COMMAND"),
    (["generate", "--image", "a.png"], "fantasy generate: error: the following arguments are required: --audio, "
                                       "--out"),
    (["generate", "--image", "a", "--audio", "b", "--out", "c.mp4", "--steps", "x"],
     "fantasy generate: error: argument --steps: invalid int value: 'x'"),
    (["generate", "--image", "a", "--audio", "b", "--out", "c.mp4", "--preset", "huge"],
     "fantasy generate: error: argument --preset: invalid choice: 'huge' (choose from 'auto', 'tiny', 'real')"),
    (["eval"], "fantasy eval: error: the following arguments are required: video"),
    (["serve", "--port", "http"], "fantasy serve: error: argument --port: invalid int value: 'http'"),
    (["train", "--stage", "3"], "fantasy train: error: argument --stage: invalid choice: 3 (choose from 1, 2)"),
])
def test_argument_errors_are_one_line_status_2_and_import_nothing_heavy(args, message):
    code, out, err, heavy, cpu = run_light(*args)
    assert (code, out, err, heavy) == (2, "", message, [])
    assert cpu < 1.0, f"{cpu:.2f} s of CPU"


def test_missing_inputs_and_unusable_outputs_are_refused_before_torch(tmp_path):
    image, audio = str(ROOT / "examples" / "portrait.png"), str(ROOT / "examples" / "speech.wav")
    cases = [
        (["--image", str(tmp_path / "none.png"), "--audio", audio, "--out", str(tmp_path / "o.mp4")],
         f"error: Portrait file not found: {tmp_path / 'none.png'}"),
        (["--image", image, "--audio", str(tmp_path), "--out", str(tmp_path / "o.mp4")],
         f"error: Speech file is not a regular file: {tmp_path}"),
        (["--image", image, "--audio", audio, "--out", str(tmp_path / "o.mov")],
         "error: the output must end in .mp4, got 'o.mov'"),
        (["--image", image, "--audio", audio, "--out", str(tmp_path / "o.mp4"), "--adapter", "typo.safetensors"],
         "error: Adapter file not found: typo.safetensors (given with --adapter or FANTASY_ADAPTER)"),
        (["--image", image, "--audio", audio, "--out", str(tmp_path / "o.mp4"), "--preview", str(tmp_path / "p.png")],
         f"error: --preview must end in .webp or .gif, got {tmp_path / 'p.png'}"),
        (["--image", image, "--audio", audio, "--out", audio.replace(".wav", ".mp4"), "--fast", "nope.safetensors"],
         "error: LoRA file not found: nope.safetensors"),
    ]
    for args, message in cases:
        code, out, err, heavy, _ = run_light("generate", *args)
        assert (code, out, err, heavy) == (2, "", message, [])
    assert list(tmp_path.iterdir()) == []


def test_every_option_shows_its_default_in_help():
    missing = []
    for name in COMMANDS:
        parser = _sub(build_parser(name, prog="fantasy"), name)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
                continue
            text = formatter._expand_help(action)
            if str(action.default) not in text and not (isinstance(action.default, float) and f"{action.default:g}" in text):
                missing.append(f"{name} {action.option_strings[0]}: {text!r}")
    assert missing == []


def _sub(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_each_command_module_registers_the_help_that_fantasy_help_lists():
    for name, (module, function, text) in COMMANDS.items():
        parser = build_parser(name, prog="fantasy")
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        assert helps[name] == text, name
        assert getattr(importlib.import_module(module), function)


def test_the_command_is_the_first_word_that_is_not_an_option():
    assert command_in(["--version"]) is None
    assert command_in(["generate", "--image", "eval"]) == "generate"
    assert command_in(["-h", "eval", "x.mp4"]) == "eval"
    assert command_in(["generat"]) is None


def test_python_dash_m_names_itself_so():
    proc = subprocess.run([sys.executable, "-m", "fantasy", "generat"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("python -m fantasy: error: argument COMMAND: invalid")
    assert proc.stderr.endswith("'serve', 'bench')\n") and proc.stderr.count("\n") == 1


def test_the_names_the_parsers_spell_out_are_the_implementations():
    """The choices and defaults written into the light parser modules, against the modules that define them."""
    from fantasy.app import flags, generate_command, serve, serve_command
    from fantasy.face.analyzer import BACKENDS, DEFAULT_BACKEND
    from fantasy.metrics import command as eval_command
    from fantasy.metrics.sync import DEFAULT_MAX_LAG
    from fantasy.model.precision import DEFAULT_PRECISION, PRECISIONS
    from fantasy.model.preview import PREVIEW_SUFFIXES
    from fantasy.release import RELEASE_PROMPT
    from fantasy.settings import DEFAULT_SEED
    from fantasy.speed.layout import KINDS, TIMEOUT_S
    from fantasy.speed.switches import ATTENTION_ALIASES, DEFAULT_CACHE_THRESHOLD
    from fantasy.train import command as train_command
    from fantasy.train.trainer import MODULES
    from fantasy.weights.offload import VRAM_MODES
    from fantasy.weights.presets import PRESETS
    from fantasy.weights.quantize import DIT_MODES

    assert tuple(PRESETS) == flags.PRESET_NAMES
    assert tuple(DIT_MODES) == flags.DIT_MODES and tuple(VRAM_MODES) == flags.VRAM_MODES
    assert (tuple(PRECISIONS), DEFAULT_PRECISION) == (flags.PRECISIONS, flags.DEFAULT_PRECISION)
    assert tuple(ATTENTION_ALIASES) == flags.ATTENTION_ALIASES
    assert flags.DEFAULT_CACHE_THRESHOLD == DEFAULT_CACHE_THRESHOLD and tuple(KINDS) == flags.PARALLEL_KINDS
    assert flags.COLLECTIVE_TIMEOUT_S == TIMEOUT_S
    assert (flags.DEFAULT_SEED, flags.RELEASE_PROMPT) == (DEFAULT_SEED, RELEASE_PROMPT)
    assert generate_command.PREVIEW_SUFFIXES == PREVIEW_SUFFIXES
    assert (
        tuple(BACKENDS), DEFAULT_BACKEND, DEFAULT_MAX_LAG) == (eval_command.BACKENDS, eval_command.DEFAULT_BACKEND, eval_command.DEFAULT_MAX_LAG)
    assert tuple(MODULES) == train_command.MODULES
    assert serve_command.DEFAULT_MAX_QUEUED == serve.DEFAULT_MAX_QUEUED


def test_generate_help_shows_the_defaults_people_ask_about():
    text = re.sub(r"\s+", " ", _sub(build_parser("generate", prog="fantasy"), "generate").format_help())
    for shown in ("(default: auto)", "default 1111", "default 23", "default 81", "(default 10)",
                  "(default: resident)", "(default: mixed)", "(default: ulysses)", "default 1"):
        assert shown in text, shown
