"""What the live preview costs: at the real clip size, and within a run (`bench --cpu` and `bench --gpu`).

Two parts, timed separately because they run on different threads in the app:
- on the denoising thread (`fantasy.model.preview.LivePreview`): the clean estimate `x_t - sigma*v`, the 16->3 map at
  latent resolution and the copy of uint8 frames to the host. This is what slows the steps down, and what
  the 2 % budget is measured against.
- the clip file: upscaling to 256 px and encoding the looping WebP. The app does it on the thread that feeds
  the page (not the denoising one); the CLI's `--preview` does it on the denoising thread, so its throttle
  spaces the previews further apart.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from fantasy.bench.models import sync
from fantasy.model.preview import LatentRGB, Preview, clean_estimate, upscale, write_clip

REAL_LATENT = (1, 16, 21, 64, 64)  # 512x512, 81 frames
FPS = 23


def _mean_seconds(fn, device: torch.device, repeat: int) -> float:
    fn()  # warm-up (first-call allocations, kernel selection)
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeat


def time_preview(device: torch.device, shape: tuple[int, ...] = REAL_LATENT, repeat: int = 5) -> dict:
    """Milliseconds for one preview of a latent of `shape` (default: a 512x512x81 clip) on `device`."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(shape, generator=gen).to(device)
    velocity = torch.randn(shape, generator=gen).to(device)
    rgb = LatentRGB()
    frames = rgb(clean_estimate(latents, velocity, 0.5))
    on_thread = _mean_seconds(lambda: rgb(clean_estimate(latents, velocity, 0.5)), device, repeat)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "preview.webp"
        encode = _mean_seconds(lambda: write_clip(upscale(frames), path, FPS), torch.device("cpu"), repeat)
        size = path.stat().st_size
    return {"latent": "x".join(map(str, shape)), "frames": frames.shape[0], "map_ms": 1000 * on_thread,
            "encode_ms": 1000 * encode, "file_kb": size / 1024}


class LastPreview:
    """A sink that only keeps the latest preview: what the app's queue hand-off costs, near nothing."""

    def __init__(self) -> None:
        self.last: Preview | None = None

    def __call__(self, preview: Preview) -> None:
        self.last = preview


def run_figures(figures: dict, s_per_step: float | None, last: Preview | None, repeat: int = 3) -> dict:
    """A run's preview figures (`LivePreview.figures()`) with: one preview's cost over one step's
    (`cost_vs_step`), what all previews added to the denoising time (`overhead`), and the clip file's cost."""
    out = dict(figures)
    ms, shown, steps = figures.get("preview_ms"), figures.get("previews"), figures.get("steps")
    known = ms is not None and bool(s_per_step) and bool(steps)
    out["cost_vs_step"] = ms / 1000 / s_per_step if known else None
    out["overhead"] = shown * ms / 1000 / (steps * s_per_step) if known else None
    out["encode_ms"] = None
    if last is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "preview.webp"
            out["encode_ms"] = 1000 * _mean_seconds(lambda: write_clip(upscale(last.frames), path, FPS),
                                                    torch.device("cpu"), repeat)
    return out
