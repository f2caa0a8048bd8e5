"""Presets: which models a generation runs on, and the defaults that go with them.

`tiny` builds everything from config (no download, CPU, output is noise); `real` loads
Wan2.1-I2V-14B + wav2vec2 + the FantasyTalking adapter from local weights (see `fantasy.weights.real`).
Both end in the same `FantasyTalkingPipeline` with the audio adapter installed (`fantasy.model.assemble`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fantasy.model.assemble import assemble
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.weights.trained_modules import load_modules


@dataclass(frozen=True)
class Preset:
    name: str
    longest_edge: int  # default output size (longest side, px)
    steps: int
    demo: bool  # True: random weights, the video is noise
    summary: str
    # Upper bounds every entry point enforces (`fantasy.settings.Settings.resolved`), before reading any input:
    max_longest_edge: int  # px: more than the model was trained for only costs memory and time
    max_video_pixels: int  # width x height x frames of the largest video the settings may ask for


TEN_MINUTES_FRAMES = 13_805  # 600 s (the longest maximum duration) at the release's 23 fps: int(23 * 600 // 4) * 4 + 5

PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 128, 30, True,
                   "tiny random models built from config: runs anywhere in seconds, output is noise",
                   max_longest_edge=256, max_video_pixels=256 * 256 * TEN_MINUTES_FRAMES),
    # Wan2.1-I2V-14B-720P is trained at 1280x720: 1280 px is its largest useful edge, ten minutes of 720p its video.
    "real": Preset("real", 512, 30, False,
                   "Wan2.1-I2V-14B-720P + wav2vec2-base-960h + FantasyTalking adapter (CUDA GPU)",
                   max_longest_edge=1280, max_video_pixels=1280 * 720 * TEN_MINUTES_FRAMES),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}") from None


def load_pipeline(
    preset: str, device: str | None = None, adapter: str | Path | None = None, **real_options
) -> FantasyTalkingPipeline:
    """Ready-to-run pipeline for a preset. `adapter`: an adapter or training checkpoint instead of the default
    (a training checkpoint also installs the motion / identity modules it holds, `fantasy.weights.trained_modules`).
    `dtype` (tiny: fp32 unless given; real: bf16) is the DiT's and umT5's compute dtype."""
    get_preset(preset)
    if preset == "tiny":
        from fantasy.weights.tiny import random_adapter_weights, tiny_components

        pipe = assemble(tiny_components(dtype=real_options.pop("dtype", torch.float32)), device or "cpu")
        if adapter is None:
            random_adapter_weights(pipe)
        else:
            load_modules(pipe, adapter)
        return pipe
    from fantasy.weights.real import load_real_pipeline

    return load_real_pipeline(device=device, adapter=adapter, **real_options)
