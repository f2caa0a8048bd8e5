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

`mixed` is built from hooks, not a new forward: the model's and the blocks' own forwards still run,
so context parallelism, offloading, layerwise casting, the step cache and regional compilation keep
working. The hooks: a pre-hook (torch's own, shared by all blocks, see `CastHiddenStates`) on every
block lifts `hidden_states` to fp32 (block 0 receives the bf16 patch embedding; every later block
then gets the fp32 result of the previous one, since the blocks' residual adds follow their input's
dtype); pre-hooks on each block's `attn1`, `attn2` and `ffn` round their input to the compute dtype
(what autocast does in the release); with diffusers `ModelHook`s, `condition_embedder` computes the
time path in fp32, and the time MLP's linears, `time_proj` and `proj_out` compute in fp32 from their
weights, whatever the storage (plain, GGUF, torchao): nothing is stored twice. With an fp32 DiT (the
tiny preset) the casts do nothing and only the float64 sinusoid differs from `stock`.

Install it before offloading, caching or parallelism hooks (`fantasy.model.assemble.assemble` does): the
fp32 linears replace their module's forward, so they must be the innermost hook. `copy.deepcopy` of a
transformer with the policy works (it is copied without the hooks, then both get them again): a plain
deep copy would not, since diffusers' hook registry keeps closures over the original modules, so the
copy's blocks would silently run the original's weights.
"""

from __future__ import annotations

import copy
import weakref

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


def is_quantized_weight(param: torch.Tensor) -> bool:
    """True for GGUF and torchao weights and for fp8 storage; False for plain float weights."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    if isinstance(param, GGUFParameter) or param.dtype == torch.float8_e4m3fn:
        return True
    data = param.data if isinstance(param, torch.nn.Parameter) else param
    return type(data).__module__.startswith("torchao")


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


CHUNK_ROWS = 5120  # `time_proj` (30720 x 5120) upcast a sixth at a time: 105 MB of fp32 at once, not 630 MB


class Fp32Linear(ModelHook):
    """`y = x W^T + b` in fp32 from the module's weights, whatever their storage. Plain low-precision weights
    are upcast `CHUNK_ROWS` output rows at a time, so no whole fp32 copy of a large weight ever exists."""

    def new_forward(self, module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.float()
        bias = None if module.bias is None else module.bias.to(device=x.device, dtype=torch.float32)
        weight = module.weight
        plain = type(weight.data if isinstance(weight, torch.nn.Parameter) else weight) is torch.Tensor
        if not plain or weight.dtype == torch.float32 or weight.shape[0] <= CHUNK_ROWS:
            return F.linear(x, float_weight(weight, x.device), bias)
        return torch.cat([
            F.linear(x, weight[i : i + CHUNK_ROWS].to(device=x.device, dtype=torch.float32),
                     None if bias is None else bias[i : i + CHUNK_ROWS])
            for i in range(0, weight.shape[0], CHUNK_ROWS)
        ], dim=-1)


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


class CastHiddenStates:
    """Forward pre-hook (torch's own, with kwargs): cast the module's `hidden_states` to `dtype`.

    One instance per dtype, shared by every block (`cast_to`): `torch.compile` guards on the hook's
    identity, so shared hooks let `compile_repeated_blocks` compile one block for all 40, where a
    per-module hook (or diffusers' per-module forward wrapper) would recompile for each block.
    """

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, module, args, kwargs):
        if args:
            return (args[0].to(self.dtype), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": kwargs["hidden_states"].to(self.dtype)}
        return None


_CASTS: dict[torch.dtype, CastHiddenStates] = {}


def cast_to(dtype: torch.dtype) -> CastHiddenStates:
    return _CASTS.setdefault(dtype, CastHiddenStates(dtype))


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


def _cast_modules(transformer) -> list[tuple[torch.nn.Module, bool]]:
    """(module, True for the fp32 stream / False for the compute dtype) for every cast pre-hook."""
    return [(module, module is block) for block in transformer.blocks
            for module in (block, block.attn1, block.attn2, block.ffn)]


def _remove_casts(module: torch.nn.Module) -> None:
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, CastHiddenStates):
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)


class _CopyWithoutHooks:
    """The transformer's instance `__deepcopy__` while the policy is on (see the module docstring)."""

    def __init__(self, transformer, compute_dtype: torch.dtype):
        self.transformer = weakref.ref(transformer)
        self.compute_dtype = compute_dtype

    def __call__(self, memo):
        original = self.transformer()
        others = [name for module in original.modules() if (registry := getattr(module, "_diffusers_hook", None))
                  for name in registry.hooks if name != HOOK_NAME]
        if others:
            raise RuntimeError(f"cannot deep-copy a transformer with diffusers hooks ({', '.join(sorted(set(others)))}): "
                               "their registry refers to the original modules; build a new transformer instead")
        apply_precision(original, "stock")
        try:
            duplicate = copy.deepcopy(original, memo)
        finally:
            apply_precision(original, "mixed", self.compute_dtype)
        apply_precision(duplicate, "mixed", self.compute_dtype)
        return duplicate


def precision_of(transformer) -> str:
    hooks = transformer.blocks[0]._forward_pre_hooks.values()
    return "mixed" if any(isinstance(hook, CastHiddenStates) for hook in hooks) else "stock"


def apply_precision(transformer, precision: str = DEFAULT_PRECISION, compute_dtype: torch.dtype | None = None) -> None:
    """Set the DiT's precision policy (see the module table); idempotent, and switchable both ways."""
    check_precision(precision)
    transformer.__dict__.pop("__deepcopy__", None)
    for module in [transformer.condition_embedder, *_fp32_linears(transformer)]:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(HOOK_NAME) is not None:
            registry.remove_hook(HOOK_NAME, recurse=False)
    for module, _ in _cast_modules(transformer):
        _remove_casts(module)
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
    for module, stream in _cast_modules(transformer):  # outside any diffusers hook on these modules
        module.register_forward_pre_hook(cast_to(torch.float32 if stream else compute), with_kwargs=True, prepend=True)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()
    transformer.__dict__["__deepcopy__"] = _CopyWithoutHooks(transformer, compute)
