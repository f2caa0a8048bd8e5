"""Motion-intensity control: the paper's modulation network, and the slider mapping used until it is trained.

**The network** (`MotionIntensityModel`): expression and body coefficients in [0, 1] -> sinusoidal
features -> a 3-layer MLP -> an offset added to the transformer's timestep modulation
(`timestep_proj`, the 6 shift/scale/gate vectors every `WanTransformerBlock` reads). So the signal
reaches every block, the way the timestep does. Its last layer is zero-initialised: installed and
untrained, the transformer is bit-for-bit the stock one. The official release ships no such weights;
`python -m fantasy train` learns them (labels measured from the training clips, `fantasy.train`).

**The sliders.** With trained motion weights loaded, the two sliders are the coefficients
(`MOTION_MODULE_MODE`). Without them they act through inputs the released model already responds
to (`TRAINING_FREE_MODE`). Everything is relative to the settings passed in, and the midpoint
(0.5, 0.5) changes nothing but the prompt wording:

| slider      | 0                          | 0.5                              | 1                                         |
|-------------|----------------------------|----------------------------------|-------------------------------------------|
| expression  | audio weight ×0.6,         | ×1.0 (release: weight 1.0,       | ×1.4 (weight 1.4, audio guidance 7.0)     |
|             | audio guidance ×0.6 (3.0)  | audio guidance 5.0)              |                                           |
| body        | no motion words; "person   | ", with natural head movements"; | ", with lively head and upper-body        |
|             | motionless, still" removed | release negative prompt          | movements and hand gestures"; "motionless"|
|             | from the negative prompt   | (motionless words once)          | words twice in the negative prompt        |

Expression is linear in between and clamped to safe ranges (audio weight 0–2, audio guidance 1–10).
Body picks the nearest of the three levels (below 0.25, 0.25–0.75, from 0.75). Why the negative
prompt: the release puts "人物静止不动，静止，" (person motionless, still) there to push the video away
from stillness; removing it lets a calm portrait stay calm, repeating it pushes harder toward motion.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fantasy.errors import InvalidSetting
from fantasy.prompts import MOTIONLESS_PREFIX, default_prompt

if TYPE_CHECKING:
    from fantasy.generate import Settings

TRAINING_FREE_MODE = "training-free (prompt + audio weight)"
MOTION_MODULE_MODE = "motion module (trained weights)"
MOTION_MODULE_NAME = "motion_intensity"  # the module's attribute on the transformer (and its key prefix)
NEUTRAL_COEFFICIENTS = (0.5, 0.5)  # what the trained module gets when no slider value is given

EXPRESSION_MIN_SCALE = 0.6  # at expression 0
EXPRESSION_MAX_SCALE = 1.4  # at expression 1 (0.5 -> exactly 1.0)
AUDIO_WEIGHT_RANGE = (0.0, 2.0)
AUDIO_GUIDANCE_RANGE = (1.0, 10.0)

BODY_LEVELS: tuple[tuple[float, str, int], ...] = (
    # (from this slider value, prompt suffix, times the motionless words appear in the negative prompt)
    (0.0, "", 0),
    (0.25, ", with natural head movements", 1),
    (0.75, ", with lively head and upper-body movements and hand gestures", 2),
)


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidSetting(f"{name} must be between 0 and 1, got {value}")
    return value


def expression_scale(expression: float) -> float:
    """Linear 0 -> 0.6, 0.5 -> 1.0, 1 -> 1.4 (exactly 1.0 at the midpoint so defaults pass through)."""
    expression = _check_unit("expression intensity", expression)
    if expression == 0.5:
        return 1.0
    return EXPRESSION_MIN_SCALE + (EXPRESSION_MAX_SCALE - EXPRESSION_MIN_SCALE) * expression


def body_level(body: float) -> tuple[str, int]:
    """(prompt suffix, motionless-word repeats) for a body-motion slider value."""
    body = _check_unit("body-motion intensity", body)
    suffix, repeats = BODY_LEVELS[0][1:]
    for start, level_suffix, level_repeats in BODY_LEVELS:
        if body >= start:
            suffix, repeats = level_suffix, level_repeats
    return suffix, repeats


def _with_suffix(prompt: str, suffix: str) -> str:
    """'A person is talking.' + ', with x' -> 'A person is talking, with x.' (keeps the sentence whole)."""
    if not suffix:
        return prompt
    text = prompt.rstrip()
    end = ""
    if text.endswith((".", "!", "。")):
        text, end = text[:-1], text[-1]
    return f"{text}{suffix}{end or '.'}"


def _negative_with_motionless(negative: str, repeats: int) -> str:
    """Strip every leading copy of the motionless words, then put back `repeats` copies."""
    core = negative
    while core.startswith(MOTIONLESS_PREFIX):
        core = core[len(MOTIONLESS_PREFIX):]
    return MOTIONLESS_PREFIX * repeats + core


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def training_free_controls(expression: float, body: float, base: Settings) -> tuple[Settings, str]:
    """Apply the two sliders to `base` (see the module table); returns the new settings and the mode name."""
    scale = expression_scale(expression)
    suffix, repeats = body_level(body)
    settings = replace(
        base,
        audio_weight=_clamp(base.audio_weight * scale, AUDIO_WEIGHT_RANGE),
        audio_guidance=_clamp(base.audio_guidance * scale, AUDIO_GUIDANCE_RANGE),
        prompt=_with_suffix(base.prompt if base.prompt is not None else default_prompt(base.release), suffix),
        negative_prompt=_negative_with_motionless(base.negative_prompt, repeats),
    )
    return settings, TRAINING_FREE_MODE


def motion_controls(expression: float, body: float, base: Settings, trained: bool) -> tuple[Settings, str]:
    """The sliders in the mode the pipeline supports: trained coefficients, or the training-free mapping."""
    if trained:
        coefficients = (_check_unit("expression intensity", expression), _check_unit("body-motion intensity", body))
        return replace(base, motion=coefficients), MOTION_MODULE_MODE
    return training_free_controls(expression, body, base)


# ---- the motion-intensity network ----------------------------------------------------------------


class MotionIntensityModel(ModelMixin, ConfigMixin):
    """(expression, body) in [0, 1] -> an offset [B, 6 * inner_dim] for every block's modulation.

    Sinusoidal features first (as for timesteps), so a small MLP can separate nearby intensities;
    three linear layers (the community reading of the paper's "3-layer FC"); the last is zero.
    """

    @register_to_config
    def __init__(self, inner_dim: int, hidden_dim: int = 1024, frequencies: int = 64, num_coefficients: int = 2):
        super().__init__()
        self.register_buffer(
            "freqs", torch.exp(-math.log(10_000.0) * torch.arange(frequencies) / frequencies), persistent=False
        )
        features = 2 * frequencies * num_coefficients
        self.mlp = nn.Sequential(
            nn.Linear(features, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, 6 * inner_dim),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        if coefficients.ndim != 2 or coefficients.shape[1] != self.config.num_coefficients:
            raise ValueError(f"expected coefficients [B, {self.config.num_coefficients}], got {tuple(coefficients.shape)}")
        param = self.mlp[0].weight
        angles = 1000.0 * coefficients.to(param.device, torch.float32)[..., None] * self.freqs.float()  # [B, 2, F]
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)
        return self.mlp(features.to(param.dtype))


@dataclass
class MotionContext:
    """The coefficients of the current transformer call ([B or 1, 2]); None leaves the model stock."""

    model: MotionIntensityModel
    coefficients: torch.Tensor | None = None

    @contextmanager
    def use(self, motion: tuple[float, float] | None):
        """(expression, body) for the calls inside the block; None gives the neutral (0.5, 0.5)."""
        expression, body = motion if motion is not None else NEUTRAL_COEFFICIENTS
        previous, self.coefficients = self.coefficients, coefficients_tensor(expression, body)
        try:
            yield self
        finally:
            self.coefficients = previous

    def modulate(self, _module, _inputs, outputs):
        """Forward hook on `condition_embedder`: add the offset to `timestep_proj` (output 1)."""
        if self.coefficients is None:
            return outputs
        temb, timestep_proj, *rest = outputs
        offset = self.model(self.coefficients).to(timestep_proj.dtype)
        if timestep_proj.ndim == 3:  # Wan 2.2 per-token timesteps: [B, seq, 6 * dim]
            offset = offset[:, None]
        return (temb, timestep_proj + offset, *rest)


def install_motion_module(transformer, model: MotionIntensityModel | None = None) -> MotionContext:
    """Attach a (zero-initialised unless given) motion model to `transformer` and hook it in.

    It becomes `transformer.motion_intensity`, so it moves, offloads and saves with the transformer;
    quantization and fp8 casting skip it by that name (`fantasy.quantize`).
    """
    if hasattr(transformer, MOTION_MODULE_NAME):
        raise RuntimeError("a motion module is already installed on this transformer")
    inner_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    model = model or MotionIntensityModel(inner_dim=inner_dim)
    if model.config.inner_dim != inner_dim:
        raise ValueError(f"motion module built for inner dim {model.config.inner_dim}, transformer has {inner_dim}")
    # fp32 like Wan's time embedder (the DiT's own weights may be GGUF blocks); it is small (33M at 14B).
    device = next(transformer.condition_embedder.parameters()).device
    transformer.add_module(MOTION_MODULE_NAME, model.to(device).float())
    context = MotionContext(model)
    transformer.condition_embedder.register_forward_hook(context.modulate)
    return context


def coefficients_tensor(expression: float, body: float) -> torch.Tensor:
    """[1, 2] coefficients after the [0, 1] check (a clear error, not a silent clamp)."""
    return torch.tensor([[_check_unit("expression intensity", expression), _check_unit("body-motion intensity", body)]])
