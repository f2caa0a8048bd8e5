"""The DiT and umT5 sharded over a context-parallel group with PyTorch's FSDP2 (`fully_shard`), for inference.

Each process keeps 1/N of every parameter; before a block runs FSDP2 all-gathers that block's parameters
and frees them after its forward (`reshard_after_forward`), so a GPU holds its shards plus about two whole
blocks (the running one and the one prefetched) instead of a whole 14B DiT and an 11 GB text encoder. The
mesh is diffusers' own context-parallel mesh, flattened: the same N processes split the tokens and the weights.

Storage, per mode (`fantasy.weights.quantize.DIT_MODES`):
- bf16, and the fp32-kept modules beside it: sharded as they are (FSDP2 gathers mixed dtypes as bytes; it
  only asks for one dtype when there are gradients, so the models are set to need none);
- GGUF (q8_0, q4_k_m): each weight's bytes are sharded by rows, and every GGML block lies within a row, so
  a shard is whole blocks. FSDP2 gathers plain bytes and drops diffusers' `GGUFParameter` (with its
  `quant_type`), which `GGUFLinear` then would read as raw numbers: a forward pre-hook wraps the gathered
  bytes back (a view, no copy);
- torchao (bf16-int8, bf16-fp8) and fp8 storage (bf16-fp8-storage): not shardable, see `_whole_reason`; those
  layers stay whole on every GPU (everything else is sharded) and a one-line note says so.
"""

from __future__ import annotations

import torch
from torch import nn

GGUF_HOOK = "_fantasy_gguf_quant_type"


def _gguf_parameter_class():
    from diffusers.quantizers.gguf.utils import GGUFParameter

    return GGUFParameter


def _whole_reason(param: torch.Tensor) -> str | None:
    """Why FSDP2 cannot shard this weight (None: it can)."""
    data = param.data if isinstance(param, nn.Parameter) else param
    kind = type(data)
    if kind.__module__.startswith("torchao"):
        return (f"torchao's {kind.__name__} has no aten.split, which FSDP2 shards with (torchao "
                f"{_version('torchao')})")
    if param.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return ("diffusers' layerwise casting swaps each fp8 weight for a cast copy inside the forward, where FSDP2 "
                "has put the gathered one (and gloo cannot gather float8)")
    return None


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def whole_parameters(model: nn.Module) -> tuple[set[nn.Parameter], str | None, int]:
    """(parameters to keep whole, the reason, how many modules hold them)."""
    kept: set[nn.Parameter] = set()
    reason, modules = None, 0
    for module in model.modules():
        held = [p for p in module.parameters(recurse=False) if _whole_reason(p) is not None]
        if held:
            modules += 1
            kept.update(held)
            reason = reason or _whole_reason(held[0])
    return kept, reason, modules


def _remember_gguf_types(model: nn.Module) -> int:
    """Keep each GGUF layer's `quant_type` beside it, and wrap the gathered weight back before its forward."""
    gguf = _gguf_parameter_class()
    count = 0
    for module in model.modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if isinstance(weight, gguf):
            setattr(module, GGUF_HOOK, weight.quant_type)
            module.register_forward_pre_hook(_rewrap_gguf)
            count += 1
    return count


def _rewrap_gguf(module: nn.Module, _args) -> None:
    """FSDP2 has just put the gathered weight (plain bytes) on the module: make it a `GGUFParameter` again."""
    gguf = _gguf_parameter_class()
    weight = module._parameters["weight"]
    if not isinstance(weight, gguf):
        module._parameters["weight"] = gguf(weight, requires_grad=False, quant_type=getattr(module, GGUF_HOOK))


def _shard_model(model: nn.Module, blocks, mesh) -> str | None:
    from torch.distributed.fsdp import fully_shard

    model.requires_grad_(False)  # inference: FSDP2 then accepts mixed dtypes (bf16 beside fp32-kept modules)
    kept, reason, modules = whole_parameters(model)
    device = _mesh_device(mesh)
    for module in model.modules():  # FSDP2 moves what it shards to the mesh's device; the whole ones go there too
        if any(p in kept for p in module.parameters(recurse=False)):
            module.to(device)
    _remember_gguf_types(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params={p for p in block.parameters() if p in kept} or None)
    # The root too: FSDP2 keeps a root's parameters gathered after its forward by default (umT5's 2 GB embedding).
    fully_shard(model, mesh=mesh, ignored_params=kept or None, reshard_after_forward=True)
    if not kept:
        return None
    return (f"{modules} layers of the {type(model).__name__} stay whole on every process: {reason}; "
            "the rest is sharded")


def _mesh_device(mesh) -> torch.device:
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)


def shard_weights(pipe, mesh) -> list[str]:
    """Shard the DiT and umT5 over `mesh` (1-D, every process of the group). One line per model, for the log."""
    lines = []
    for name, blocks in (("transformer", "blocks"), ("text_encoder", "encoder.block")):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        note = _shard_model(model, model.get_submodule(blocks), mesh)
        lines.append(f"{name} sharded over {mesh.size()} processes (FSDP2): "
                     f"{parameter_bytes(model) / 1e9:.3f} GB of parameters here")
        if note:
            lines.append(f"note: {note}")
    return lines


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this process holds: its shards (a sharded parameter's local part) and whole ones."""
    from torch.distributed.tensor import DTensor

    total = 0
    for param in model.parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        total += local.numel() * local.element_size()
    return total
