"""VRAM modes: where the models of a loaded pipeline live while it runs. Only diffusers' own offloading.

- `resident`: every model on the GPU, except umT5 (11 GB in bf16), which diffusers' group offloading
  brings to the GPU for its forward only: it is back on the CPU as soon as the prompt is encoded.
- `model-offload`: `enable_model_cpu_offload`: each whole model comes to the GPU when it runs and
  leaves when the next one does (umT5 leaves before the DiT arrives). Peak ~ the largest model.
- `group-offload`: `enable_group_offload(block_level, 1 block per group, CUDA streams)` on umT5 and
  the DiT: one transformer block at a time on the GPU, the next one prefetched on a side stream.
  Needs about twice the DiT's size in pinned host RAM. CLIP, wav2vec2, the audio projection and the
  VAE stay resident (small, and our code calls pieces of them directly, outside any hook).
- `sharded`: under context parallelism, the DiT and umT5 stay on the CPU here (memory-mapped where they
  can be) and FSDP2 moves each process's shard to its GPU (`fantasy.speed.sharding`); the rest is resident.

The audio adapter's processors are children of `blocks[i].attn2`, so install them (and apply any
layerwise casting) *before* calling `apply_vram_mode`: they then move with their block.
"""

from __future__ import annotations

import torch

VRAM_MODES: dict[str, str] = {
    "resident": "all models on the GPU (umT5 only while encoding the prompt); fastest, most VRAM",
    "model-offload": "one whole model on the GPU at a time (diffusers enable_model_cpu_offload)",
    "group-offload": "DiT and umT5 one block at a time, prefetched on a CUDA stream; least VRAM, needs host RAM",
    "sharded": "DiT and umT5 sharded over a context-parallel group's GPUs (FSDP2; needs --context-parallel N)",
}
SHARDED_MODELS = ("transformer", "text_encoder")  # placed by the sharding (`fantasy.speed.sharding`), not here
# Components left resident under group offloading.
GROUP_OFFLOAD_RESIDENT = ("image_encoder", "audio_encoder", "audio_proj", "vae")


def check_vram_mode(name: str) -> str:
    from fantasy.errors import InvalidSetting

    if name not in VRAM_MODES:
        raise InvalidSetting(f"unknown VRAM mode '{name}'; choose one of {', '.join(VRAM_MODES)}")
    return name


def group_offload_kwargs(device: torch.device) -> dict:
    """Block-level group offloading, one block per group, prefetched on a CUDA stream when there is one."""
    return {
        "onload_device": device, "offload_device": torch.device("cpu"), "offload_type": "block_level",
        "num_blocks_per_group": 1, "use_stream": device.type == "cuda",
    }


def group_offload(module: torch.nn.Module, device: str | torch.device) -> None:
    """Group-offload one model (the benchmark's transformer; the pipeline goes through `apply_vram_mode`)."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(module, **group_offload_kwargs(torch.device(device)))


def offload_text_encoder_after_use(pipe, device: torch.device) -> None:
    """umT5 on the CPU at rest, on `device` only for its forward (diffusers group offloading, one group)."""
    from diffusers.hooks import apply_group_offloading

    apply_group_offloading(
        pipe.text_encoder, onload_device=device, offload_device=torch.device("cpu"),
        offload_type="block_level", num_blocks_per_group=1,
    )


def apply_vram_mode(pipe, mode: str, device: str | torch.device) -> None:
    """Place the pipeline's models for `mode`. The pipeline must still be entirely on the CPU."""
    check_vram_mode(mode)
    device = torch.device(device)
    if mode == "resident":
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name != "text_encoder":
                component.to(device)
        offload_text_encoder_after_use(pipe, device)
    elif mode == "sharded":
        for name, component in pipe.components.items():
            if isinstance(component, torch.nn.Module) and name not in SHARDED_MODELS:
                component.to(device)
    elif mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(**group_offload_kwargs(device), exclude_modules=list(GROUP_OFFLOAD_RESIDENT))
