"""The demo model's training, part by part (VAE, speech encoder, DiT), each resumable by the same command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fantasy.cli import main
from fantasy.errors import WeightsMissing
from fantasy.train.resumable import read_log
from fantasy.train.synthetic import make_clips

SEED = 5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_clips(folder, 2, seed=SEED, size=64, min_frames=9)
    return folder


def train(*args: str) -> int:
    return main(["train", "--preset", "demo", "--threads", "1", *args])


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("part", ["vae", "speech"])
def test_a_stopped_part_continues_with_the_same_command_exactly(clips, tmp_path, part):
    """4 steps, then the same command with --steps 6, equals 6 steps in one go (weights, log, latent stats)."""
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    args = ["--part", part, "--data", str(clips), "--lr", "1e-3"]
    assert train(*args, "--out", str(whole), "--steps", "6") == 0
    assert train(*args, "--out", str(pieces), "--steps", "4") == 0
    after_four = weights(pieces / f"{part}.safetensors")
    assert train(*args, "--out", str(pieces), "--steps", "6") == 0
    assert_same(weights(pieces / f"{part}.safetensors"), weights(whole / f"{part}.safetensors"))
    assert any(not torch.equal(after_four[k], v) for k, v in weights(whole / f"{part}.safetensors").items())
    log = read_log(pieces / f"{part}-run" / "log.jsonl")
    assert [row["step"] for row in log] == list(range(1, 7))
    assert [row["loss"] for row in log] == [row["loss"] for row in read_log(whole / f"{part}-run" / "log.jsonl")]
    assert Image.open(pieces / f"{part}-run" / "loss.png").size == (900, 360)
    if part == "vae":
        assert [row["kind"] for row in log] == ["images", "images", "images", "clip", "images", "images"]
    # a finished run asked for no more steps does nothing and keeps its files
    assert train(*args, "--out", str(pieces), "--steps", "6") == 0
    assert len(read_log(pieces / f"{part}-run" / "log.jsonl")) == 6


def test_another_setting_in_the_same_folder_is_refused(clips, tmp_path, capsys):
    args = ["--part", "speech", "--data", str(clips), "--out", str(tmp_path), "--steps", "1"]
    assert train(*args, "--lr", "1e-3") == 0
    assert train(*args, "--lr", "2e-3") == 2
    assert "holds a run with other settings (lr: 0.001 -> 0.002); use another --out or the same settings" in (
        capsys.readouterr().err)


def test_the_dit_part_trains_on_the_trained_parts_and_resumes(clips, tmp_path, capsys):
    from types import SimpleNamespace

    from fantasy.weights.demo import demo_components, load_demo_pipeline, save_part

    model = tmp_path / "model"
    args = ["--part", "dit", "--stage", "2", "--data", str(clips), "--out", str(model), "--frames", "9",
            "--size", "64x64", "--save-every", "1", "--lip-weight", "2"]
    assert train(*args, "--steps", "1") == 2
    assert "lacks vae.safetensors, speech.safetensors; train it with `python -m fantasy train --preset demo --part vae" in (
        capsys.readouterr().err)
    parts = SimpleNamespace(**demo_components(seed=3))
    save_part(parts, "vae", model / "vae.safetensors")
    save_part(parts, "speech", model / "speech.safetensors")
    assert train(*args, "--steps", "2") == 0
    run = model / "dit-run"
    assert train(*args, "--steps", "3") == 0
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert torch.load(run / "state.pt", weights_only=False)["step"] == 3
    assert sorted(p.name for p in run.glob("step-*")) == ["step-000001.safetensors", "step-000002.safetensors",
                                                         "step-000003.safetensors"]
    published = weights(model / "dit.safetensors")
    assert_same(published, weights(run / "step-000003.safetensors"))
    assert any(k.startswith("motion_intensity.") for k in published) and "audio_proj.proj.weight" in published
    assert not torch.equal(published["blocks.0.ffn.net.0.proj.weight"],
                           weights(run / "step-000001.safetensors")["blocks.0.ffn.net.0.proj.weight"])  # the base trains
    pipe = load_demo_pipeline(model)
    torch.testing.assert_close(pipe.transformer.blocks[0].ffn.net[0].proj.weight,
                               published["blocks.0.ffn.net.0.proj.weight"], rtol=0, atol=0)
    assert train(*args, "--steps", "4", "--lr", "5e-4") == 2
    assert "holds a run with other settings (lr); continue it with the same settings" in capsys.readouterr().err


def test_demo_parts_need_the_demo_preset(clips, tmp_path, capsys):
    assert main(["train", "--part", "vae", "--data", str(clips), "--out", str(tmp_path)]) == 2
    assert "--part vae trains a part of the demo model: use --preset demo" in capsys.readouterr().err
    assert main(["train", "--preset", "demo", "--stage", "2", "--data", str(clips), "--out", str(tmp_path)]) == 2
    assert "the demo preset trains part by part (--part vae, speech or dit)" in capsys.readouterr().err
    assert main(["train", "--stage", "2", "--modules", "dit,audio", "--data", str(clips), "--out", str(tmp_path)]) == 2
    assert "--modules dit trains a whole base DiT, which only the demo preset does" in capsys.readouterr().err
    from fantasy.weights.demo import load_demo_pipeline

    with pytest.raises(WeightsMissing, match=r"The demo model in .* lacks vae.safetensors, speech.safetensors, "
                                             r"dit.safetensors; train it with"):
        load_demo_pipeline(tmp_path / "nothing")


def test_the_audio_check_sees_whether_the_dit_reads_the_speech(clips, tmp_path):
    from fantasy.model.assemble import assemble
    from fantasy.train.audio_check import audio_check
    from fantasy.train.cache import cache_dataset
    from fantasy.train.clips import SampleSpec
    from fantasy.train.dataset import TrainingSet
    from fantasy.weights.demo import demo_components, install_demo_motion

    pipe = assemble(demo_components())
    install_demo_motion(pipe)
    summary = cache_dataset(pipe, clips, SampleSpec(num_frames=9, fps=23.0, width=64, height=64), tmp_path / "cache")
    heldout = TrainingSet.from_cache_dir(summary.cache_dir)
    untrained = audio_check(pipe, heldout, sigmas=(0.5,))
    # the adapter starts at zero: the speech cannot change anything yet
    assert untrained.lips["own"] == untrained.lips["other"] == untrained.lips["none"]
    assert untrained.lip_gap == 0.0 and untrained.clips == 2
    with torch.no_grad():
        for block in pipe.transformer.blocks:
            for linear in (block.attn2.processor.k_proj, block.attn2.processor.v_proj):
                linear.weight.normal_(0, 0.5)
    listening = audio_check(pipe, heldout, sigmas=(0.5,))
    assert listening.lips["own"] != listening.lips["other"] and listening.lips["none"] == untrained.lips["none"]


def test_a_clip_that_fails_to_decode_once_is_read_again(monkeypatch, tmp_path):
    """Seen on the loaded machine: ffmpeg timed out while starting; the hours-long VAE run must not stop on that."""
    import numpy as np

    from fantasy.errors import UnsupportedVideo
    from fantasy.metrics import frames as frames_module
    from fantasy.train import vae_trainer

    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) < 3:
            raise UnsupportedVideo("Could not read 'x.mp4' as a video (timeout). Use an mp4/mov/webm/mkv file.")
        return type("Clip", (), {"frames": np.zeros((1, 2, 2, 3), np.uint8)})()

    monkeypatch.setattr(frames_module, "read_video", flaky)
    monkeypatch.setattr(vae_trainer.time, "sleep", lambda seconds: None)
    assert vae_trainer._read_frames(tmp_path / "x.mp4").shape == (1, 2, 2, 3) and len(calls) == 3
    calls.clear()
    with pytest.raises(UnsupportedVideo, match="timeout"):
        vae_trainer._read_frames(tmp_path / "x.mp4", tries=2)
    assert len(calls) == 2


def test_the_vae_settings_ignore_diffusers_bookkeeping():
    """`_use_default_values` is a set in diffusers: its order differs between processes, which stopped a resume."""
    from fantasy.train.vae_trainer import architecture

    a = {"base_dim": 12, "z_dim": 16, "_use_default_values": ["dropout", "patch_size"], "latents_mean": [0.0]}
    b = {"z_dim": 16, "base_dim": 12, "_use_default_values": ["patch_size", "dropout"], "latents_mean": [0.3]}
    assert architecture(a) == architecture(b) == {"base_dim": 12, "z_dim": 16}
    assert architecture({**a, "base_dim": 16}) != architecture(b)
