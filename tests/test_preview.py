"""The live preview: the published latent->RGB map, the clean estimate from the pipeline, the step budget,
the clip files, and the preview's path through generate, the stream, the CLI and the app's helpers."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from fantasy.model.preview import (
    LATENT_RGB_SOURCE,
    WAN21_LATENT_RGB_BIAS,
    WAN21_LATENT_RGB_FACTORS,
    LatentRGB,
    LivePreview,
    Preview,
    PreviewThrottle,
    channel_correlation,
    fit_latent_rgb,
    frame_durations_ms,
    latent_cell_means,
    upscale,
    write_clip,
)
from fantasy.model.sampling import make_scheduler
from tests.conftest import EXAMPLE_IMAGE, tiny_call_args
from tools.preview_fit import portrait_clip

# ComfyUI's Wan21.latents_mean / latents_std (same file and commit as the factors): the space it samples in,
# and so the space its Latent2RGB previewer applies the factors in, is (z - mean) / std with these.
COMFY_WAN21_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
COMFY_WAN21_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def test_the_published_map_applies_to_our_normalised_latents():
    """Our pipeline normalises with the VAE config's mean/std: the same numbers ComfyUI normalises with."""
    from diffusers import AutoencoderKLWan

    assert "9a9a69fd745de98e89b0f1a629cd3bc43d513a42" in LATENT_RGB_SOURCE and "class Wan21" in LATENT_RGB_SOURCE
    assert len(WAN21_LATENT_RGB_FACTORS) == 16 and {len(row) for row in WAN21_LATENT_RGB_FACTORS} == {3}
    assert WAN21_LATENT_RGB_FACTORS[0] == (-0.1299, -0.1692, 0.2932)  # channel 0 -> (R, G, B)
    assert WAN21_LATENT_RGB_BIAS == (-0.1835, -0.0868, -0.3360)
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters  # Wan 2.1's VAE config (the checkpoint's too)
    assert defaults["latents_mean"].default == pytest.approx(COMFY_WAN21_MEAN)
    assert defaults["latents_std"].default == pytest.approx(COMFY_WAN21_STD)


def synthetic_latent(target: np.ndarray) -> torch.Tensor:
    """The minimum-norm normalised latent [1, 16, T, h, w] whose published-map colour is `target` [T, h, w, 3]."""
    factors = torch.tensor(WAN21_LATENT_RGB_FACTORS)
    rgb = torch.from_numpy(target).float() - torch.tensor(WAN21_LATENT_RGB_BIAS)
    z = rgb @ torch.linalg.pinv(factors)  # [T, h, w, 16]
    return z.permute(3, 0, 1, 2)[None]


def test_orientation_channels_to_rgb_frames_rows_and_columns():
    """A latent built to show red on the left and blue on the right in frame 0, green on top in frame 1, and
    grey in frame 2 comes out exactly so: channels are rows of the map, and [T, h, w] keep their order."""
    target = np.full((3, 4, 6, 3), -0.6, np.float32)
    target[0, :, :3, 0] = 0.6  # frame 0: red left
    target[0, :, 3:, 2] = 0.6  # frame 0: blue right
    target[1, :2, :, 1] = 0.6  # frame 1: green top rows
    target[2] = 0.0  # frame 2: mid grey
    frames = LatentRGB()(synthetic_latent(target))
    assert frames.shape == (3, 4, 6, 3) and frames.dtype == np.uint8
    expected = np.round((target + 1) * 127.5).astype(int)
    assert np.abs(frames.astype(int) - expected).max() <= 1
    assert tuple(frames[0, 0, 0]) == (204, 51, 51) and tuple(frames[0, 3, 5]) == (51, 51, 204)
    assert tuple(frames[1, 0, 0]) == (51, 204, 51) and tuple(frames[1, 3, 0]) == (51, 51, 51)
    # the published map's orientation is not symmetric: applied transposed-in-channel order it would not fit
    flipped = LatentRGB()(synthetic_latent(target).flip(1))
    assert np.abs(flipped.astype(int) - expected).max() > 60


