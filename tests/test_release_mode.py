"""`--release` (`fantasy.release`): the official infer.py's one clip, its decode tiling and truncation, and
the options it refuses."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fantasy.errors import InvalidSetting
from fantasy.generation import Settings, generate, prepare_inputs
from fantasy.model.decode import (
    blend_tiles,
    decode_release_tiles,
    tile_starts,
    to_uint8_frames,
    to_uint8_truncated,
)
from fantasy.model.precision import apply_precision
from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT
from fantasy.release import RELEASE_PROMPT, check_release_pipeline
from fantasy.weights.presets import PRESETS, load_pipeline

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from .release_oracle import (
    release_frames,
    release_tile_tasks,
    release_tiled_decode,
    release_vae_tile_decoder,
)

TINY = PRESETS["tiny"]
OFFICIAL_NEGATIVE = (  # infer.py's negative_prompt, verbatim
    "人物静止不动，静止，色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


# ---- settings -------------------------------------------------------------------------------------


def test_release_settings_default_to_the_release_prompts():
    settings = Settings(release=True).resolved(TINY)
    assert settings.prompt == RELEASE_PROMPT == "A woman is talking."
    assert settings.negative_prompt == DEFAULT_NEGATIVE_PROMPT == OFFICIAL_NEGATIVE
    assert (settings.steps, settings.seed, settings.text_guidance, settings.audio_guidance, settings.fps) == (
        30, 1111, 5.0, 5.0, 23)
    assert Settings().resolved(TINY).prompt == "A person is talking."
    assert Settings(release=True, prompt="A man is talking.").resolved(TINY).prompt == "A man is talking."


@pytest.mark.parametrize("change, message", [
    ({"steps": 20}, "--release runs the release's 30 steps, got 20"),
    ({"negative_prompt": "blurry"}, "--release uses the release's negative prompt; drop --negative-prompt"),
    ({"motion": (0.5, 0.5)}, "--release runs the released adapter only: no motion coefficients"),
])
def test_release_settings_refuse_what_the_release_cannot_do(change, message):
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$"):
        Settings(release=True, **change).resolved(TINY)


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_release_pipeline_checks(pipe):
    from fantasy.model.identity import install_identity_module
    from fantasy.model.motion import install_motion_module
    from fantasy.weights.quantize import enable_fp8_storage

    check_release_pipeline(pipe, demo=True)  # the tiny pipeline as loaded is fine
    with pytest.raises(InvalidSetting, match="^--release runs the DiT in bf16; this one computes in torch.float32$"):
        check_release_pipeline(pipe, demo=False)
    apply_precision(pipe.transformer, "stock")
    try:
        with pytest.raises(InvalidSetting, match="^--release computes the DiT in the release's mixed precision; "
                                                 "drop --precision stock$"):
            check_release_pipeline(pipe, demo=True)
    finally:
        apply_precision(pipe.transformer, "mixed")
    pipe.few_step_mode = True
    try:
        with pytest.raises(InvalidSetting, match="^--release runs the release's 30-step sampler; drop --fast$"):
            check_release_pipeline(pipe, demo=True)
    finally:
        pipe.few_step_mode = False
    other = load_pipeline("tiny")
    other.transformer.enable_cache(__import__("diffusers").FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(InvalidSetting, match="^--release computes every block at every step; drop --step-cache$"):
        check_release_pipeline(other, demo=True)
    other = load_pipeline("tiny")
    other.motion_context = install_motion_module(other.transformer)
    with pytest.raises(InvalidSetting, match="^--release runs the released adapter only; this one has trained "
                                                 "motion/identity modules \\(use the released fantasytalking_model.ckpt\\)$"):
        check_release_pipeline(other, demo=True)
    other = load_pipeline("tiny")
    other.identity_context = install_identity_module(other.transformer, 16)
    with pytest.raises(InvalidSetting, match="^--release runs the released adapter only; this one has trained "):
        check_release_pipeline(other, demo=True)
    other = load_pipeline("tiny")
    enable_fp8_storage(other.transformer, torch.float32)
    with pytest.raises(InvalidSetting, match=r"^--release runs the bf16 DiT \(--dit bf16, no --fp8-linears\); this DiT's weights "
                                                  r"are quantized$"):
        check_release_pipeline(other, demo=True)


# ---- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(64, 64), (60, 104), (90, 160), (8, 8), (30, 52), (31, 53), (46, 79)])
def test_tiles_are_the_releases(height, width):
    """512x512 -> rows [0, 15, 30, 45] x columns [0, 26]; 832x480 -> [0, 15, 30] x [0, 26, 52]; ..."""
    ours = [(h, min(h + 30, height), w, min(w + 52, width)) for h in tile_starts(height, 30, 15)
            for w in tile_starts(width, 52, 26)]
    theirs = [(h, min(h_, height), w, min(w_, width)) for h, h_, w, w_ in release_tile_tasks(height, width)]
    assert ours == theirs
    assert tile_starts(64, 30, 15) == [0, 15, 30, 45] and tile_starts(64, 52, 26) == [0, 26]


@pytest.mark.parametrize("height, width", [(64, 64), (60, 104), (31, 53)])
def test_blending_is_the_releases(height, width):
    """Any per-tile content (here: tile-dependent values) is blended exactly as the release blends it."""
    latents = torch.randn(1, 16, 2, height, width, generator=torch.Generator().manual_seed(height))

    def fake(tile):  # [1, 3, F, 8h, 8w], different for each tile (depends on its content and size)
        rows, cols = tile.shape[3] * 8, tile.shape[4] * 8
        base = tile.mean() + torch.linspace(-2, 2, rows)[:, None] * torch.linspace(-1, 1, cols)[None, :]
        return base.expand(1, 3, 5, rows, cols)

    ours = blend_tiles(height, width, lambda h0, h1, w0, w1: fake(latents[:, :, :, h0:h1, w0:w1]))
    assert torch.equal(ours, release_tiled_decode(fake, latents))
    np.testing.assert_array_equal(to_uint8_truncated(ours), release_frames(ours))


def test_truncation_not_rounding():
    video = torch.tensor([-1.0, -0.999, 0.0, 0.0039, 0.999, 1.0]).view(1, 1, 1, 1, 6).expand(1, 3, 1, 1, 6)
    assert to_uint8_truncated(video)[0, 0, :, 0].tolist() == [0, 0, 127, 127, 254, 255]
    assert to_uint8_frames(video)[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255]  # ours: rounded


@pytest.mark.slow
@pytest.mark.parametrize("tile, stride", [((30, 52), (15, 26)), ((4, 6), (2, 3))])
def test_release_decode_on_the_tiny_vae(pipe, tile, stride):
    """One tile (the release's size on a 64 px video) and many (small tiles): the release's tiled decode."""
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = np.concatenate(list(decode_release_tiles(pipe.vae, latents, tile, stride)))
        theirs = release_frames(release_tiled_decode(release_vae_tile_decoder(pipe.vae), latents, tile, stride))
    assert ours.shape == (9, 64, 64, 3)
    assert np.abs(ours.astype(int) - theirs).max() <= 1  # same decoder; conv rounding may flip a truncation
    assert (ours != theirs).mean() < 0.001
    chunks = [len(f) for f in decode_release_tiles(pipe.vae, latents, tile, stride)]
    assert chunks == [1, 4, 4]


# ---- generation -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_release_generation_is_the_official_clip(pipe, tmp_path):
    """6.4 s of speech, 9-frame clips: the long-video path would chain windows over the whole track; release
    mode makes one clip from the speech's first 9/23 s, with that clip's own features, decoded the release's way."""
    from fantasy.media.audio import clip_samples, load_audio
    from tests.mp4_probe import probe

    calls, frames = [], []
    original_denoise = type(pipe).denoise

    def spy(self, *args, **kwargs):
        latents = original_denoise(self, *args, **kwargs)
        calls.append((args, kwargs, latents))
        return latents

    type(pipe).denoise = spy
    try:
        result = generate(pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, tmp_path / "r.mp4",
                          Settings(release=True, max_frames=9, longest_edge=64), TINY, on_frames=frames.append)
    finally:
        type(pipe).denoise = original_denoise
    assert (result.release, result.num_frames, result.windows, result.speech_cut) == (True, 9, 1, True)
    assert probe(tmp_path / "r.mp4").frames == 9
    (args, kwargs, latents), = calls
    with torch.no_grad():
        text, negative = pipe.encode_prompt(prompt=RELEASE_PROMPT, negative_prompt=OFFICIAL_NEGATIVE,
                                            do_classifier_free_guidance=True, max_sequence_length=512)
    assert torch.equal(kwargs["prompt_embeds"], text) and torch.equal(kwargs["negative_prompt_embeds"], negative)
    assert kwargs["num_inference_steps"] == 30 and kwargs["num_frames"] == 9
    windows, lengths = pipe.encode_audio(clip_samples(load_audio(EXAMPLE_SPEECH), 9, 23), 9)
    assert torch.equal(args[1], windows) and torch.equal(args[2], lengths)
    written = np.concatenate(frames)
    with torch.no_grad():
        np.testing.assert_array_equal(written, np.concatenate(list(decode_release_tiles(pipe.vae, latents))))
        rounded = np.concatenate(list(pipe.decode_frames(latents)))
    difference = rounded.astype(int) - written
    assert set(np.unique(difference)) <= {0, 1} and difference.any()  # truncation, not rounding

    plain = prepare_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(max_frames=9, longest_edge=64).resolved(TINY))
    assert plain.num_frames == 149  # without --release: the whole speech, in windows of 9 frames


