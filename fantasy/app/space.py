"""Hugging Face Spaces support: the ZeroGPU decorator (a no-op anywhere else) and its time request.

On a ZeroGPU Space (`SPACES_ZERO_GPU=true`), work on the GPU must run inside a function decorated with
`spaces.GPU`, and `spaces` must be imported before anything initialises CUDA: import this module
first. Each call asks for a GPU for a number of seconds; asking too much is refused against the user's
quota, too little kills the run, so the request is computed from the work: frames x steps x passes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

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


# Reference cost of one transformer pass at 512x512 and 81 frames (21 latent frames) on a ZeroGPU
# "large" slice (half an RTX Pro 6000 / H200 MIG): the official release reports 15.5 s per 3-pass step
# on an A100, we assume the slice is no faster and keep that as the reference.
SECONDS_PER_PASS_REF = 5.5
REF_TOKENS = 21 * (512 // 16) * (512 // 16)  # latent frames x latent patches at the reference size
OVERHEAD_S = 60.0  # encoders, VAE decode, video writing, moving weights in
MAX_GPU_SECONDS = 1800  # never ask for more than this: ZeroGPU refuses requests over the quota anyway


def estimate_gpu_seconds(
    num_frames: int, steps: int, passes: int = 3, longest_edge: int = 512, window_frames: int = 81,
) -> int:
    """Seconds of GPU to request for one generation: overhead + steps x passes x time per pass, per window.

    Long videos run consecutive windows of `window_frames` (see `fantasy.long_video`); each window's time
    per pass scales with its token count (latent frames x latent patches, a square frame of `longest_edge`
    as the upper bound). Rounded up and capped at `MAX_GPU_SECONDS`.
    """
    from fantasy.long_video import plan_windows

    latent_frames = sum((w.length - 1) // 4 + 1 for w in plan_windows(num_frames, window_frames))
    tokens = latent_frames * (longest_edge // 16) ** 2
    seconds = OVERHEAD_S + steps * passes * SECONDS_PER_PASS_REF * tokens / REF_TOKENS
    return int(min(MAX_GPU_SECONDS, -(-seconds // 1)))


def job_gpu_seconds(job) -> int:
    """`estimate_gpu_seconds` for a checked job (`fantasy.app.studio.Job`, its settings resolved)."""
    from fantasy.model.sampling import passes_needed

    s = job.settings
    passes = len(passes_needed(s.text_guidance, s.audio_guidance))
    return estimate_gpu_seconds(job.checked.num_frames, s.steps, passes, s.longest_edge, window_frames=s.max_frames)
