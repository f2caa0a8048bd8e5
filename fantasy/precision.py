"""The DiT's precision policy: which parts of the Wan transformer compute in fp32 and which in bf16.

The release runs DiffSynth's `WanModel` with bf16 weights under bf16 autocast, and keeps fp32 where
it matters (its `wan_video_dit.py`, read for facts): the timestep embedding `e` and its projection
`e0` (sinusoid in float64, both MLPs in fp32), the residual stream `x` between and across blocks
(`x = x + y * e[i]` in fp32, so bf16 appears only inside attention and the FFN, whose inputs autocast
rounds to bf16), and the output head (`norm`, modulation and `head` linear in fp32). Its output is fp32.

diffusers' `WanTransformer3DModel` casts `temb` to the text dtype, runs `time_proj`, the residual adds
and `proj_out` in the compute dtype, and returns bf16. Two policies, set with `apply_precision`:

| policy | timestep embedding | residual stream | attention / FFN | head | output |
|---|---|---|---|---|---|
| `mixed` (default) | fp32 (sinusoid fp64) | fp32 | compute dtype | fp32 | fp32 |
| `stock` | diffusers' | compute dtype | compute dtype | compute dtype | compute dtype |

`mixed` is built from diffusers hooks (`ModelHook` in each module's `HookRegistry`), not a new
forward: the model's and the blocks' own forwards still run, so context parallelism, offloading,
layerwise casting, the step cache and regional compilation keep working. The hooks: a pre-hook on every
block lifts `hidden_states` to fp32 (block 0 receives the bf16 patch embedding; every later block
then gets the fp32 result of the previous one, since the blocks' residual adds follow their input's
dtype); pre-hooks on each block's `attn1`, `attn2` and `ffn` round their input to the compute dtype
(what autocast does in the release); `condition_embedder` computes the time path in fp32; the time
MLP's linears, `time_proj` and `proj_out` compute in fp32 from their weights, whatever the storage
(plain, GGUF, torchao) — nothing is stored twice. With an fp32 DiT (the tiny preset) the casts do
nothing and only the float64 sinusoid differs from `stock`.

Install it before offloading, caching or parallelism hooks (`fantasy.presets.assemble` does): the
fp32 linears replace their module's forward, so they must be the innermost hook.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

HOOK_NAME = "fantasy_precision"
DEFAULT_PRECISION = "mixed"
PRECISIONS: dict[str, str] = {
    "mixed": "as the release: fp32 timestep embedding, residual stream and output head; attention and FFN "
             "in the compute dtype (bf16); fp32 output",
    "stock": "diffusers' WanTransformer3DModel as is: everything in the compute dtype (slightly faster, "
             "less activation memory, further from the release)",
}


def check_precision(name: str) -> str:
    from fantasy.errors import InvalidSetting

    if name not in PRECISIONS:
        raise InvalidSetting(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    return name


def float_weight(weight: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A linear weight as a plain fp32 tensor on `device`: plain, GGUF-quantized or torchao-quantized."""
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    if isinstance(weight, GGUFParameter):
        weight = dequantize_gguf_tensor(weight)
    else:
        data = weight.data if isinstance(weight, torch.nn.Parameter) else weight
        if type(data) is not torch.Tensor and hasattr(data, "dequantize"):  # torchao Int8Tensor, Float8Tensor, ...
            weight = data.dequantize()
    return weight.to(device=device, dtype=torch.float32)


def sinusoid_fp64(timestep: torch.Tensor, channels: int) -> torch.Tensor:
    """Wan's timestep sinusoid `[cos, sin](t * 10000^(-i/half))`, computed in float64, returned in fp32."""
    half = channels // 2
    position = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, device=position.device, dtype=torch.float64).div(half))
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