# ---- the one clip's edges: "the speech was cut" exactly where the clip stops covering it ----------------

# At 23 fps the release's rule gives 81 frames for speech of [76/23, 80/23) s = [3.3043, 3.4783) s: the clip holds
# the speech whole, so nothing was cut; from 80/23 s on the rule asks for 85 frames and the clip keeps 81.
@pytest.mark.parametrize("samples, frames, cut", [
    (52_869, 77, False),  # 3.30431 s: 23 x d = 75.99994
    (52_870, 81, False),  # 3.30438 s: the first length that needs all 81 frames
    (55_652, 81, False),  # 3.47825 s: 23 x d = 79.99975, the last that fits
    (55_653, 81, True),  # 3.47831 s: 23 x d = 80.00119, the rule's 85 frames are cut to 81
])
def test_release_mode_says_cut_exactly_past_the_clip(tmp_path, samples, frames, cut):
    import soundfile

    from fantasy.release import release_frame_count

    from .conftest import speech_like

    assert release_frame_count(samples / 16_000, 23, 81) == (frames, cut)
    path = tmp_path / "speech.wav"
    soundfile.write(path, speech_like(samples / 16_000)[:samples], 16_000)
    inputs = prepare_inputs(EXAMPLE_IMAGE, path, Settings(release=True, longest_edge=64).resolved(TINY))
    assert (inputs.num_frames, inputs.speech_cut, inputs.speech_seconds) == (frames, cut, samples / 16_000)


