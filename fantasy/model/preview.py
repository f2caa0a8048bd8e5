"""Live preview while denoising: the clean-video estimate as a small RGB clip, without the VAE.

At a denoising step with latents `x_t`, noise level `sigma_t` and velocity `v`, flow matching's estimate of
the finished latents is `x0 = x_t - sigma_t * v` (the Euler sampler and the few-step mode's stochastic
sampler both compute exactly this). A fixed linear map from Wan 2.1's 16 latent channels to RGB plus a bias
turns it into colours at latent resolution (1/8 of the sides, one frame per latent frame) with a few
elementwise kernels and one small matmul. Early steps give a blurry, washed-out guess; it sharpens as the steps run.

The map's numbers are data: ComfyUI's preview map for the Wan 2.1 VAE (see `LATENT_RGB_SOURCE`).
ComfyUI samples in the normalised latent space (`Wan21.process_in`: `(z - latents_mean) / latents_std`, the
same mean/std as diffusers' `AutoencoderKLWan` config) and its `Latent2RGBPreviewer` applies the factors to
that sampler output directly, giving RGB in [-1, 1]. Our pipeline's latents are in that same normalised
space (`FantasyTalkingPipeline.encode_video`), so the factors apply to them as they are.

Which steps get a preview is measured, not fixed: `PreviewThrottle` keeps the previews' own time under a
budget (2 %) of the denoising time so far, which sets k (a preview every k-th step) from the measured step
and preview costs on whatever machine runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.media.output import temp_path

# Comfy-Org/ComfyUI (formerly comfyanonymous/ComfyUI), comfy/latent_formats.py, class Wan21,
# `latent_rgb_factors` (16 rows: latent channels; 3 columns: R, G, B) and `latent_rgb_factors_bias`,
# at commit 9a9a69fd745de98e89b0f1a629cd3bc43d513a42. Applied to normalised latents; output in [-1, 1].
LATENT_RGB_SOURCE = ("Comfy-Org/ComfyUI comfy/latent_formats.py, class Wan21 (latent_rgb_factors, "
                     "latent_rgb_factors_bias), commit 9a9a69fd745de98e89b0f1a629cd3bc43d513a42")
WAN21_LATENT_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_LATENT_RGB_BIAS = (-0.1835, -0.0868, -0.3360)

BUDGET = 0.02  # previews may take this fraction of the denoising time
DISPLAY_EDGE = 256  # longest side of the clip shown or written (latent resolution is upscaled to this)
PREVIEW_SUFFIXES = (".webp", ".gif")


def clean_estimate(latents: torch.Tensor, velocity: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Flow matching's clean-latent estimate `x0 = x_t - sigma_t * v`, in fp32."""
    return latents.float() - float(sigma) * velocity.float()


class LatentRGB:
    """A fixed linear map from normalised latents [1, C, T, h, w] to uint8 RGB frames [T, h, w, 3]."""

    def __init__(self, factors=WAN21_LATENT_RGB_FACTORS, bias=WAN21_LATENT_RGB_BIAS):
        self.factors = torch.as_tensor(factors, dtype=torch.float32)  # [C, 3]
        self.bias = torch.as_tensor(bias, dtype=torch.float32)  # [3]
        if self.factors.ndim != 2 or self.factors.shape[1] != 3 or self.bias.shape != (3,):
            raise ValueError(f"expected factors [C, 3] and bias [3], got {tuple(self.factors.shape)} and "
                             f"{tuple(self.bias.shape)}")

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        if latents.ndim != 5 or latents.shape[0] != 1 or latents.shape[1] != self.factors.shape[0]:
            raise ValueError(f"expected latents [1, {self.factors.shape[0]}, T, h, w], got {tuple(latents.shape)}")
        factors = self.factors.to(latents.device)
        bias = self.bias.to(latents.device)
        rgb = torch.einsum("cthw,cr->thwr", latents[0].float(), factors) + bias  # [-1, 1]
        frames = ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return frames.cpu().numpy()  # the only transfer: T*h*w*3 bytes (21*64*64*3 = 258 KB at 512x512x81)


def upscale(frames: np.ndarray, longest_edge: int = DISPLAY_EDGE) -> np.ndarray:
    """[T, h, w, 3] uint8 -> bilinear upscale so the longest side is about `longest_edge` (never smaller)."""
    height, width = frames.shape[1:3]
    scale = max(1, round(longest_edge / max(height, width)))
    if scale == 1:
        return frames
    size = (width * scale, height * scale)
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])


def frame_durations_ms(count: int, fps: float) -> list[int]:
    """Display time of each latent frame: Wan's causal VAE makes 1 video frame of the first, 4 of each other."""
    return [round(1000 / fps)] + [round(4000 / fps)] * (count - 1)


