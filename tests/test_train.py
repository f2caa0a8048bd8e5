"""Training on the tiny preset: the loss goes down, and the saved modules reload and change generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.model.motion import MOTION_MODULE_MODE
from fantasy.train.cache import cache_dataset
from fantasy.train.clips import SampleSpec
from fantasy.train.dataset import TrainingSet
from fantasy.train.objective import AdapterTrainingModel, audio_windows, flow_matching_loss, loss_weights
from fantasy.train.trainer import CHECKPOINT_NAME, LOG_NAME, TrainConfig, make_batch, prepare_modules, train
from fantasy.weights.presets import load_pipeline
from fantasy.weights.trained_modules import trainable_parameters

from .conftest import tiny_call_args
from .synthetic_clips import speech_samples, syllable_envelope, talking_frames, write_mp4, write_wav
from .synthetic_faces import measured_landmarks

SPEC = SampleSpec(num_frames=9, fps=25.0, width=64, height=64)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """Three drawn talking clips with their speech: calm, lively mouth, swaying head."""
    root = tmp_path_factory.mktemp("clips")
    for i, (gain, sway) in enumerate([(0.3, 0.0), (1.0, 0.0), (0.6, 6.0)]):
        envelope = syllable_envelope(12, seed=i)
        frames = talking_frames(gain * envelope, head_motion=sway)
        write_mp4(root / f"clip{i}.mp4", frames)
        write_wav(root / f"clip{i}.wav", speech_samples(envelope, seed=i))
    return root


@pytest.fixture(scope="module")
def training_set(dataset_dir):
    pipe = load_pipeline("tiny")
    summary = cache_dataset(pipe, dataset_dir, SPEC, landmarks=lambda: measured_landmarks)
    return TrainingSet.from_cache_dir(summary.cache_dir)


def fixed_eval_loss(pipe, dataset, stage: int, config: TrainConfig) -> float:
    """Mean loss over every clip at 3 fixed noise levels and noises, dropout off: comparable before/after."""
    model = AdapterTrainingModel(pipe)
    total, count = 0.0, 0
    eval_config = TrainConfig(data=config.data, out=config.out, drop_audio=0.0, drop_text=0.0)
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = make_batch(dataset[index], dataset, "cpu", torch.Generator(), eval_config)
            for k, sigma in enumerate((0.3, 0.6, 0.9)):
                noise = torch.randn(batch.latents.shape, generator=torch.Generator().manual_seed(100 + k))
                try:
                    total += float(model(batch, stage, sigma, noise, config.lip_weight))
                finally:
                    model.release()
                count += 1
    return total / count


@pytest.mark.parametrize("stage", [1, 2])
def test_thirty_steps_lower_the_loss_and_the_checkpoint_reloads(training_set, tmp_path, stage, speech_wav):
    pipe = load_pipeline("tiny")
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", stage=stage, steps=30, lr=3e-3,
                         num_frames=SPEC.num_frames, fps=SPEC.fps, width=64, height=64, save_every=15, lip_weight=2.0)
    prepare_modules(pipe, config.modules)
    before = fixed_eval_loss(pipe, training_set, stage, config)
    result = train(pipe, config, training_set)
    after = fixed_eval_loss(pipe, training_set, stage, config)
    assert len(result.losses) == 30 and all(np.isfinite(result.losses))
    assert after < 0.97 * before, (before, after)

    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("*.safetensors")) == [CHECKPOINT_NAME, "step-000015.safetensors",
                                                                  "step-000030.safetensors"]
    assert [json.loads(line)["step"] for line in (run / LOG_NAME).read_text().splitlines()] == list(range(1, 31))

    reloaded = load_pipeline("tiny", adapter=result.checkpoint)
    assert reloaded.motion_mode == MOTION_MODULE_MODE
    for key, param in trainable_parameters(reloaded).items():
        torch.testing.assert_close(param, trainable_parameters(pipe)[key], rtol=0, atol=0, msg=key)
    untrained = load_pipeline("tiny")
    prepare_modules(untrained, config.modules)  # same modules, zero-initialised
    args = tiny_call_args(untrained, speech_wav)
    face = Image.new("RGB", (32, 32), (180, 140, 120))
    assert (reloaded(**args, face_image=face) - untrained(**args, face_image=face)).abs().max() > 1e-4


def test_only_the_chosen_modules_train(training_set, tmp_path):
    pipe = load_pipeline("tiny")
    frozen_before = {k: v.clone() for k, v in pipe.transformer.state_dict().items() if "processor" not in k}
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", steps=3, lr=1e-2, num_frames=9, fps=25.0,
                         width=64, height=64, modules=("motion",))
    audio_before = {k: v.clone() for k, v in trainable_parameters(pipe).items()}
    train(pipe, config, training_set)
    after = trainable_parameters(pipe)
    for key, value in audio_before.items():
        assert torch.equal(after[key], value), f"{key} is not in the chosen modules but changed"
    assert any(k.startswith("motion_intensity.") and v.abs().sum() > 0 for k, v in after.items())
    for key, value in pipe.transformer.state_dict().items():
        if key in frozen_before:
            assert torch.equal(value, frozen_before[key]), f"base weight {key} changed"
    assert pipe.identity_context is None  # identity was not asked for, so it was not installed


def test_stage_one_is_clip_level_and_stage_two_frame_level(training_set):
    pipe = load_pipeline("tiny")
    features = training_set[0]["audio_features"][None]
    clip_windows, clip_lengths = audio_windows(pipe, features, 9, stage=1)
    frame_windows, _ = audio_windows(pipe, features, 9, stage=2)
    assert clip_windows.shape[:2] == (1, 1) and int(clip_lengths[0]) == features.shape[1]
    assert frame_windows.shape[1] == 3  # (9 - 1) / 4 + 1 latent frames


def test_lip_weight_counts_the_mouth_more():
    mask = torch.zeros(3, 2, 2)
    mask[1, 0, 1] = 1
    weights = loss_weights(mask, torch.Size([1, 16, 3, 4, 4]), lip_weight=2.0)
    assert weights.shape == (3, 4, 4)
    assert weights[1, 0:2, 2:4].eq(3.0).all() and weights.sum() == 48 + 2 * 4
    assert loss_weights(mask, torch.Size([1, 16, 3, 4, 4]), 0.0).eq(1).all()


class MouthErrorTransformer:
    """Predicts the exact velocity except for an error of 1 on the tokens the lip mask covers."""

    dtype = torch.float32

    def __init__(self, batch, sigma):
        self.target, self.sigma = -batch.latents.float(), sigma  # noise 0: the velocity target is -x0
        # The mask is on the 2x2-patch token grid; each token covers 2x2 latent positions (nearest upsampling).
        self.mouth = batch.lip_mask.float().repeat_interleave(2, 1).repeat_interleave(2, 2)

    def __call__(self, hidden_states, **kw):
        noisy = hidden_states[:, :16]
        assert torch.allclose(noisy, (1 - self.sigma) * -self.target)  # fed x_sigma with zero noise
        return (self.target + self.mouth,)


def test_stage_two_loss_weights_the_lips(training_set):
    """With the error only inside the mouth tokens, the stage-2 loss is the weighted mean, to the last bit:
    mouth positions m of n, squared error 1 there: (1 + w) m / (n + w m). Stage 1 ignores the mask: m / n."""
    import types

    config = TrainConfig(data=".", out=".", drop_audio=0.0, drop_text=0.0)
    batch = make_batch(training_set[1], training_set, "cpu", torch.Generator(), config)
    pipe = types.SimpleNamespace(transformer=MouthErrorTransformer(batch, 0.5))
    mouth, total = int(pipe.transformer.mouth.sum()), pipe.transformer.mouth.numel()
    assert 0 < mouth < total
    noise = torch.zeros_like(batch.latents)
    for stage, lip_weight, expected in [(2, 0.0, mouth / total), (2, 5.0, 6 * mouth / (total + 5 * mouth)),
                                        (1, 5.0, mouth / total)]:
        loss = flow_matching_loss(pipe, batch, stage, 0.5, noise, lip_weight=lip_weight)
        assert float(loss) == pytest.approx(expected, rel=1e-8), (stage, lip_weight)  # fp32 sums: measured 5e-9


def test_bad_training_settings_are_named():
    with pytest.raises(InvalidSetting, match="stage must be 1 or 2, got 3"):
        TrainConfig(data=".", out=".", stage=3).check()
    with pytest.raises(InvalidSetting, match="modules must be some of audio, motion, identity, dit, got face"):
        TrainConfig(data=".", out=".", modules=("face",)).check()



def test_train_command_then_generate_with_its_checkpoint(dataset_dir, tmp_path, capsys, monkeypatch):
    import shutil

    from fantasy.cli import main
    from fantasy.metrics.frames import read_video

    from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data, ignore=shutil.ignore_patterns(".cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-face-weights"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FANTASY_FACE_BACKEND", "face-alignment")  # the optional backend, without its weights
    args = ["train", "--data", str(data), "--stage", "1", "--out", str(tmp_path / "run"), "--steps", "2",
            "--frames", "9", "--fps", "25"]
    assert main(args) == 2  # no landmarks file and no face-alignment weights: a clear error, not a crash
    assert "2DFAN4" in capsys.readouterr().err
    monkeypatch.delenv("FANTASY_FACE_BACKEND")

    for video in data.glob("*.mp4"):  # precomputed landmarks, as docs/training.md describes
        np.save(data / f"{video.stem}.landmarks.npy", np.stack([measured_landmarks(f) for f in read_video(video).frames]))
    assert main(args) == 0
    out = capsys.readouterr()
    assert "step 2/2: loss" in out.err and "modules.safetensors" in out.out

    face = tmp_path / "face.png"
    Image.open(EXAMPLE_IMAGE).crop((150, 20, 370, 240)).save(face)
    video = tmp_path / "o.mp4"
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(video),
                 "--adapter", str(tmp_path / "run" / CHECKPOINT_NAME), "--steps", "1", "--max-duration", "0.5",
                 "--size", "64", "--face", str(face), "--expression", "0.8", "--body", "0.2"])
    assert code == 0 and video.is_file()
    assert "motion: motion module (trained weights)" in capsys.readouterr().out


def test_bf16_mixed_precision_and_accumulation_run(training_set, tmp_path):
    pipe = load_pipeline("tiny")
    config = TrainConfig(data=tmp_path, out=tmp_path / "run", stage=2, steps=2, grad_accum=2, num_frames=9, fps=25.0,
                         width=64, height=64, mixed_precision="bf16", lr=1e-3)
    result = train(pipe, config, training_set)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    weights = trainable_parameters(pipe)
    assert all(p.dtype == torch.float32 for p in weights.values())  # fp32 master weights under bf16 autocast
    assert weights["motion_intensity.mlp.4.weight"].abs().sum() > 0  # the zero layer moved