def test_a_fit_recovers_a_linear_decoder_and_its_frame_alignment():
    """Frames made from latents by a known map (latent frame 0 -> 1 video frame, others -> 4, 8x8 pixels
    each) give that map back, and the map's preview correlates perfectly with them."""
    g = torch.Generator().manual_seed(0)
    true_factors, true_bias = torch.randn(16, 3, generator=g) * 0.1, torch.tensor([0.1, -0.2, 0.05])
    latents = torch.randn(2, 16, 3, 4, 5, generator=g)
    cells = torch.einsum("nctyx,cr->nrtyx", latents, true_factors) + true_bias.view(1, 3, 1, 1, 1)
    video = torch.cat([cells[:, :, :1], cells[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)
    video = video.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
    assert video.shape == (2, 3, 9, 32, 40)
    assert torch.allclose(latent_cell_means(video), cells, atol=1e-6)
    factors, bias = fit_latent_rgb(latents, video)
    assert torch.allclose(factors, true_factors, atol=1e-5) and torch.allclose(bias, true_bias, atol=1e-5)
    assert channel_correlation(latents, video, factors, bias) == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    # shifted by one latent frame the alignment breaks: the cells no longer match the frames they came from
    shifted = torch.cat([video[:, :, :1], video[:, :, 5:], video[:, :, 1:5]], dim=2)
    assert max(channel_correlation(latents, shifted, factors, bias)) < 0.9


def durations(clip: Image.Image) -> list[int]:
    """Each frame's display time in ms (PIL reads a WebP frame's duration when it decodes the frame)."""
    out = []
    for frame in ImageSequence.Iterator(clip):
        frame.load()
        out.append(frame.info["duration"])
    return out


def test_preview_of_the_portrait_encoded_on_the_tiny_preset(tiny_pipe, tmp_path):
    latents = tiny_pipe.encode_video(portrait_clip(9, 64))
    assert latents.shape == (1, 16, 3, 8, 8)
    frames = LatentRGB()(latents)
    assert frames.shape == (3, 8, 8, 3)
    shown = upscale(frames)
    assert shown.shape == (3, 256, 256, 3)
    path = write_clip(shown, tmp_path / "p.webp", fps=23)
    with Image.open(path) as clip:
        assert clip.format == "WEBP" and clip.size == (256, 256) and clip.n_frames == 3 and clip.info["loop"] == 0
        assert durations(clip) == [43, 174, 174] == frame_durations_ms(3, 23)  # 1 video frame, then 4 each
    assert [p.name for p in tmp_path.iterdir()] == ["p.webp"]  # no partial file left


@pytest.mark.slow
def test_preview_of_the_portrait_encoded_by_a_real_shaped_vae(tmp_path):
    """Wan 2.1's VAE at full width (random weights, 127 M parameters): the portrait's encoding previews as one
    frame per latent frame at 1/8 of the sides, and the map check runs on it end to end.

    Random weights have no colour code, so no correlation is asserted here (docs/architecture.md, Live preview: a map fitted
    to this VAE is at noise level); `tools/preview_fit.py` gives the published map's figure on the real VAE.
    """
    from diffusers import AutoencoderKLWan

    from tools.preview_fit import check_map

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKLWan().eval()
    report = check_map(vae, portrait_clip(9, 64))
    latents = report.pop("latents")
    assert latents.shape == (1, 16, 3, 8, 8)
    frames = LatentRGB()(latents)
    assert frames.shape == (3, 8, 8, 3)
    path = write_clip(upscale(frames), tmp_path / "p.gif", fps=25)
    with Image.open(path) as clip:
        assert clip.format == "GIF" and clip.size == (256, 256) and clip.n_frames == 3
        assert durations(clip) == [40, 160, 160]
    assert set(report) == {"published_r", "fitted_r", "fitted_heldout_r", "cells"} and report["cells"] == 192
    assert all(-1.0 <= r <= 1.0 for key in ("published_r", "fitted_r", "fitted_heldout_r") for r in report[key])


# ---- the clean estimate from the pipeline ----------------------------------------------------------------


def run_recording(pipe, args: dict) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    seen: list[tuple[int, int, torch.Tensor]] = []
    latents = pipe(**args, preview_callback=lambda step, steps, x0: seen.append((step, steps, x0.clone())))
    return latents, seen


def test_pipeline_hands_out_the_clean_estimate_and_changes_nothing(tiny_pipe, speech_wav):
    plain = tiny_pipe(**tiny_call_args(tiny_pipe, speech_wav))
    latents, seen = run_recording(tiny_pipe, tiny_call_args(tiny_pipe, speech_wav))
    assert torch.equal(latents, plain)  # the hook reads; the result and the seeded noise are untouched
    assert [(step, steps) for step, steps, _ in seen] == [(1, 2), (2, 2)]
    assert all(x0.dtype == torch.float32 and x0.shape == latents.shape for _, _, x0 in seen)
    # Euler's last step lands on sigma 0: x_t + (0 - sigma) v is exactly the estimate x_t - sigma v
    assert torch.equal(seen[-1][2], latents)
    assert not torch.allclose(seen[0][2], latents, atol=1e-3)  # the first estimate is only an estimate


def test_estimate_in_few_step_mode_and_with_batched_guidance(tiny_pipe, speech_wav, monkeypatch):
    reference, plain_seen = run_recording(tiny_pipe, tiny_call_args(tiny_pipe, speech_wav))
    monkeypatch.setattr(tiny_pipe, "batch_guidance", True)
    batched, batched_seen = run_recording(tiny_pipe, tiny_call_args(tiny_pipe, speech_wav))
    assert torch.allclose(batched, reference, atol=1e-5)
    for (_, _, a), (_, _, b) in zip(plain_seen, batched_seen, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    # the few-step mode's stochastic sampler predicts x0 the same way and re-noises it; its last step is x0
    monkeypatch.setattr(tiny_pipe, "batch_guidance", False)
    monkeypatch.setattr(tiny_pipe, "scheduler", make_scheduler(stochastic=True))
    args = tiny_call_args(tiny_pipe, speech_wav) | {"num_inference_steps": 3, "text_guidance_scale": 1.0,
                                                    "audio_guidance_scale": 1.0}
    latents, seen = run_recording(tiny_pipe, args)
    assert [step for step, _, _ in seen] == [1, 2, 3] and torch.equal(seen[-1][2], latents)


# ---- which steps get a preview ------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def previewed_steps(step_s: float, preview_s: float, steps: int, windows: int = 1,
                    budget: float = 0.02) -> list[tuple[int, int]]:
    """Drive `LivePreview` with a fake clock: each step takes `step_s`, each preview `preview_s`."""
    clock = FakeClock()
    shown: list[tuple[int, int]] = []

    def sink(preview: Preview) -> None:
        clock.now += preview_s
        shown.append((preview.window, preview.step))

    live = LivePreview(sink, throttle=PreviewThrottle(budget, clock=clock))
    x0 = torch.zeros(1, 16, 2, 2, 2)
    for window in range(windows):
        callback = live.for_window(window, windows)
        for step in range(1, steps + 1):
            clock.now += step_s
            callback(step, steps, x0)
    figures = live.figures()
    assert figures["previews"] == len(shown) and figures["steps"] == steps * windows
    assert figures["preview_ms"] == pytest.approx(1000 * preview_s)
    return shown


def test_a_gpu_like_step_gets_a_preview_every_step():
    """15 s steps, 10 ms previews (0.07 %): k = 1."""
    assert previewed_steps(15.0, 0.010, 30) == [(0, s) for s in range(1, 31)]


def test_an_expensive_preview_is_spaced_out_to_the_budget():
    """1 s steps, 1/8 s previews, a 1/32 budget (exact in binary): the first step always, then each preview
    waits until all of them fit in the budget of the denoising time since: k = (1/8) / (1/32 * 1 s) = 4."""
    shown = previewed_steps(1.0, 0.125, 40, budget=1 / 32)
    assert [s for _, s in shown] == [1, 9, 13, 17, 21, 25, 29, 33, 37]
    assert (len(shown) - 1) * 0.125 <= 39 / 32  # all but the first within the budget of steps 2..40


def test_each_window_of_a_long_video_starts_with_a_preview():
    shown = previewed_steps(1.0, 0.125, 12, windows=3, budget=1 / 32)
    assert shown == [(0, 1), (0, 9), (1, 1), (1, 9), (2, 1), (2, 9)]


def test_generate_previews_each_window_of_a_long_video(tiny_pipe, tmp_path, speech_wav):
    from fantasy.generation import Settings, generate
    from fantasy.weights.presets import get_preset

    shown: list[Preview] = []
    live = LivePreview(shown.append, budget=float("inf"))  # every step: this checks the plumbing, not the budget
    result = generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "o.mp4",
                      Settings(steps=2, longest_edge=64, max_frames=9, max_duration=0.5, text_guidance=1.0,
                               audio_guidance=1.0), get_preset("tiny"), preview=live)
    assert result.windows == 2 and result.num_frames == 13  # windows of 9 frames (the second: 5 overlap + 4 new)
    assert [(p.window, p.windows, p.step, p.steps) for p in shown] == [(0, 2, 1, 2), (0, 2, 2, 2), (1, 2, 1, 2),
                                                                        (1, 2, 2, 2)]
    assert [p.frames.shape for p in shown] == [(3, 8, 8, 3)] * 4  # the window's latent frames, 1/8 of the sides
    assert live.figures()["previews"] == 4


def test_the_stream_sends_previews_before_the_video(tiny_pipe, speech_wav, tmp_path):
    from fantasy.app.streaming import ChunkReady, Finished, PreviewReady, stream_generate
    from fantasy.generation import Settings
    from fantasy.weights.presets import get_preset

    events = list(stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "o.mp4",
                                  Settings(steps=3, longest_edge=64), get_preset("tiny"), tmp_path / "chunks",
                                  preview=True))
    kinds = [type(e) for e in events]
    first_chunk = kinds.index(ChunkReady)
    previews = [e.preview for e in events if isinstance(e, PreviewReady)]
    assert previews and previews[0].step == 1 and kinds.index(PreviewReady) < first_chunk
    assert all(i < first_chunk for i, k in enumerate(kinds) if k is PreviewReady)  # all while denoising
    assert previews[0].frames.shape == (13, 8, 8, 3)  # 2 s at 23 fps: 49 frames, 13 latent frames
    assert isinstance(events[-1], Finished)
    quiet = list(stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "q.mp4",
                                 Settings(steps=2, longest_edge=64), get_preset("tiny"), tmp_path / "qchunks"))
    assert not any(isinstance(e, PreviewReady) for e in quiet)  # off unless asked for


