"""Training over 2 CPU processes (accelerate DDP over gloo, launched by torchrun) equals one process when
both draw the same samples; only the main process caches, prints and writes; a launch that would not be
what was asked stops with the command that works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fantasy.cli import main
from fantasy.errors import InvalidSetting
from fantasy.train.processes import check_launch, launched_processes, training_processes

from .synthetic_clips import speech_samples, syllable_envelope, talking_frames, write_mp4, write_wav
from .synthetic_faces import measured_landmarks

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = ["config.json", "loss.png", "modules.safetensors", "state.pt", "step-000003.safetensors", "train_log.jsonl"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Two drawn talking clips with speech and precomputed landmarks (no face model needed)."""
    from fantasy.metrics.frames import read_video

    root = tmp_path_factory.mktemp("ddp-clips")
    for i, gain in enumerate((0.4, 1.0)):
        envelope = syllable_envelope(12, seed=i)
        video = write_mp4(root / f"clip{i}.mp4", talking_frames(gain * envelope))
        write_wav(root / f"clip{i}.wav", speech_samples(envelope, seed=i))
        np.save(root / f"clip{i}.landmarks.npy", np.stack([measured_landmarks(f) for f in read_video(video).frames]))
    return root


def train_args(clips: Path, run: Path, cache: Path) -> list[str]:
    return ["train", "--data", str(clips), "--stage", "2", "--out", str(run), "--cache", str(cache), "--steps", "3",
            "--frames", "9", "--fps", "25", "--lr", "1e-3", "--save-every", "3", "--same-samples"]


def torchrun(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fantasy", *args]
    environment = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_exactly_like_one(clips, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): same float rounding
    try:
        assert main(train_args(clips, tmp_path / "one", tmp_path / "cache-one")) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    done = torchrun(train_args(clips, tmp_path / "two", tmp_path / "cache-two"), tmp_path, ACCELERATE_USE_CPU="true")
    assert done.returncode == 0, done.stderr[-3000:]

    one, two = load_file(tmp_path / "one" / "modules.safetensors"), load_file(tmp_path / "two" / "modules.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    start = load_file(tmp_path / "one" / "step-000003.safetensors")
    assert any(not torch.equal(start[k], torch.zeros_like(start[k])) for k in start if "motion" in k)  # it trained
    logs = [(tmp_path / run / "train_log.jsonl").read_text().splitlines() for run in ("one", "two")]
    assert logs[0] == logs[1] and len(logs[1]) == 3  # one writer: 3 lines, the mean of two equal losses
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == RUN_FILES
    # only the main process cached, printed and wrote
    assert done.stderr.count("cache 1/2: clip0 (encoded)") == 1 and "(reused)" not in done.stderr
    assert done.stderr.count("step 3/3: loss") == 1 and done.stdout.count("wrote ") == 1
    assert "2 processes" in done.stdout
    assert json.loads(logs[1][-1])["step"] == 3


@pytest.mark.slow
def test_plain_torchrun_on_cpus_stops_before_training(clips, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "fantasy",
         *train_args(clips, tmp_path / "run", tmp_path / "cache")],
        cwd=tmp_path, env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode != 0
    message = ("error: 2 processes were launched but accelerate sees 1 here, so each would train alone and write "
               "the same files. On CPUs set ACCELERATE_USE_CPU=true (`ACCELERATE_USE_CPU=true torchrun "
               "--nproc_per_node N -m fantasy train ...`); on GPUs check that CUDA is visible")
    assert message in done.stderr  # (torchrun may end the second process before it says the same)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_accelerate_launch_cpu_with_several_processes_is_refused(monkeypatch):
    # what `accelerate launch --num_processes 2 --cpu` leaves in the one process it starts
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert launched_processes() is None
    with pytest.raises(InvalidSetting, match=r"`accelerate launch --cpu` starts one process whatever "
                                             r"--num_processes says; this run would train alone"):
        training_processes()


def test_launch_check_passes_real_runs():
    check_launch(1, 1)  # a plain run
    check_launch(2, 2)  # torchrun that accelerate joined
    check_launch(None, 4)
    with pytest.raises(InvalidSetting, match="4 processes were launched but accelerate sees 1 here"):
        check_launch(4, 1)
