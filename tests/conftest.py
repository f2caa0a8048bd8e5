"""Shared fixtures: example inputs, synthetic speech, and the tiny pipeline (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per process under the workers (`pytest -n 2` on 2 cores), inherited by every process a test
    # starts: two workers of two busy OpenMP threads each, plus the processes their tests start, thrashed the
    # cores (a 2 s tiny-pipeline test took 47 s in the full run). Set before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "portrait.png"
EXAMPLE_SPEECH = ROOT / "examples" / "speech.wav"

# For tests of what happens on a machine without a GPU (CI, laptops); a CUDA runner skips them. The condition is
# a string, evaluated when such a test runs: importing this file must not import torch (tests/test_suite_rules.py).
NO_CUDA = pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="checks the behaviour without a GPU")


# The slowest test files, slowest first (their tests' total time in a two-worker run on the 2-core CI machine,
# 2026-12-07: test_serve.py ~550 s ... test_faults_inputs.py ~65 s). The two CI workers take one file at a time in
# collection order (`pytest -n 2 --dist loadfile --no-loadscope-reorder`); starting with the longest files and
# ending with the short ones lets both workers finish together (the default order, by test count, left one
# worker running a 4-minute file alone at the end). Update it when `--durations=0` shows a new slow file.
SLOWEST_FILES = (
    "test_serve.py", "test_real_width.py", "test_parallel.py", "test_parallel_faults.py", "test_faults_signals.py",
    "test_pipeline_call.py", "test_cli.py", "test_comfy_pipeline.py", "test_install.py", "test_browser.py",
    "test_app.py", "test_faults_app.py", "test_long_video.py", "test_api.py", "test_gpu_check.py",
    "test_train_ddp.py", "test_release_oracle.py", "test_speed.py", "test_diffusers_folder.py",
    "test_real_width_diffusers.py", "test_train.py", "test_faults_inputs.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    """The slowest files first (`SLOWEST_FILES`), then the rest in their usual order; a file's tests stay in order."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def speech_like(seconds: float, rate: int = 16_000, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: harmonics of a wobbling pitch under a syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.3 * voice * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for the test: no test may find real files in this machine's cache.
    The weight-loading test files use it for every test (`pytestmark`)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def speech_wav(tmp_path) -> Path:
    path = tmp_path / "speech.wav"
    soundfile.write(path, speech_like(2.0), 16_000)
    return path


@pytest.fixture(scope="session")
def tiny_pipe():
    from fantasy.weights.presets import load_pipeline

    return load_pipeline("tiny")


def tiny_call_args(pipe, speech_wav: Path) -> dict:
    """Arguments for one short (9-frame, 2-step) tiny-pipeline call on `speech_wav`, fixed seed."""
    import torch
    from PIL import Image

    from fantasy.media.audio import clip_samples, load_audio

    samples = clip_samples(load_audio(speech_wav), 9, 23)
    windows, lengths = pipe.encode_audio(samples, 9)
    return dict(image=Image.new("RGB", (32, 32), (90, 120, 160)), audio_windows=windows, audio_lengths=lengths,
                prompt="a person is talking", num_frames=9, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0))


def bad_speech_files(tmp_path: Path) -> dict[str, Path]:
    """Speech a user might upload that must be refused: 'silent' (2 s of zeros), 'short' (0.1 s), 'not_audio'."""
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(32_000, np.float32), 16_000)
    short = tmp_path / "short.wav"
    soundfile.write(short, speech_like(0.1), 16_000)
    notes = tmp_path / "notes.mp3"
    notes.write_text("these are meeting notes, not audio")
    return {"silent": silent, "short": short, "not_audio": notes}