@pytest.mark.parametrize("duration, max_frames, expected", [
    (80 / 23, 81, (85, 81, True)), (80 / 23 - 1e-9, 81, (81, 81, False)),  # 81 frames: 80/23 s is the edge
    (8 / 23, 9, (13, 9, True)), (8 / 23 - 1e-9, 9, (9, 9, False)),  # a 9-frame clip: 8/23 s
])
def test_release_frame_count_at_the_edge_of_its_clip(duration, max_frames, expected):
    from fantasy.media.audio import frame_count
    from fantasy.release import release_frame_count

    wanted = int(23 * duration // 4) * 4 + 5
    assert (wanted, *release_frame_count(duration, 23, max_frames)) == expected
    assert frame_count(duration, 23, max_frames) == expected[1]


def test_the_long_path_says_cut_only_past_the_maximum_duration(tmp_path):
    """Without --release: speech exactly as long as the maximum duration is whole; one sample more is cut."""
    import soundfile

    from .conftest import speech_like

    for samples, cut in ((32_000, False), (32_001, True)):
        path = tmp_path / f"speech-{samples}.wav"
        soundfile.write(path, speech_like(2.1)[:samples], 16_000)
        inputs = prepare_inputs(EXAMPLE_IMAGE, path, Settings(longest_edge=64, max_duration=2.0).resolved(TINY))
        assert (inputs.num_frames, inputs.speech_cut) == (49, cut)  # 46 // 4 * 4 + 5


# ---- command line -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--dit", "q8_0"], "--release runs the release's bf16 DiT; drop --dit q8_0"),
    (["--precision", "stock"], "--release computes the DiT in the release's mixed precision; drop --precision"),
    (["--step-cache", "fbc"], "--release computes every block at every step; drop --step-cache"),
    (["--fp8-linears"], "--release runs the DiT's matmuls in bf16; drop --fp8-linears"),
    (["--expression", "0.7"], "--release runs the released adapter only; drop --expression/--body"),
    (["--steps", "20"], "--release runs the release's 30 steps, got 20"),
])
def test_cli_release_refusals_exit_2_before_loading(tmp_path, capsys, monkeypatch, flags, message):
    from fantasy import cli
    from fantasy.weights import presets

    monkeypatch.setattr(presets, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    code = cli.main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out",
                     str(tmp_path / "o.mp4"), "--release", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: {message}"
    assert not (tmp_path / "o.mp4").exists()
