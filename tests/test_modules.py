"""The paper's motion-intensity and identity modules: inert at zero init, effective when trained, one file."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from fantasy.app.sliders import motion_controls
from fantasy.errors import CheckpointMismatch, InvalidSetting
from fantasy.generation import Settings
from fantasy.model.adapter import install_audio_adapter
from fantasy.model.identity import IdentityBranch, has_identity_module, install_identity_module
from fantasy.model.motion import (
    MOTION_MODULE_MODE,
    TRAINING_FREE_MODE,
    MotionIntensityModel,
    install_motion_module,
)
from fantasy.weights.quantize import _skipped_by_quantization
from fantasy.weights.tiny import CLIP_HIDDEN, CONTEXT_DIM, tiny_transformer
from fantasy.weights.trained_modules import save_modules, trainable_parameters

from .conftest import tiny_call_args
from .test_adapter import IMAGE_TOKENS, audio, inputs


def randomise(module: torch.nn.Module, seed: int, std: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture
def models():
    torch.manual_seed(0)
    stock = tiny_transformer()
    ours = copy.deepcopy(stock)
    audio_ctx = install_audio_adapter(ours, CONTEXT_DIM, IMAGE_TOKENS)
    install_audio_adapter(stock, CONTEXT_DIM, IMAGE_TOKENS)
    return stock, ours, audio_ctx


def run(model, audio_ctx, motion_ctx=None, motion=None, identity_ctx=None, face=None):
    windows, lengths = audio()
    with audio_ctx.use(windows, lengths, 1.0):
        if motion_ctx is not None:
            with motion_ctx.use(motion):
                if identity_ctx is not None:
                    with identity_ctx.use(face):
                        return model(**inputs())[0]
                return model(**inputs())[0]
        if identity_ctx is not None:
            with identity_ctx.use(face):
                return model(**inputs())[0]
        return model(**inputs())[0]


def face_tokens(seed=5):
    return torch.randn(1, 17, CLIP_HIDDEN, generator=torch.Generator().manual_seed(seed))


# ---- motion ---------------------------------------------------------------------------------


def test_zero_initialised_motion_module_leaves_the_output_bit_identical(models):
    stock, ours, audio_ctx = models
    motion_ctx = install_motion_module(ours)
    assert torch.count_nonzero(ours.motion_intensity.mlp[-1].weight) == 0
    expected = run(stock, audio_ctx)
    for motion in [(0.0, 0.0), (1.0, 0.2), None]:
        assert torch.equal(run(ours, audio_ctx, motion_ctx, motion), expected)


def test_trained_motion_module_different_coefficients_differ_equal_ones_match(models):
    _, ours, audio_ctx = models
    motion_ctx = install_motion_module(ours)
    randomise(ours.motion_intensity, seed=11, std=0.05)
    low = run(ours, audio_ctx, motion_ctx, (0.1, 0.1))
    assert torch.equal(low, run(ours, audio_ctx, motion_ctx, (0.1, 0.1)))
    high_expression = run(ours, audio_ctx, motion_ctx, (0.9, 0.1))
    high_body = run(ours, audio_ctx, motion_ctx, (0.1, 0.9))
    assert (low - high_expression).abs().max() > 1e-3
    assert (low - high_body).abs().max() > 1e-3
    assert (high_expression - high_body).abs().max() > 1e-3


def test_motion_offset_reaches_every_blocks_modulation(models):
    """The hook adds the module's output to `timestep_proj`, the input every block modulates with."""
    _, ours, audio_ctx = models
    motion_ctx = install_motion_module(ours)
    randomise(ours.motion_intensity, seed=2, std=0.05)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda _m, args: seen.append(args[2].clone())) for b in ours.blocks]
    run(ours, audio_ctx)
    run(ours, audio_ctx, motion_ctx, (0.3, 0.7))
    for h in hooks:
        h.remove()
    stock_temb, moved_temb = seen[0], seen[len(ours.blocks)]
    offset = ours.motion_intensity(torch.tensor([[0.3, 0.7]])).unflatten(1, (6, -1))
    torch.testing.assert_close(moved_temb - stock_temb, offset, rtol=0, atol=1.2e-7)  # fp32 sum: measured 6.0e-8
    assert all(torch.equal(seen[len(ours.blocks)], t) for t in seen[len(ours.blocks):])


