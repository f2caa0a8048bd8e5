"""Is this pipeline the release's computation? The check behind `release=True` (`--release`, `fantasy.release`).

Refused, with a message naming the option that changed it: a quantized DiT, the step cache, the few-step
sampler, trained motion/identity modules, diffusers' stock precision, and (`demo` False) a DiT that does not
compute in bf16 as the release's does.
"""

from __future__ import annotations

import torch

from fantasy.errors import InvalidSetting
from fantasy.model.precision import compute_dtype_of, is_quantized_weight, precision_of


def check_release_pipeline(pipe, demo: bool) -> None:
    """Raise `InvalidSetting` unless `pipe` computes what the release computes (see the module docstring)."""
    transformer = pipe.transformer
    if precision_of(transformer) != "mixed":
        raise InvalidSetting("--release computes the DiT in the release's mixed precision; drop --precision stock")
    if pipe.few_step_mode:
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
