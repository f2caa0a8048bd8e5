"""Motion-intensity control: the paper's modulation network.

**The network** (`MotionIntensityModel`): expression and body coefficients in [0, 1] -> sinusoidal
features -> a 3-layer MLP -> an offset added to the transformer's timestep modulation
(`timestep_proj`, the 6 shift/scale/gate vectors every `WanTransformerBlock` reads). So the signal
reaches every block, the way the timestep does. Its last layer is zero-initialised: installed and
untrained, the transformer is bit-for-bit the stock one. The official release ships no such weights;
`python -m fantasy train` learns them (labels measured from the training clips, `fantasy.train`).

With trained motion weights loaded, the app's two sliders are the coefficients (`MOTION_MODULE_MODE`);
without them the sliders act through the prompt and the audio weight (`TRAINING_FREE_MODE`, `fantasy.app.sliders`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fantasy.errors import InvalidSetting

TRAINING_FREE_MODE = "training-free (prompt + audio weight)"
MOTION_MODULE_MODE = "motion module (trained weights)"
MOTION_MODULE_NAME = "motion_intensity"  # the module's attribute on the transformer (and its key prefix)
NEUTRAL_COEFFICIENTS = (0.5, 0.5)  # what the trained module gets when no slider value is given


def check_unit(name: str, value: float) -> float:
    """`value` as a float, or `InvalidSetting` naming the setting unless it lies in [0, 1] (no silent clamp)."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidSetting(f"{name} must be between 0 and 1, got {value}")
    return value


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
    quantization and fp8 casting skip it by that name (`fantasy.weights.quantize`).
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
    return torch.tensor([[check_unit("expression intensity", expression), check_unit("body-motion intensity", body)]])