def test_the_app_writes_each_preview_under_a_new_name(tmp_path):
    from fantasy.app.studio import Job, preview_caption

    job = Job(image=EXAMPLE_IMAGE, audio=EXAMPLE_IMAGE, checked=type("C", (), {"settings": None})(),
              motion_mode="", folder=tmp_path / "job")
    job.checked.settings = type("S", (), {"fps": 23})()
    first = job.preview_clip(Preview(np.zeros((3, 8, 8, 3), np.uint8), 1, 30))
    ramp = np.repeat(np.array([0, 100, 200], np.uint8), 8 * 8 * 3).reshape(3, 8, 8, 3)  # 3 distinct frames
    second = job.preview_clip(Preview(ramp, 4, 30, window=1, windows=2))
    assert first != second and first.exists() and second.exists()
    with Image.open(second) as clip:
        assert clip.size == (256, 256) and clip.n_frames == 3
    assert preview_caption(Preview(np.zeros((1, 1, 1, 3), np.uint8), 4, 30, 1, 2)) == (
        "Preview while denoising (step 4/30, window 2 of 2): an estimate, blurry at first")


# ---- the CLI ----------------------------------------------------------------------------------------------


def test_cli_keeps_a_preview_file_while_it_runs(tmp_path, capsys):
    from fantasy.cli import main
    from tests.conftest import EXAMPLE_SPEECH

    out, preview = tmp_path / "o.mp4", tmp_path / "forming.webp"
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
                 "--steps", "2", "--size", "64", "--max-duration", "1", "--preview", str(preview)])
    assert code == 0 and out.exists()
    with Image.open(preview) as clip:  # 1 s at 23 fps: 25 frames, 7 latent frames of 8x8, shown at 256x256
        assert clip.format == "WEBP" and clip.size == (256, 256) and clip.n_frames == 7 and clip.info["loop"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forming.webp", "o.mp4"]


@pytest.mark.parametrize("name, message", [
    ("p.mp4", "error: --preview must end in .webp or .gif, got .*p.mp4"),
    ("missing/p.webp", "error: --preview: folder .*missing does not exist"),
])
def test_cli_refuses_a_bad_preview_path_before_loading_models(tmp_path, capsys, monkeypatch, name, message):
    import fantasy.weights.presets
    from fantasy.cli import main
    from tests.conftest import EXAMPLE_SPEECH

    monkeypatch.setattr(fantasy.weights.presets, "load_pipeline", lambda *a, **k: pytest.fail("models were loaded"))
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH),
                 "--out", str(tmp_path / "o.mp4"), "--preview", str(tmp_path / name)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.fullmatch(message, err), err