def write_clip(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """A looping animated WebP (or GIF, by the suffix) of the frames, written under a temporary name and renamed
    into place, so a reader (the browser, an image viewer) never sees half a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PREVIEW_SUFFIXES:
        raise ValueError(f"a preview is a .webp or .gif file, got {path.name}")
    images = [Image.fromarray(f) for f in frames]
    partial = temp_path(path, "preview")  # names its owner: a killed run's is removed by the next
    options = {"lossless": False, "quality": 80, "method": 0} if suffix == ".webp" else {"optimize": False}
    try:
        images[0].save(partial, save_all=True, append_images=images[1:], loop=0,
                       duration=frame_durations_ms(len(images), fps), **options)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class Preview:
    """One preview: the current window's estimated clip at latent resolution (one frame per latent frame)."""

    frames: np.ndarray  # [T, h, w, 3] uint8
    step: int  # denoising steps done in this window (1-based)
    steps: int
    window: int = 0  # long videos: which window (0-based) is denoising
    windows: int = 1


@dataclass
class PreviewThrottle:
    """Which steps get a preview: a window's first step always; later ones while that window's previews,
    plus one more at the last measured cost, stay within `budget` of its denoising time since that first step.

    The result is a preview every k-th step with k ~ cost / (budget * step time), from measurements on the
    running machine: a GPU step takes seconds and a preview milliseconds, so k = 1; the tiny CPU model's
    step is not much slower than a preview, so k grows. `clock` is injectable for tests.
    """

    budget: float = BUDGET
    clock: Callable[[], float] = time.perf_counter
    started: float | None = None  # when this window's first step finished
    spent: float = 0.0  # seconds of previews in this window
    last_cost: float = 0.0
    shown: int = 0  # previews in this window
    total_steps: int = 0  # all windows, for the figures
    total_shown: int = 0
    total_spent: float = 0.0

    def start(self) -> None:
        """A window's denoising begins: its first finished step gets a preview."""
        self.started, self.spent, self.shown = None, 0.0, 0

    def due(self) -> bool:
        """Called once per finished step: should this step get a preview?"""
        self.total_steps += 1
        if self.started is None:
            self.started = self.clock()
            return True
        denoising = self.clock() - self.started - self.spent
        return self.spent + self.last_cost <= self.budget * denoising

    def record(self, seconds: float) -> None:
        self.spent += seconds
        self.total_spent += seconds
        self.last_cost = seconds
        self.shown += 1
        self.total_shown += 1

    def figures(self) -> dict:
        """Previews and steps seen, the measured k (steps per preview) and the mean preview cost."""
        shown = self.total_shown
        return {"previews": shown, "steps": self.total_steps,
                "every_k_steps": self.total_steps / shown if shown else None,
                "preview_ms": 1000 * self.total_spent / shown if shown else None}


@dataclass
class LivePreview:
    """The pipeline's `preview_callback` for one generation: throttle, map x0 to RGB, hand a `Preview` to `sink`.

    Make one per generation and pass `for_window(i, n)` to each window's pipeline call. The sink runs on the
    denoising thread and its time counts against the budget: hand heavy work (encoding a file) to another
    thread where there is one (the app does), or let the throttle space it out (the CLI does).
    With several processes denoising one video (context parallelism) only rank 0 needs a callback: the
    others pass none and pay nothing.
    """

    sink: Callable[[Preview], None]
    budget: float = BUDGET
    rgb: LatentRGB = field(default_factory=LatentRGB)
    throttle: PreviewThrottle | None = None

    def __post_init__(self) -> None:
        self.throttle = self.throttle or PreviewThrottle(self.budget)

    def for_window(self, window: int = 0, windows: int = 1) -> Callable[[int, int, torch.Tensor], None]:
        """The callback for one window's pipeline call; its denoising clock starts now."""
        self.throttle.start()

        def callback(step: int, steps: int, x0: torch.Tensor) -> None:
            if not self.throttle.due():
                return
            if x0.device.type == "cuda":  # the step's queued kernels are the step's time, not the preview's
                torch.cuda.synchronize(x0.device)
            started = self.throttle.clock()
            self.sink(Preview(self.rgb(x0), step, steps, window, windows))
            self.throttle.record(self.throttle.clock() - started)

        return callback

    def figures(self) -> dict:
        return self.throttle.figures()


@dataclass
class PreviewFile:
    """A sink that keeps `path` holding the latest preview as a looping clip (the CLI's `--preview`)."""

    path: Path
    fps: float
    longest_edge: int = DISPLAY_EDGE

    def __call__(self, preview: Preview) -> None:
        write_clip(upscale(preview.frames, self.longest_edge), self.path, self.fps)


# ---- checking or fitting a latent -> RGB map against a VAE's decoded frames --------------------------------


def latent_cell_means(video: torch.Tensor, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """Decoded video [1, 3, F, H, W] -> its mean colour over each latent cell [1, 3, T, H/8, W/8].

    Wan's causal VAE decodes latent frame 0 into video frame 0 and latent frame t >= 1 into frames 4t-3 .. 4t,
    so those are the frames a preview frame stands for.
    """
    first = torch.nn.functional.avg_pool3d(video[:, :, :1].float(), (1, spatial, spatial))
    rest = torch.nn.functional.avg_pool3d(video[:, :, 1:].float(), (temporal, spatial, spatial))
    return torch.cat([first, rest], dim=2)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """[N, C, T, h, w] -> [N*T*h*w, C]."""
    return x.permute(0, 2, 3, 4, 1).reshape(-1, x.shape[1]).float()


def fit_latent_rgb(latents: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares factors [C, 3] and bias [3] taking normalised latents [N, C, T, h, w] to the cell means of
    their decoded videos [N, 3, F, H, W] in [-1, 1]: a way to make such a map for a VAE, and to check or refit
    ours for another one (`tools/preview_fit.py`)."""
    x = _pixels(latents)
    y = _pixels(latent_cell_means(video))
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(len(x), 1)], dim=1), y).solution
    return solution[:-1], solution[-1]


def channel_correlation(latents: torch.Tensor, video: torch.Tensor, factors, bias) -> list[float]:
    """Pearson r per colour channel between the map's preview of `latents` and the decoded video's cell means."""
    mapped = _pixels(latents) @ torch.as_tensor(factors).float() + torch.as_tensor(bias).float()
    target = _pixels(latent_cell_means(video))
    return [float(torch.corrcoef(torch.stack([mapped[:, c], target[:, c]]))[0, 1]) for c in range(3)]
