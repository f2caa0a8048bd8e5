"""`--release`: exactly the clip the official `infer.py` computes, for A/B comparisons with the release.

What the release does (fantasy-talking@8c2d0c9, `infer.py` and its DiffSynth), and what this mode runs:

- one clip of `min(int(fps*duration // 4)*4 + 5, max_frames)` frames (81 at most): speech past the
  clip's `num_frames/fps` seconds is not animated (no long-video windows);
- that clip's own wav2vec2 features (`[0, int(num_frames/fps*16000))` samples), windowed at
  `L / num_frames` tokens per frame;
- its prompt "A woman is talking." unless one is given, its fixed negative prompt, 30 steps, seed
  1111, guidance 5 / 5, audio weight 1 (the last three can be set, as in `infer.py`);
- the bf16 DiT in the release's mixed precision (`fantasy.model.precision`), the schedule's fp32 values,
  fp32 latents and guidance;
- its decode: spatial tiles of 30x52 latents at a stride of 15x26 blended with linear ramps, then
  uint8 by truncation (`fantasy.model.decode.decode_release_tiles`).

What still differs, and why, is listed in docs/numerics.md. The checks here refuse anything
that would make the result something other than the release's (a quantized DiT, the step cache,
the few-step LoRA, trained motion/identity modules, other steps or negative prompt), with a message
naming the option, before any model work.
"""

from __future__ import annotations

import torch

from fantasy.errors import InvalidSetting
from fantasy.media.audio import frame_count
from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT, RELEASE_PROMPT  # noqa: F401 (re-exported)

RELEASE_STEPS = 30  # hard-coded in infer.py (the app's steps slider is ignored there too)
RELEASE_DIT = "bf16"  # ModelManager(torch_dtype=torch.bfloat16)


def release_frame_count(duration_s: float, fps: float, max_frames: int) -> tuple[int, bool]:
    """(frames of the one clip, whether the speech runs past it): the release's rule, capped at `max_frames`."""
    return frame_count(duration_s, fps, max_frames), int(fps * duration_s // 4) * 4 + 5 > max_frames


def release_setting_problems(steps: int, negative_prompt: str, motion) -> list[str]:
    """Settings a release run cannot take (empty when fine)."""
    problems = []
    if steps != RELEASE_STEPS:
        problems.append(f"--release runs the release's {RELEASE_STEPS} steps, got {steps}")
    if negative_prompt != DEFAULT_NEGATIVE_PROMPT:
        problems.append("--release uses the release's negative prompt; drop --negative-prompt")
    if motion is not None:
        problems.append("--release runs the released adapter only: no motion coefficients")
    return problems


def check_release_pipeline(pipe, demo: bool) -> None:
    """Raise `InvalidSetting` unless `pipe` computes what the release computes (see the module docstring)."""
    from fantasy.model.precision import compute_dtype_of, precision_of
    from fantasy.weights.quantize import is_quantized_weight

    transformer = pipe.transformer
    if precision_of(transformer) != "mixed":
        raise InvalidSetting("--release computes the DiT in the release's mixed precision; drop --precision stock")
    if getattr(pipe, "few_step_mode", False):
        raise InvalidSetting("--release runs the release's 30-step sampler; drop --fast")
    if getattr(transformer, "is_cache_enabled", False):
        raise InvalidSetting("--release computes every block at every step; drop --step-cache")
    if pipe.motion_context is not None or pipe.identity_context is not None:
        raise InvalidSetting("--release runs the released adapter only; this one has trained motion/identity "
                             "modules (use the released fantasytalking_model.ckpt)")
    if any(is_quantized_weight(p) for p in transformer.blocks.parameters()):
        raise InvalidSetting("--release runs the bf16 DiT (--dit bf16, no --fp8-linears); this DiT's weights are "
                             "quantized")
    if not demo and compute_dtype_of(transformer) != torch.bfloat16:
        raise InvalidSetting(f"--release runs the DiT in bf16; this one computes in {compute_dtype_of(transformer)}")
