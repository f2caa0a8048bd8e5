"""Components -> a `FantasyTalkingPipeline` with the audio adapter installed and the DiT's precision set.

Every preset ends here (`fantasy.weights.presets` for tiny, `fantasy.weights.real` for real), so it sits below both.
"""

from __future__ import annotations

import torch

from fantasy.model.adapter import audio_processors, install_audio_adapter
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.model.precision import DEFAULT_PRECISION, apply_precision, compute_dtype_of


def clip_token_count(image_encoder_config) -> int:
    """CLIP tokens per image: patches plus the class token (257 for ViT-H/14 at 224 px)."""
    return (image_encoder_config.image_size // image_encoder_config.patch_size) ** 2 + 1


def assemble(
    components: dict, device: str | torch.device | None = "cpu", precision: str = DEFAULT_PRECISION
) -> FantasyTalkingPipeline:
    """Build the pipeline, install the (zero) audio adapter on every cross-attention, and set the DiT's
    precision policy (`fantasy.model.precision`) before anything else hooks the transformer; `device` None:
    move nothing."""
    pipe = FantasyTalkingPipeline(**components)
    pipe.audio_context = install_audio_adapter(
        pipe.transformer,
        context_dim=pipe.audio_proj.config.context_dim,
        num_image_tokens=clip_token_count(pipe.image_encoder.config),
    )
    compute_dtype = compute_dtype_of(pipe.transformer)
    for processor in audio_processors(pipe.transformer):  # the adapter computes in the blocks' dtype
        processor.to(compute_dtype)
    apply_precision(pipe.transformer, precision, compute_dtype)
    return pipe if device is None else pipe.to(device)
