"""FantasyTalking's per-block modules as one diffusers component: `audio_adapter/` in a saved pipeline folder.

At run time they live inside the transformer (each block's `attn2` processor holds its audio K/V and, when
trained, its identity K/V; the motion module hangs on the transformer), where offloading and compilation need
them. A diffusers folder keeps the transformer exactly Wan's (loadable by `WanTransformer3DModel` alone), so
`FantasyTalkingPipeline.save_pretrained` gathers them into a `FantasyTalkingAdapter` (a `ModelMixin`, saved and
loaded by diffusers' own machinery: `config.json` + safetensors), and the pipeline's `__init__` moves a loaded
one's weights back into its transformer. Keys: `blocks.N.{k,v}_proj.weight`, `blocks.N.identity.{k,v}_proj.weight`,
`motion_intensity.mlp.*` (a training checkpoint's keys without `attn2.processor.`).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from fantasy.errors import CheckpointMismatch
from fantasy.model.adapter import audio_processors
from fantasy.model.identity import IdentityBranch, install_identity_module
from fantasy.model.motion import MOTION_MODULE_NAME, MotionIntensityModel, install_motion_module


class AdapterBlock(nn.Module):
    """One block's audio K/V (and identity branch), with the processor's attribute names."""

    def __init__(self, context_dim: int, inner_dim: int, identity_token_dim: int | None):
        super().__init__()
        self.k_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.v_proj = nn.Linear(context_dim, inner_dim, bias=False)
        self.identity = None if identity_token_dim is None else IdentityBranch(identity_token_dim, inner_dim)


class FantasyTalkingAdapter(ModelMixin, ConfigMixin):
    """The audio adapter's per-block K/V, and the paper's identity and motion modules when trained."""

    @register_to_config
    def __init__(self, num_blocks: int, context_dim: int, inner_dim: int, identity_token_dim: int | None = None,
                 motion_hidden_dim: int | None = None, motion_frequencies: int = 64, motion_coefficients: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(AdapterBlock(context_dim, inner_dim, identity_token_dim) for _ in range(num_blocks))
        self.motion_intensity = None if motion_hidden_dim is None else MotionIntensityModel(
            inner_dim, motion_hidden_dim, motion_frequencies, motion_coefficients)

    @classmethod
    def from_transformer(cls, transformer) -> FantasyTalkingAdapter:
        """The modules installed in `transformer`, as a component sharing their tensors (nothing is copied)."""
        processors = audio_processors(transformer)
        identity = processors[0].identity
        motion = getattr(transformer, MOTION_MODULE_NAME, None)
        config = dict(num_blocks=len(processors), context_dim=processors[0].k_proj.in_features,
                      inner_dim=processors[0].k_proj.out_features,
                      identity_token_dim=None if identity is None else identity.k_proj.in_features)
        if motion is not None:
            config |= dict(motion_hidden_dim=motion.config.hidden_dim, motion_frequencies=motion.config.frequencies,
                           motion_coefficients=motion.config.num_coefficients)
        with torch.device("meta"):
            adapter = cls(**config)
        adapter.load_state_dict(installed_parameters(transformer), strict=True, assign=True)
        return adapter.eval()


def installed_parameters(transformer) -> dict[str, torch.Tensor]:
    """Adapter key -> the live tensor in `transformer` (audio K/V, identity branch, motion module)."""
    params = {}
    for i, processor in enumerate(audio_processors(transformer)):
        params |= {f"blocks.{i}.{name}": p for name, p in processor.named_parameters()}
    motion = getattr(transformer, MOTION_MODULE_NAME, None)
    if motion is not None:
        params |= {f"{MOTION_MODULE_NAME}.{name}": p for name, p in motion.named_parameters()}
    return params


def install_adapter(pipe, adapter: FantasyTalkingAdapter) -> None:
    """Install the modules `adapter` has and `pipe` lacks, then copy its weights in; every tensor must match."""
    config, transformer = adapter.config, pipe.transformer
    processors = audio_processors(transformer)
    found = (config.num_blocks, config.context_dim, config.inner_dim)
    wanted = (len(processors), processors[0].k_proj.in_features, processors[0].k_proj.out_features)
    if found != wanted:
        raise CheckpointMismatch(f"this audio adapter is for {found[0]} blocks, context {found[1]}, width {found[2]}; "
                                 f"the transformer has {wanted[0]} blocks, context {wanted[1]}, width {wanted[2]}")
    if config.identity_token_dim is not None and pipe.identity_context is None:
        pipe.identity_context = install_identity_module(transformer, config.identity_token_dim)
    if config.motion_hidden_dim is not None and pipe.motion_context is None:
        pipe.motion_context = install_motion_module(transformer, MotionIntensityModel(
            config.inner_dim, config.motion_hidden_dim, config.motion_frequencies, config.motion_coefficients))
    state, live = adapter.state_dict(), installed_parameters(transformer)
    if state.keys() != live.keys():
        missing, unexpected = sorted(live.keys() - state.keys()), sorted(state.keys() - live.keys())
        raise CheckpointMismatch(f"the audio adapter does not fit this pipeline: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}")
    with torch.no_grad():
        for key, param in live.items():
            if state[key].shape != param.shape:
                raise CheckpointMismatch(f"audio adapter tensor {key} is {tuple(state[key].shape)}, "
                                         f"the pipeline's is {tuple(param.shape)}")
            param.copy_(state[key])