def test_motion_coefficients_are_checked():
    model = MotionIntensityModel(inner_dim=24, hidden_dim=8, frequencies=4)
    with pytest.raises(ValueError, match=r"coefficients \[B, 2\]"):
        model(torch.zeros(1, 3))
    transformer = tiny_transformer()
    ctx = install_motion_module(transformer, model)
    with pytest.raises(InvalidSetting, match="expression intensity must be between 0 and 1, got 1.5"), ctx.use((1.5, 0.5)):
        pass
    with pytest.raises(RuntimeError, match="already installed"):
        install_motion_module(transformer)


def test_slider_mode_follows_the_pipeline():
    settings, mode = motion_controls(0.8, 0.3, Settings(), trained=True)
    assert mode == MOTION_MODULE_MODE and settings.motion == (0.8, 0.3)
    assert settings.audio_weight == 1.0 and settings.prompt == Settings().prompt  # nothing else is touched
    settings, mode = motion_controls(0.8, 0.3, Settings(), trained=False)
    assert mode == TRAINING_FREE_MODE and settings.motion is None
    assert settings.audio_weight == pytest.approx(1.24)


def test_quantization_skips_the_new_modules():
    transformer = tiny_transformer()
    install_audio_adapter(transformer, CONTEXT_DIM, IMAGE_TOKENS)
    install_motion_module(transformer)
    install_identity_module(transformer, CLIP_HIDDEN)
    assert _skipped_by_quantization(transformer, "motion_intensity.mlp.0")
    assert _skipped_by_quantization(transformer, "blocks.0.attn2.processor.identity.k_proj")
    assert not _skipped_by_quantization(transformer, "blocks.0.ffn.net.0.proj")


# ---- identity -------------------------------------------------------------------------------


def test_zero_initialised_identity_branch_leaves_the_output_bit_identical(models):
    stock, ours, audio_ctx = models
    identity_ctx = install_identity_module(ours, CLIP_HIDDEN)
    assert has_identity_module(ours) and not has_identity_module(stock)
    assert torch.equal(run(ours, audio_ctx, identity_ctx=identity_ctx, face=face_tokens()), run(stock, audio_ctx))


def test_trained_identity_branch_follows_the_face_tokens(models):
    _, ours, audio_ctx = models
    identity_ctx = install_identity_module(ours, CLIP_HIDDEN)
    for i, block in enumerate(ours.blocks):
        randomise(block.attn2.processor.identity, seed=20 + i)
    plain = run(ours, audio_ctx)
    face_a = run(ours, audio_ctx, identity_ctx=identity_ctx, face=face_tokens(5))
    assert torch.equal(face_a, run(ours, audio_ctx, identity_ctx=identity_ctx, face=face_tokens(5)))
    face_b = run(ours, audio_ctx, identity_ctx=identity_ctx, face=face_tokens(6))
    assert (face_a - plain).abs().max() > 1e-3 and (face_a - face_b).abs().max() > 1e-3


def test_identity_branch_matches_plain_attention():
    branch = IdentityBranch(token_dim=6, inner_dim=8)
    randomise(branch, seed=3)
    query = torch.randn(2, 5, 2, 4)
    tokens = torch.randn(1, 3, 6)
    k = branch.k_proj(tokens).view(1, 3, 2, 4)
    v = branch.v_proj(tokens).view(1, 3, 2, 4)
    weights = torch.softmax(torch.einsum("bshd,nthd->bhst", query, k) / 2.0, dim=-1)  # sqrt(head_dim 4) = 2
    expected = torch.einsum("bhst,nthd->bshd", weights, v).reshape(2, 5, 8)
    torch.testing.assert_close(branch(query, tokens), expected, rtol=0, atol=5e-7)  # SDPA vs einsum: measured 2.4e-7


# ---- one file for all trainable modules, through the pipeline ------------------------------


