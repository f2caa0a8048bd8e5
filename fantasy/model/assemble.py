"""Components -> a `FantasyTalkingPipeline` with the audio adapter installed and the DiT's precision set.

Every preset ends here (`fantasy.weights.presets` for tiny, `fantasy.weights.real` for real), so it sits below both.
"""

from __future__ import annotations

import torch

from fantasy.model.pipeline import FantasyTalkingPipeline, clip_token_count  # noqa: F401 (clip_token_count re-exported)
from fantasy.model.precision import DEFAULT_PRECISION


def assemble(
    components: dict, device: str | torch.device | None = "cpu", precision: str = DEFAULT_PRECISION
) -> FantasyTalkingPipeline:
    """Build the pipeline (it installs the zero audio adapter on every cross-attention) and set the DiT's
    precision policy (`fantasy.model.precision`) before anything else hooks the transformer; `device` None:
    move nothing."""
    pipe = FantasyTalkingPipeline(**components)
    pipe.set_precision(precision)
    return pipe if device is None else pipe.to(device)
