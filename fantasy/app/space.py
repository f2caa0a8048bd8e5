"""Hugging Face Spaces support: the ZeroGPU decorator (a no-op anywhere else), its time request and its defaults.

On a ZeroGPU Space (`SPACES_ZERO_GPU=true`), work on the GPU must run inside a function decorated with
`spaces.GPU`, and `spaces` must be imported before anything initialises CUDA: import this module first. Each
call asks for a GPU for a number of seconds: asking for more than the per-call cap is refused ("ZeroGPU illegal
duration"), asking for too little kills the run. So the request is computed from the work (`GpuTimeModel`:
windows x steps x passes x seconds per pass, plus a fixed overhead), the page's defaults on ZeroGPU are sized to
fit the cap (`zero_gpu_defaults`), and a request that cannot fit is refused when it joins, saying what to change
(`check_fits`).

The model's constants are named below. They are assumptions until a GPU run measures them: `python3
tools/gpu_check.py --out OUT` writes `OUT/gpu_check.json`; copied to `fantasy/app/gpu_timings.json` (or named by
`FANTASY_GPU_TIMINGS`) it replaces them (`GpuTimeModel.load`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from fantasy.errors import InvalidSetting

F = TypeVar("F", bound=Callable[..., Any])


def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space (the same switch the `spaces` package reads)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in {"1", "t", "true"}


def on_spaces() -> bool:
    """True on any Hugging Face Space (Spaces set SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


_spaces: Any = None
if on_zero_gpu():
    import spaces as _spaces  # noqa: F401  (before torch touches CUDA; required by ZeroGPU)


def gpu(duration: int | Callable[..., float]) -> Callable[[F], F]:
    """`spaces.GPU(duration=...)` on ZeroGPU; elsewhere returns the function unchanged.

    `duration` may be a callable taking the decorated function's arguments (ZeroGPU's dynamic duration).
    """
    if _spaces is None:
        return lambda fn: fn
    return _spaces.GPU(duration=duration)


# ---- the GPU-time model -------------------------------------------------------------------------------------

# One transformer pass at the reference size (512x512, 81 frames = 21 latent frames) on a ZeroGPU slice. Assumed:
# the release reports 15.5 s per 3-pass step on an A100 (5.2 s a pass); a ZeroGPU slice is taken to be no faster.
SECONDS_PER_PASS_REF = 5.5
REF_TOKENS = 21 * (512 // 16) * (512 // 16)  # latent frames x latent patches at the reference size
OVERHEAD_S = 60.0  # assumed: encoders, VAE decode, video writing, moving weights in
MEASURED_FIXED_S = 20.0  # with measured encoder/VAE times: what they leave out (weights moving in, writing)
MAX_GPU_SECONDS = 1800  # never ask for more than this anywhere (a dedicated GPU has no cap; a bound all the same)
# The longest call this app asks ZeroGPU for. ZeroGPU's per-call cap is not documented ("a few minutes"; its
# staff gave 5 min), and spaces 0.51.3 multiplies a request by 1.5 on the half RTX Pro 6000 slice: 200 x 1.5 = 300.
ZERO_GPU_CAP_S = 200
TIMINGS_FILE = "gpu_timings.json"  # in this package: a copy of tools/gpu_check.py's gpu_check.json


@dataclass(frozen=True)
class GpuTimeModel:
    """Seconds of GPU one generation needs: `overhead_s` + steps x passes x `seconds_per_pass` per window, each
    window's pass scaled by its tokens (latent frames x latent patches) over `reference_tokens`."""

    seconds_per_pass: float = SECONDS_PER_PASS_REF
    reference_tokens: int = REF_TOKENS
    overhead_s: float = OVERHEAD_S
    source: str = "assumed (no GPU measurement yet)"

    def seconds(self, num_frames: int, steps: int, passes: int = 3, longest_edge: int = 512,
                window_frames: int = 81) -> int:
        """Rounded up and capped at `MAX_GPU_SECONDS`. Long videos run consecutive windows of `window_frames`
        (see `fantasy.long_video`); a square frame of `longest_edge` is the upper bound of a frame's patches."""
        from fantasy.long_video import plan_windows

        latent_frames = sum((w.length - 1) // 4 + 1 for w in plan_windows(num_frames, window_frames))
        tokens = latent_frames * (longest_edge // 16) ** 2
        seconds = self.overhead_s + steps * passes * self.seconds_per_pass * tokens / self.reference_tokens
        return int(min(MAX_GPU_SECONDS, math.ceil(seconds)))

    @classmethod
    def from_gpu_check(cls, report: dict, dit: str = "q8_0") -> GpuTimeModel:
        """The measured model: `pass_s` of the DiT mode `dit` (else the fastest measured) at the report's token
        count, and the measured encoders and VAE (the plain switch row's pieces) + `MEASURED_FIXED_S`."""
        rows = [r for r in report.get("dit_modes", []) if r.get("pass_s")]
        if not rows or report.get("tiny"):
            raise ValueError("the GPU check holds no full-size DiT timing")
        row = next((r for r in rows if r.get("mode") == dit), min(rows, key=lambda r: r["pass_s"]))
        pieces = next((s.get("pieces") for s in report.get("switches", []) if s.get("pieces")), None) or []
        timed = [p["seconds"] for p in pieces if p.get("seconds")]
        overhead = MEASURED_FIXED_S + sum(timed) if timed else OVERHEAD_S
        device = report.get("environment", {}).get("device", "a GPU")
        return cls(float(row["pass_s"]), int(report["tokens"]), overhead,
                   f"measured on {device} ({row['mode']} DiT)")

    @classmethod
    def load(cls, dit: str = "q8_0", path: str | Path | None = None) -> GpuTimeModel:
        """The measured model when a GPU check's report is there (`path`, $FANTASY_GPU_TIMINGS or
        `TIMINGS_FILE`), else the assumed constants."""
        path = Path(path or os.environ.get("FANTASY_GPU_TIMINGS") or str(resources.files(__package__) / TIMINGS_FILE))
        if not path.is_file():
            return cls()
        try:
            return cls.from_gpu_check(json.loads(path.read_text()), dit)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise InvalidSetting(f"cannot use the GPU timings in '{path.name}': {exc}") from None


def zero_gpu_cap() -> int:
    """`ZERO_GPU_CAP_S`, or `FANTASY_ZERO_GPU_CAP_S` when the Space sets it (a whole number of seconds)."""
    value = os.environ.get("FANTASY_ZERO_GPU_CAP_S", "").strip()
    if not value:
        return ZERO_GPU_CAP_S
    if not value.isdigit() or int(value) < 30:
        raise InvalidSetting(f"FANTASY_ZERO_GPU_CAP_S={value}: give the per-call cap in whole seconds (at least 30)")
    return int(value)


def estimate_gpu_seconds(num_frames: int, steps: int, passes: int = 3, longest_edge: int = 512,
                         window_frames: int = 81, model: GpuTimeModel | None = None) -> int:
    """`GpuTimeModel.seconds` of `model` (default: the assumed constants)."""
    return (model or GpuTimeModel()).seconds(num_frames, steps, passes, longest_edge, window_frames)


def job_passes(settings) -> int:
    from fantasy.model.sampling import passes_needed

    return len(passes_needed(settings.text_guidance, settings.audio_guidance))


def job_gpu_seconds(job, model: GpuTimeModel | None = None) -> int:
    """The request for a checked job (`fantasy.app.studio.Job`, its settings resolved)."""
    s = job.settings
    return estimate_gpu_seconds(job.checked.num_frames, s.steps, job_passes(s), s.longest_edge, s.max_frames, model)


# ---- ZeroGPU: defaults that fit, and refusals that say what to change ---------------------------------------


@dataclass(frozen=True)
class PageDefaults:
    """The page's starting values (and what the GPU request for them comes to)."""

    steps: int
    text_guidance: float
    audio_guidance: float
    max_duration_s: float
    gpu_seconds: int | None = None  # on ZeroGPU: what the defaults ask for


def longest_duration(frames: int, fps: int = 23, step: float = 0.1) -> float:
    """The longest maximum duration, in `step`s, whose video has at most `frames` frames (the release's rule
    `int(fps*d // 4)*4 + 5`): 81 frames at 23 fps is 3.4 s (3.5 s would make 85, a second window)."""
    from fantasy.media.audio import frame_count

    duration = math.floor(frames / fps / step) * step
    while duration > step and frame_count(duration, fps, 4 * 10**9 + 1) > frames:
        duration -= step
    return round(duration, 6)


def one_clip_seconds(fps: int = 23, frames: int = 81) -> float:
    """The longest speech one window animates (81 frames at 23 fps: 3.4 s)."""
    return longest_duration(frames, fps)


def zero_gpu_defaults(base: PageDefaults, longest_edge: int, model: GpuTimeModel, cap: int,
                      fps: int = 23, window_frames: int = 81) -> PageDefaults:
    """`base` cut to fit one ZeroGPU call: one clip, and the most steps (at most `base.steps`) that fit `cap`.
    In the few-step mode (guidance 1, one pass) the base steps fit as they are."""
    seconds = one_clip_seconds(fps, window_frames)
    frames = window_frames
    passes = 1 if base.text_guidance == 1.0 and base.audio_guidance == 1.0 else (2 if base.text_guidance == 1.0 else 3)
    steps = base.steps
    while steps > 1 and model.seconds(frames, steps, passes, longest_edge, window_frames) > cap:
        steps -= 1
    return replace(base, steps=steps, max_duration_s=min(base.max_duration_s, seconds),
                   gpu_seconds=model.seconds(frames, steps, passes, longest_edge, window_frames))


def check_fits(job, model: GpuTimeModel, cap: int) -> int:
    """The job's GPU request, or `InvalidSetting` naming what to change when it exceeds `cap` (ZeroGPU's per-call
    cap): the longest duration, the most steps, or the largest size that would fit, each alone."""
    from fantasy.media.audio import frame_count

    s = job.settings
    passes = job_passes(s)
    need = model.seconds(job.checked.num_frames, s.steps, passes, s.longest_edge, s.max_frames)
    if need <= cap:
        return need
    options, concerns = [], None
    one_second = frame_count(1.0, s.fps, 4 * 10**9 + 1)  # the shortest video worth suggesting (the duration slider's bottom)
    frames = _longest_fitting(lambda f: model.seconds(f, s.steps, passes, s.longest_edge, s.max_frames) <= cap,
                              one_second, job.checked.num_frames, step=4)
    if frames is not None:
        options.append(f"shorten the maximum duration to {longest_duration(frames, s.fps):g} s")
        concerns = "max_duration"
    steps = _longest_fitting(lambda n: model.seconds(job.checked.num_frames, n, passes, s.longest_edge,
                                                     s.max_frames) <= cap, 1, s.steps)
    if steps is not None:
        options.append(f"use {steps} step{'s' * (steps != 1)} or fewer")
        concerns = concerns or "steps"
    edge = _longest_fitting(lambda e: model.seconds(job.checked.num_frames, s.steps, passes, e, s.max_frames) <= cap,
                            64, s.longest_edge, step=16)
    if edge is not None:
        options.append(f"lower the resolution to {edge} px")
        concerns = concerns or "resolution"
    what = ", or ".join(options) if options else "shorten the duration, use fewer steps and a lower resolution together"
    error = InvalidSetting(f"This video needs about {need} s of GPU time; a ZeroGPU call may take at most {cap} s. "
                           f"To fit, {what}.")
    error.concerns = concerns or "max_duration"
    raise error


def _longest_fitting(fits: Callable[[int], bool], low: int, high: int, step: int = 1) -> int | None:
    """The largest value in low, low+step, ... < high for which `fits` holds (fits is monotone), or None."""
    best = None
    value = low
    while value < high:
        if not fits(value):
            break
        best = value
        value += step
    return best
