"""How the 14B DiT is stored in memory: GGUF, bf16, torchao int8/fp8 weight-only, or fp8 layerwise casting.

Every mode loads through diffusers' single-file loader (`WanTransformer3DModel.from_single_file`) with
a *local* transformer config, so nothing is fetched at run time; the checkpoint (a path, or a state
dict with original Wan key names) is the only thing that changes between modes.

Two facts checked against diffusers 0.42.1 shape this file:
- `from_single_file(..., quantization_config=TorchAoConfig(...))` treats the checkpoint as
  pre-quantized and silently leaves every weight in bf16. So torchao is applied after loading with
  torchao's own `quantize_`, skipping the modules diffusers would skip (`_keep_in_fp32_modules`) and
  the adapter's processors.
- Without a quantizer `from_single_file` casts the whole model to `dtype`, fp32-kept modules included;
  we put those back in fp32, as `from_pretrained` would.
- `enable_layerwise_casting(skip_modules_pattern=...)` *replaces* diffusers' default skip list, so we
  re-add it, and add the audio adapter's processors: they must stay in their compute dtype.

The adapter is never quantized or cast: GGUF weights are quantized in the file, before the adapter
exists; torchao and layerwise casting run after it is installed and skip it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fantasy.model.precision import is_quantized_weight  # noqa: F401 (defined with the precision policy; re-exported)

# Modules of the audio adapter inside the DiT (`blocks.N.attn2.processor.{k,v}_proj`, and the identity
# branch under it), and the motion module (`motion_intensity.*`, `fantasy.model.motion.MOTION_MODULE_NAME`).
ADAPTER_PATTERN = "processor"
MOTION_PATTERN = "motion_intensity"
FP8_STORAGE = torch.float8_e4m3fn  # also fantasy.model.precision.is_quantized_weight's fp8 test


@dataclass(frozen=True)
class DitMode:
    """One way to hold the DiT: which file it is read from and what is done to it after loading."""

    name: str
    file: str  # key of `fantasy.weights.real.DIT_FILES`: "q8_0" | "q4_k_m" | "bf16"
    torchao: str | None = None  # "int8" | "fp8": torchao weight-only quantization after loading
    fp8_storage: bool = False  # layerwise casting: fp8 e4m3 storage, compute in the compute dtype
    summary: str = ""


DIT_MODES: dict[str, DitMode] = {
    m.name: m for m in [
        DitMode("q8_0", "q8_0", summary="GGUF Q8_0 (city96), dequantized per layer on the fly"),
        DitMode("q4_k_m", "q4_k_m", summary="GGUF Q4_K_M (city96), smallest, some quality loss"),
        DitMode("bf16", "bf16", summary="bf16 safetensors, no quantization"),
        DitMode("bf16-int8", "bf16", torchao="int8", summary="bf16 file, torchao int8 weight-only"),
        DitMode("bf16-fp8", "bf16", torchao="fp8",
                summary="bf16 file, torchao fp8 weight-only (GPU compute capability >= 8.9)"),
        DitMode("bf16-fp8-storage", "bf16", fp8_storage=True,
                summary="bf16 file, fp8 storage with bf16 compute (layerwise casting; any CUDA GPU)"),
    ]
}


def get_dit_mode(name: str) -> DitMode:
    from fantasy.errors import InvalidSetting

    try:
        return DIT_MODES[name]
    except KeyError:
        raise InvalidSetting(f"unknown DiT mode '{name}'; choose one of {', '.join(DIT_MODES)}") from None


def load_single_file_transformer(
    checkpoint: str | Path | dict, config_dir: str | Path, compute_dtype: torch.dtype, gguf: bool,
    device: str | torch.device | None = None,
):
    """`WanTransformer3DModel` from one checkpoint with original Wan keys (GGUF file, safetensors or dict).

    `config_dir` holds the transformer's `config.json`; passing it stops diffusers from downloading
    a config from the Hub (it would otherwise fetch the 480P repo's). GGUF weights stay quantized
    (`GGUFParameter`, dequantized per forward in `compute_dtype`); a GGUF path is read as views of its
    memory map (`fantasy.weights.checkpoints.gguf_state_dict`), so nothing is copied on the way to `device`.
    """
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel

    kwargs = {"config": str(config_dir), "dtype": compute_dtype, "local_files_only": True}
    if gguf:
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=compute_dtype)
        if not isinstance(checkpoint, dict):
            from fantasy.weights.checkpoints import gguf_state_dict

            checkpoint = gguf_state_dict(checkpoint)
    if device is not None:
        kwargs["device"] = torch.device(device)
    source = checkpoint if isinstance(checkpoint, dict) else str(checkpoint)
    from fantasy.weights.checkpoints import dropped_log_messages

    # from_single_file ends with its own `model.to(dtype)` and then warns about it; we undo that cast below.
    with dropped_log_messages("diffusers.models.modeling_utils", "There are modules in"):
        model = WanTransformer3DModel.from_single_file(source, **kwargs).eval()
    if not gguf:
        keep_fp32_modules_in_fp32(model)
    return model


def keep_fp32_modules_in_fp32(model) -> int:
    """Put `_keep_in_fp32_modules` (time embedder, modulation tables, norms) back in fp32.

    Without a quantizer, `from_single_file` ends with `model.to(dtype)`, which casts them to bf16;
    `from_pretrained` and the original Wan keep them in fp32. Returns the number of modules restored.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    restored = 0
    for name, module in model.named_modules():
        if keep & set(name.split(".")) and any(p.is_floating_point() for p in module.parameters(recurse=False)):
            module.to(torch.float32)
            restored += 1
    if "scale_shift_table" in keep:  # bare parameters, not modules
        for name, param in model.named_parameters():
            if name.split(".")[-1] == "scale_shift_table":
                param.data = param.data.float()
    rope = getattr(model, "rope", None)
    if "rope" in keep and rope is not None and any(b.dtype != torch.float32 for b in rope.buffers()):
        # RoPE's tables are buffers, not weights: `.to(bf16)` rounded them (up to 2e-3), and casting back cannot
        # restore them. Rebuilt from the config, in fp32, as `from_pretrained` keeps them.
        config = model.config
        fresh = type(rope)(config.attention_head_dim, config.patch_size, config.rope_max_seq_len)
        model.rope = fresh.to(next(rope.buffers()).device)
        restored += 1
    return restored


def torchao_config(kind: str):
    """torchao config instance (diffusers 0.42.1 no longer accepts the string shorthands)."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    if kind == "int8":
        return Int8WeightOnlyConfig()
    if kind == "fp8":
        return Float8WeightOnlyConfig()
    raise ValueError(f"unknown torchao weight-only kind '{kind}' (int8 or fp8)")


def _skipped_by_quantization(transformer, fqn: str) -> bool:
    keep = list(getattr(transformer, "_keep_in_fp32_modules", None) or [])
    parts = fqn.split(".")
    return ADAPTER_PATTERN in parts or MOTION_PATTERN in parts or any(name in parts for name in keep)


def quantize_weight_only(transformer, kind: str, device: str | torch.device | None = None) -> int:
    """torchao int8/fp8 weight-only on every `nn.Linear` except fp32-kept modules and the adapter.

    `device`: quantize there, one layer at a time (fast on a GPU, and peak memory stays at the
    quantized size). Returns the number of layers quantized.
    """
    from torchao.quantization import quantize_

    count = 0

    def keep(module: nn.Module, fqn: str) -> bool:
        nonlocal count
        chosen = isinstance(module, nn.Linear) and not _skipped_by_quantization(transformer, fqn)
        count += chosen
        return chosen

    quantize_(transformer, torchao_config(kind), filter_fn=keep, device=device)
    return count


def enable_fp8_storage(transformer, compute_dtype: torch.dtype) -> None:
    """fp8 e4m3 weights at rest, upcast per layer for compute; the adapter and norms are left alone."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN) + (ADAPTER_PATTERN, MOTION_PATTERN)
    transformer.enable_layerwise_casting(
        storage_dtype=FP8_STORAGE, compute_dtype=compute_dtype, skip_modules_pattern=patterns
    )


# ---- fp8 linears (a speed switch, not a storage mode) ----------------------------------------------
FP8_MATMUL_CAPABILITY = (8, 9)  # Ada / Hopper and later: the GPUs with fp8 tensor cores


def is_block_linear(transformer, module: nn.Module, fqn: str) -> bool:
    """A plain `nn.Linear` inside `blocks.N` that is neither fp32-kept nor the audio adapter.

    The blocks hold almost all of the DiT's FLOPs; the embedders and the output head stay in the
    compute dtype, where their precision matters most and their cost is negligible.
    """
    return (
        isinstance(module, nn.Linear) and fqn.split(".")[0] == "blocks"
        and not _skipped_by_quantization(transformer, fqn)
    )


def quantize_block_linears(transformer, config) -> list[str]:
    """torchao `config` on every block linear (see `is_block_linear`); returns their names, in order."""
    from torchao.quantization import quantize_

    chosen: list[str] = []

    def keep(module: nn.Module, fqn: str) -> bool:
        ok = is_block_linear(transformer, module, fqn)
        if ok:
            chosen.append(fqn)
        return ok

    quantize_(transformer, config, filter_fn=keep)
    return chosen


def check_fp8_matmuls(transformer) -> None:
    """Dynamic fp8 matmuls need the (bf16) DiT resident on a GPU with compute capability >= 8.9."""
    from fantasy.errors import InvalidSetting

    weights = [m.weight for name, m in transformer.named_modules() if is_block_linear(transformer, m, name)]
    if any(is_quantized_weight(w) for w in weights):
        raise InvalidSetting("fp8 linears need the bf16 DiT (--dit bf16); this DiT's weights are already quantized")
    device = weights[0].device
    if device.type != "cuda":
        raise InvalidSetting(
            f"fp8 linears need the DiT resident on a CUDA GPU with compute capability >= 8.9 (Ada/Hopper, e.g. "
            f"L4, 4090, H100); it is on '{device}' (use --vram resident on such a GPU)"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MATMUL_CAPABILITY:
        raise InvalidSetting(
            f"fp8 linears need compute capability >= 8.9 (Ada/Hopper); {torch.cuda.get_device_name(device)} has "
            f"{capability[0]}.{capability[1]}"
        )


def quantize_fp8_linears(transformer) -> list[str]:
    """fp8 e4m3 weights *and* activations (scaled per tensor, activations at run time) in the block linears.

    torchao's `Float8DynamicActivationFloat8WeightConfig`: the matmuls themselves run on fp8 tensor
    cores (`torch._scaled_mm`), unlike the `bf16-fp8` storage mode, which upcasts weights to bf16.
    The adapter, norms, embedders and head are left alone.
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

    check_fp8_matmuls(transformer)
    return quantize_block_linears(transformer, Float8DynamicActivationFloat8WeightConfig())
