"""fp8 weights as ComfyUI and kijai store them, turned back into numbers in the compute dtype.

Single files of Wan and umT5 come in two fp8 flavours (read from ComfyUI's `comfy/ops.py` and
`comfy/model_detection.py`):

- plain fp8 (`..._fp8_e4m3fn.safetensors`, kijai's and Comfy-Org's): the big linear weights are cast to
  `float8_e4m3fn` (or `e5m2`); a weight *is* its fp8 value.
- scaled fp8 (`..._fp8_scaled.safetensors`, `umt5_xxl_fp8_e4m3fn_scaled.safetensors`, kijai's `_scaled_KJ`):
  each fp8 weight has a per-tensor fp32 `<layer>.scale_weight`, the file carries an empty `scaled_fp8` marker,
  and the real weight is `fp8 * scale_weight` (ComfyUI multiplies per call; `scale_input` only serves its
  fp8 matmuls). Newer ComfyUI files spell the scale `<layer>.weight_scale` next to a `.comfy_quant` entry.

We multiply once, at load, in fp32, and store the result in the compute dtype: the model then runs as if it
had been loaded from the bf16 file. Tensors that are not fp8 pass through untouched (the same objects).
"""

from __future__ import annotations

import torch

from fantasy.errors import CheckpointMismatch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
MARKER = "scaled_fp8"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # ComfyUI's scaled_fp8 format, then its newer spelling
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")  # fp8-matmul helpers, format tags


def is_fp8(tensor: torch.Tensor) -> bool:
    return tensor.dtype in FP8_DTYPES


def fp8_format(keys, dtypes: dict[str, torch.dtype]) -> str:
    """'scaled fp8', 'fp8' or '' for a checkpoint's key set and dtypes (for messages and choices)."""
    if MARKER in keys or any(key.endswith(SCALE_SUFFIXES) for key in keys):
        return "scaled fp8"
    if any(dtype in FP8_DTYPES for dtype in dtypes.values()):
        return "fp8"
    return ""


def _scale_for(weight: torch.Tensor, scale: torch.Tensor, key: str) -> torch.Tensor:
    """A scale shaped to multiply `weight`: one number, or one per output row."""
    scale = scale.float()
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.numel() == weight.shape[0]:
        return scale.reshape(-1, *([1] * (weight.dim() - 1)))
    raise CheckpointMismatch(f"the scale of '{key}' has {scale.numel()} values for a weight of shape "
                             f"{tuple(weight.shape)} (expected 1 or one per row)")


def dequantize(state: dict[str, torch.Tensor], dtype: torch.dtype,
               device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """A new state dict with every fp8 tensor in `dtype` (times its scale when it has one) and the scale,
    marker and fp8-matmul entries gone. `device`: where the dequantized tensors go (the GPU, when the model
    will stay there, so host memory never holds the 16-bit copy)."""
    scales = {}
    for key in state:
        for suffix in SCALE_SUFFIXES:
            if key.endswith(suffix):
                scales[key[: -len(suffix)] + ".weight"] = key
    for weight_key, scale_key in scales.items():
        if weight_key not in state:
            raise CheckpointMismatch(f"'{scale_key}' scales '{weight_key}', which the file does not hold")
    out = {}
    for key, tensor in state.items():
        if key == MARKER or key in scales.values() or key.endswith(DROPPED_SUFFIXES):
            continue
        if key in scales:
            scale = _scale_for(tensor, state[scales[key]], scales[key])
            value = tensor.to(device=device or tensor.device, dtype=torch.float32)
            out[key] = (value * scale.to(value.device)).to(dtype)
        elif is_fp8(tensor):
            out[key] = tensor.to(device=device or tensor.device).to(dtype)
        else:
            out[key] = tensor
    return out