@pytest.mark.slow
def test_modules_file_round_trip_installs_and_changes_the_pipeline(tmp_path, speech_wav):
    from fantasy.weights.presets import load_pipeline

    trained = load_pipeline("tiny")
    trained.motion_context = install_motion_module(trained.transformer)
    trained.identity_context = install_identity_module(trained.transformer, CLIP_HIDDEN)
    randomise(trained.transformer.motion_intensity, seed=4, std=0.05)
    for i, block in enumerate(trained.transformer.blocks):
        randomise(block.attn2.processor.identity, seed=40 + i)
    path = tmp_path / "modules.safetensors"
    count = save_modules(trained, path)
    assert count == len(trainable_parameters(trained)) == 3 + 2 * 2 + 6 + 2 * 2

    fresh = load_pipeline("tiny", adapter=path)
    assert fresh.motion_mode == MOTION_MODULE_MODE
    assert has_identity_module(fresh.transformer)
    for key, param in trainable_parameters(fresh).items():
        assert torch.equal(param, trainable_parameters(trained)[key]), key

    plain = load_pipeline("tiny")
    assert plain.motion_mode == TRAINING_FREE_MODE
    face = Image.new("RGB", (32, 32), (200, 150, 120))
    args = tiny_call_args(fresh, speech_wav)
    with pytest.raises(ValueError, match="pass the portrait's face crop"):
        fresh.denoise(**args)
    out_a = fresh.denoise(**args, motion=(0.2, 0.2), face_image=face)
    out_b = fresh.denoise(**args, motion=(0.9, 0.9), face_image=face)
    out_plain = plain.denoise(**args)
    assert (out_a - out_b).abs().max() > 1e-4 and (out_a - out_plain).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no motion module"):
        plain.denoise(**args, motion=(0.5, 0.5))


@pytest.mark.slow
def test_incomplete_modules_file_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from fantasy.weights.presets import load_pipeline

    trained = load_pipeline("tiny")
    trained.identity_context = install_identity_module(trained.transformer, CLIP_HIDDEN)
    path = tmp_path / "modules.safetensors"
    save_modules(trained, path)
    state = load_file(str(path))
    del state["blocks.1.attn2.processor.identity.v_proj.weight"]
    save_file(state, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"Missing 1: blocks\.1\.attn2\.processor\.identity\.v_proj\.weight"):
        load_pipeline("tiny", adapter=tmp_path / "cut.safetensors")



# ---- through generate(): the result reports the mode; the identity module needs a face -------


@pytest.mark.slow
def test_generate_reports_the_motion_mode_and_needs_a_face_for_identity(tmp_path, speech_wav, monkeypatch):
    from fantasy.errors import NoFaceFound
    from fantasy.generation import generate
    from fantasy.weights.presets import get_preset, load_pipeline

    from .conftest import EXAMPLE_IMAGE

    pipe = load_pipeline("tiny")
    small = Settings(longest_edge=64, steps=1, max_duration=0.5)
    result = generate(pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "plain.mp4", small, get_preset("tiny"))
    assert result.motion_mode == TRAINING_FREE_MODE
    with pytest.raises(InvalidSetting, match="need trained motion-module weights"):
        generate(pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "x.mp4", Settings(motion=(0.5, 0.5)), get_preset("tiny"))

    pipe.motion_context = install_motion_module(pipe.transformer)
    pipe.identity_context = install_identity_module(pipe.transformer, CLIP_HIDDEN)
    face = Image.new("RGB", (48, 48), (200, 150, 120))
    result = generate(pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "m.mp4", small, get_preset("tiny"), face_image=face)
    assert result.motion_mode == MOTION_MODULE_MODE and result.path.is_file()

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))  # nothing cached: dlib ships its models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = generate(pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "found.mp4", small, get_preset("tiny"))
    assert found.path.is_file(), "the face crop was found in the portrait, offline"
    wall = tmp_path / "wall.png"
    Image.new("RGB", (128, 128), (120, 120, 120)).save(wall)
    out = tmp_path / "no-face.mp4"
    with pytest.raises(NoFaceFound, match="No face found in the portrait"):
        generate(pipe, wall, speech_wav, out, small, get_preset("tiny"))
    assert not out.exists()
    assert not (tmp_path / "empty-torch-home").exists(), "nothing was downloaded"


def test_inference_face_crop_uses_the_landmark_box_like_training():
    import numpy as np

    from fantasy.face import FaceBox
    from fantasy.model.identity import FACE_EXPAND, face_crop, portrait_face_crop

    class StubAnalyzer:
        def require_face(self, rgb):
            return FaceBox(10, 10, 90, 110, 0.99)  # detector box: larger than the landmarks' box

        def landmarks(self, rgb, box=None):
            points = np.zeros((68, 2))
            points[:, 0] = np.linspace(40, 80, 68)
            points[:, 1] = np.linspace(50, 90, 68)
            return points

    portrait = Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8))
    crop = portrait_face_crop(portrait, StubAnalyzer())
    assert crop.size == (round(40 * FACE_EXPAND),) * 2  # the 40 px landmark box, not the 100 px detector box
    expected = face_crop(portrait, FaceBox.from_landmarks(StubAnalyzer().landmarks(None)))
    assert np.array_equal(np.asarray(crop), np.asarray(expected))