class Fp32Linear(ModelHook):
    """`y = x W^T + b` in fp32 from the module's weights, whatever their storage."""

    def new_forward(self, module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        bias = None if module.bias is None else module.bias.to(device=inputs.device, dtype=torch.float32)
        return F.linear(inputs.float(), float_weight(module.weight, inputs.device), bias)


class Fp32TimeEmbedding(ModelHook):
    """`WanTimeTextImageEmbedding` with its time path in fp32: no cast of `temb` to the text dtype."""

    def initialize_hook(self, module):
        proj = module.timesteps_proj
        if not (proj.flip_sin_to_cos and proj.downscale_freq_shift == 0 and proj.scale == 1):
            raise ValueError("the mixed precision policy expects Wan's timestep sinusoid (cos first, no shift)")
        return module

    def new_forward(self, module, timestep, encoder_hidden_states, encoder_hidden_states_image=None,
                    timestep_seq_len=None):
        sinusoid = sinusoid_fp64(timestep, module.timesteps_proj.num_channels)
        if timestep_seq_len is not None:
            sinusoid = sinusoid.unflatten(0, (-1, timestep_seq_len))
        temb = module.time_embedder(sinusoid)
        timestep_proj = module.time_proj(module.act_fn(temb))
        text = module.text_embedder(encoder_hidden_states)
        image = None if encoder_hidden_states_image is None else module.image_embedder(encoder_hidden_states_image)
        return temb, timestep_proj, text, image


class CastHiddenStates(ModelHook):
    """Cast the module's `hidden_states` (first argument) to `dtype` before it runs."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def pre_forward(self, module, *args, **kwargs):
        if args:
            args = (args[0].to(self.dtype), *args[1:])
        elif "hidden_states" in kwargs:
            kwargs = {**kwargs, "hidden_states": kwargs["hidden_states"].to(self.dtype)}
        return args, kwargs


def compute_dtype_of(transformer) -> torch.dtype:
    """The dtype the blocks' matmuls run in: the compute dtype of fp8 layerwise casting or of a GGUF
    layer, else the weights' own (torchao weights report their original dtype)."""
    linear = transformer.blocks[0].attn1.to_q
    registry = getattr(linear, "_diffusers_hook", None)
    casting = None if registry is None else registry.get_hook("layerwise_casting")
    if casting is not None:
        return casting.compute_dtype
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


def _fp32_linears(transformer) -> list[torch.nn.Module]:
    embedder = transformer.condition_embedder
    return [embedder.time_embedder.linear_1, embedder.time_embedder.linear_2, embedder.time_proj,
            transformer.proj_out]


def _hooked_modules(transformer) -> list[torch.nn.Module]:
    modules = [transformer.condition_embedder, *_fp32_linears(transformer)]
    for block in transformer.blocks:
        modules += [block, block.attn1, block.attn2, block.ffn]
    return modules


def precision_of(transformer) -> str:
    registry = getattr(transformer.blocks[0], "_diffusers_hook", None)
    return "mixed" if registry is not None and registry.get_hook(HOOK_NAME) is not None else "stock"


def apply_precision(transformer, precision: str = DEFAULT_PRECISION, compute_dtype: torch.dtype | None = None) -> None:
    """Set the DiT's precision policy (see the module table); idempotent, and switchable both ways."""
    check_precision(precision)
    for module in _hooked_modules(transformer):
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(HOOK_NAME) is not None:
            registry.remove_hook(HOOK_NAME, recurse=False)
    if precision == "stock":
        return
    replaced = [transformer.condition_embedder, *_fp32_linears(transformer)]
    for module in replaced:  # their forward is replaced: any hook under ours would be skipped
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            raise RuntimeError(
                f"set the precision before other hooks are added ({', '.join(registry.hooks)} found): "
                "offloading, caching and parallelism must wrap the precision hooks"
            )
    compute = compute_dtype or compute_dtype_of(transformer)
    HookRegistry.check_if_exists_or_initialize(transformer.condition_embedder).register_hook(
        Fp32TimeEmbedding(), HOOK_NAME)
    for linear in _fp32_linears(transformer):
        HookRegistry.check_if_exists_or_initialize(linear).register_hook(Fp32Linear(), HOOK_NAME)
    for block in transformer.blocks:
        HookRegistry.check_if_exists_or_initialize(block).register_hook(CastHiddenStates(torch.float32), HOOK_NAME)
        for inner in (block.attn1, block.attn2, block.ffn):
            HookRegistry.check_if_exists_or_initialize(inner).register_hook(CastHiddenStates(compute), HOOK_NAME)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
