"""The Wan2.1 I2V DiT and the Wan VAE from ComfyUI's and kijai's single files, through diffusers' own loaders.

`WanTransformer3DModel.from_single_file` and `AutoencoderKLWan.from_single_file` convert the original Wan key
names (diffusers' `convert_wan_transformer_to_diffusers`, `convert_wan_vae_to_diffusers`); what this module
adds is what those loaders cannot know:

- the model's configuration, read from the tensors' shapes (no `config.json` travels with a ComfyUI file, and
  diffusers would otherwise fetch one from the Hub): handed to them as a local folder;
- fp8 files: kijai's and Comfy-Org's `_fp8_e4m3fn` and the `_fp8_scaled` ones are turned into the compute
  dtype first (`fantasy.weights.scaled_fp8`); diffusers would cast fp8 values without their scales;
- a clear refusal of a file that is not the Wan2.1 image-to-video DiT or VAE, before it is read.

Key facts read from ComfyUI (`comfy/model_detection.py`, `comfy/sd.py`): DiT files use the original Wan names,
sometimes under `model.diffusion_model.`; the Wan2.1 VAE has `decoder.middle.0.residual.0.gamma`, and the
Wan2.2 VAE (48 latent channels) also has `decoder.upsamples.0.upsamples.0.residual.2.weight`.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch
from fantasy.weights.single_file import block_count, read_header, read_tensors, strip_prefix

DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
HEAD_DIM = 128  # every Wan2.1 DiT (1.3B: 12 x 128, 14B: 40 x 128)
I2V_IN_CHANNELS = 36  # 16 noise + 4 mask + 16 image latents


def dit_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Original-Wan tensor name -> logical shape, read from a safetensors or GGUF file's header."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        import gguf

        try:
            reader = gguf.GGUFReader(str(path))
        except Exception as exc:  # gguf raises ValueError/struct errors for a bad file
            raise CheckpointMismatch(f"{path.name} is not a readable GGUF file ({exc})") from None
        shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    else:
        shapes = dict(read_header(path).shapes)
    return strip_prefix(shapes, DIT_PREFIXES)


def dit_config(shapes: dict[str, tuple[int, ...]], name: str) -> dict:
    """`WanTransformer3DModel` config for these shapes; `CheckpointMismatch` unless it is a Wan2.1 I2V DiT."""
    what = f"{name} is not a Wan2.1 image-to-video DiT (wan2.1_i2v_*_14B_*.safetensors)"
    if "patch_embedding.weight" not in shapes or "blocks.0.self_attn.q.weight" not in shapes:
        sample = ", ".join(list(shapes)[:3])
        raise CheckpointMismatch(f"{what}: it has no Wan DiT weights (first keys: {sample})")
    inner, in_channels, *patch = shapes["patch_embedding.weight"]
    if "img_emb.proj.0.weight" not in shapes or in_channels != I2V_IN_CHANNELS:
        raise CheckpointMismatch(f"{what}: it is a text-to-video model ({in_channels} input channels, no image branch)")
    if "img_emb.emb_pos" in shapes:
        raise CheckpointMismatch(f"{what}: it is the first-last-frame model (FLF2V)")
    if "blocks.0.modulation" not in shapes or any(key.startswith(("vace_", "motion_encoder", "face_adapter"))
                                                   for key in shapes):
        raise CheckpointMismatch(f"{what}: it is a Wan variant (VACE, Animate, ...) with other layers")
    return dict(
        patch_size=tuple(patch), num_attention_heads=inner // HEAD_DIM, attention_head_dim=HEAD_DIM,
        in_channels=in_channels, out_channels=shapes["head.head.weight"][0] // (patch[0] * patch[1] * patch[2]),
        text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=block_count(shapes, "blocks."), cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=shapes["img_emb.proj.0.weight"][0],
        added_kv_proj_dim=inner, rope_max_seq_len=1024,
    )


@contextmanager
def config_folder(model_class, config: dict):
    """A temporary folder holding `config.json` for `model_class` (what `from_single_file(config=...)` reads)."""
    with tempfile.TemporaryDirectory(prefix="fantasy-config-") as folder:
        payload = {"_class_name": model_class.__name__, **config}
        (Path(folder) / "config.json").write_text(json.dumps(payload, default=list))
        yield folder


def dit_checkpoint(path: str | Path, dtype: torch.dtype, device: str | torch.device | None = None):
    """What `from_single_file` should read for this DiT file: the path itself (16-bit and GGUF files, read from
    their memory map), or a state dict with the fp8 weights already in `dtype` (on `device`, when given)."""
    from fantasy.weights.scaled_fp8 import FP8_DTYPES, dequantize

    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return path
    header = read_header(path)
    if not any(dtype_ in FP8_DTYPES for dtype_ in header.dtypes.values()):
        return path
    return dequantize(read_tensors(path), dtype, device)


def check_loaded(model, name: str, what: str) -> None:
    """diffusers' single-file loader leaves tensors the file lacks on the meta device and only warns: refuse."""
    missing = [key for key, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise CheckpointMismatch(f"{name}: the {what} file lacks {len(missing)} of the model's tensors "
                                 f"(e.g. {missing[0]})")


def vae_config(path: str | Path) -> dict:
    """`AutoencoderKLWan` config of a Wan2.1 VAE file (diffusers' defaults are that VAE); refuses other VAEs."""
    path = Path(path)
    keys = strip_prefix(dict.fromkeys(read_header(path).keys()), ("vae.", "first_stage_model."))
    what = f"{path.name} is not the Wan2.1 VAE (wan_2.1_vae.safetensors)"
    if "decoder.middle.0.residual.0.gamma" not in keys:
        raise CheckpointMismatch(f"{what}: it has no Wan VAE weights (first keys: {', '.join(list(keys)[:3])})")
    if "decoder.upsamples.0.upsamples.0.residual.2.weight" in keys:
        raise CheckpointMismatch(f"{what}: it is the Wan2.2 VAE (48 latent channels)")
    return {}


def load_vae_file(path: str | Path, dtype: torch.dtype = torch.float32):
    """`AutoencoderKLWan` in `dtype` from a ComfyUI/kijai Wan2.1 VAE file (bf16, fp16 or fp32)."""
    from diffusers import AutoencoderKLWan

    from fantasy.weights.checkpoints import dropped_log_messages

    path = Path(path)
    config = vae_config(path)
    state = strip_prefix(read_tensors(path), ("vae.", "first_stage_model."))
    with config_folder(AutoencoderKLWan, config) as folder, \
            dropped_log_messages("diffusers.models.modeling_utils", "There are modules in"):
        vae = AutoencoderKLWan.from_single_file(state, config=folder, local_files_only=True, dtype=dtype)
    check_loaded(vae, path.name, "Wan VAE")
    return vae.eval()


def load_dit_file(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device | None = None):
    """`WanTransformer3DModel` from a ComfyUI/kijai/city96 single file (bf16, fp16, fp8, scaled fp8 or GGUF).

    diffusers' `from_single_file` reads it (`fantasy.weights.quantize.load_single_file_transformer`) with the
    config its shapes give; 16-bit and fp8 files end in `dtype` with the fp32-kept modules (time embedder,
    modulation, norms) in fp32 holding the file's own values (diffusers rounds them through `dtype` on the way).
    """
    from diffusers import WanTransformer3DModel

    from fantasy.weights.quantize import load_single_file_transformer

    path = Path(path)
    config = dit_config(dit_shapes(path), path.name)
    gguf = path.suffix.lower() == ".gguf"
    checkpoint = dit_checkpoint(path, dtype, device)
    with config_folder(WanTransformer3DModel, config) as folder:
        model = load_single_file_transformer(checkpoint, folder, compute_dtype=dtype, gguf=gguf, device=device)
    check_loaded(model, path.name, "DiT")
    if not gguf:
        _restore_fp32_values(model, path)
    return model


def _restore_fp32_values(model, path: Path) -> None:
    """Copy the file's own values into the parameters kept in fp32 (exact for fp16 and fp32 files)."""
    from fantasy.weights.scaled_fp8 import dequantize
    from fantasy.weights.wan_keys import to_original_key

    kept = {name: param for name, param in model.named_parameters() if param.dtype == torch.float32}
    header = read_header(path)
    prefix = next((p for p in DIT_PREFIXES if any(key.startswith(p) for key in header)), "")
    wanted = {prefix + to_original_key(name): name for name in kept}
    scales = [key[: -len(".weight")] + suffix for key in wanted for suffix in (".scale_weight", ".weight_scale")]
    values = dequantize(read_tensors(path, [k for k in [*wanted, *scales] if k in header]), torch.float32)
    with torch.no_grad():
        for key, name in wanted.items():
            if key in values:
                kept[name].copy_(values[key].to(kept[name].device, torch.float32))
