"""The release's sampler and guidance, expressed with diffusers' scheduler.

Flow matching, Euler, shift 5: sigmas from `linspace(1, 0, steps+1)[:-1]`, shifted to
`5s / (1 + 4s)`, timesteps `1000 * sigma`, final sigma 0 (reference §3.4). diffusers'
`FlowMatchEulerDiscreteScheduler(shift=5)` fed those sigmas gives exactly that schedule, bit for bit,
when the sigmas are the release's own fp32 values (`torch.linspace` in fp32): the scheduler shifts
them in fp32 with the same operations in the same order. numpy's float64 `linspace` rounded to
fp32 differs in the last bit for some of them (6 of 30 sigmas, 5 of 30 timesteps at 30 steps).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

SHIFT = 5.0
DEFAULT_STEPS = 30


def make_scheduler(shift: float = SHIFT, stochastic: bool = False) -> FlowMatchEulerDiscreteScheduler:
    """The release's Euler sampler; `stochastic`: the step-distilled models' sampler on the same timesteps.

    Stochastic sampling predicts the clean latent `x0 = x - sigma * v` and re-noises it to the next
    sigma with fresh noise, which is how lightx2v's step-distill scheduler samples its 4-step models.
    """
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, stochastic_sampling=stochastic)


def set_official_timesteps(scheduler: FlowMatchEulerDiscreteScheduler, steps: int, device=None) -> torch.Tensor:
    """Give the scheduler the release's unshifted sigmas (it applies the shift); return the timesteps."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)[:-1]  # the release's fp32 linspace
    scheduler.set_timesteps(sigmas=sigmas.numpy(), device=device)
    return scheduler.timesteps


def passes_needed(text_scale: float, audio_scale_cfg: float) -> tuple[str, ...]:
    """Transformer passes per step: full (text+audio), text (audio off), uncond (negative text, audio off).

    Text guidance 1 drops the uncond pass; with both scales at 1 the formula reduces to the full pass.
    """
    if text_scale != 1.0:
        return ("full", "text", "uncond")
    if audio_scale_cfg != 1.0:
        return ("full", "text")
    return ("full",)


def combine_guidance(
    preds: dict[str, torch.Tensor], text_scale: float, audio_cfg_scale: float
) -> torch.Tensor:
    """`v = u + cfg_text*(t - u) + cfg_audio*(f - t)`, with the 2- and 1-pass reductions."""
    full = preds["full"]
    if "text" not in preds:
        return full
    text = preds["text"]
    if "uncond" not in preds:
        return text + audio_cfg_scale * (full - text)
    uncond = preds["uncond"]
    return uncond + text_scale * (text - uncond) + audio_cfg_scale * (full - text)
