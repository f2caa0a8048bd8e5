"""Wan's CLIP image encoder (ViT-H/14) from one single file: ComfyUI's `clip_vision_h.safetensors` and kijai's
`open-clip-xlm-roberta-large-vit-huge-14_visual_fp16.safetensors`.

Three key spellings are read (ComfyUI's `comfy/clip_vision.py` loads the first two, kijai's WanVideoWrapper
`wanvideo/modules/clip.py` the third):

- transformers' (`vision_model.encoder.layers.N.self_attn.q_proj.weight`, `visual_projection.weight`);
- open_clip's (`visual.transformer.resblocks.N.attn.in_proj_weight`, `visual.proj`), which ComfyUI converts;
- the original Wan code's (`visual.transformer.N.attn.to_qkv.weight`, `visual.head`).

All three become transformers' `CLIPVisionModelWithProjection` in fp32 (as the diffusers folder's
`image_encoder/` loads), sized from the tensors' shapes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch
from fantasy.weights.single_file import Header, block_count, check_names, read_header, read_tensors

HEADS = 16  # CLIP ViT-L/H/bigG all use 16 heads; the shapes do not say it
_EMBED = "vision_model.embeddings."
_LAYER = "vision_model.encoder.layers."


def clip_layout(header: Header) -> str:
    """'transformers', 'open_clip' or 'wan'; `CheckpointMismatch` for a file that is no CLIP vision tower."""
    keys = header.keys()
    if f"{_EMBED}patch_embedding.weight" in keys:
        return "transformers"
    if "visual.conv1.weight" in keys:
        return "open_clip"
    if "visual.patch_embedding.weight" in keys:
        return "wan"
    sample = ", ".join(list(keys)[:3])
    raise CheckpointMismatch(f"{header.path.name} is not a CLIP vision model (clip_vision_h.safetensors): no patch "
                             f"embedding among its keys (first keys: {sample})")


def _split_qkv(out: dict, prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    for name, part in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3, dim=0), strict=True):
        out[f"{prefix}self_attn.{name}.weight"] = part
    if bias is not None:
        for name, part in zip(("q_proj", "k_proj", "v_proj"), bias.chunk(3, dim=0), strict=True):
            out[f"{prefix}self_attn.{name}.bias"] = part


def _from_open_clip(state: dict) -> dict:
    out = {f"{_EMBED}class_embedding": state.pop("visual.class_embedding"),
           f"{_EMBED}patch_embedding.weight": state.pop("visual.conv1.weight"),
           f"{_EMBED}position_embedding.weight": state.pop("visual.positional_embedding")}
    renames = {"visual.ln_pre.": "vision_model.pre_layrnorm.", "visual.ln_post.": "vision_model.post_layernorm."}
    block = re.compile(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)$")
    parts = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
             "attn.out_proj.": "self_attn.out_proj."}
    for key in list(state):
        if key == "visual.proj":
            out["visual_projection.weight"] = state.pop(key).t()
        elif (match := block.match(key)) and match.group(2) == "attn.in_proj_weight":
            prefix = f"{_LAYER}{match.group(1)}."
            _split_qkv(out, prefix, state.pop(key), state.pop(f"visual.transformer.resblocks.{match.group(1)}"
                                                            ".attn.in_proj_bias", None))
    return _rename_rest(state, out, block, parts, renames)


def _from_wan(state: dict) -> dict:
    out = {f"{_EMBED}class_embedding": state.pop("visual.cls_embedding").reshape(-1),
           f"{_EMBED}patch_embedding.weight": state.pop("visual.patch_embedding.weight"),
           f"{_EMBED}position_embedding.weight": state.pop("visual.pos_embedding").flatten(0, -2)}
    if "visual.head" in state:
        out["visual_projection.weight"] = state.pop("visual.head").t()
    renames = {"visual.pre_norm.": "vision_model.pre_layrnorm.", "visual.post_norm.": "vision_model.post_layernorm."}
    block = re.compile(r"^visual\.transformer\.(\d+)\.(.+)$")
    parts = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "mlp.0.": "mlp.fc1.", "mlp.2.": "mlp.fc2.",
             "attn.proj.": "self_attn.out_proj."}
    for key in list(state):
        match = block.match(key)
        if match and match.group(2) == "attn.to_qkv.weight":
            layer = match.group(1)
            _split_qkv(out, f"{_LAYER}{layer}.", state.pop(key), state.pop(f"visual.transformer.{layer}.attn.to_qkv.bias",
                                                                             None))
    return _rename_rest(state, out, block, parts, renames)


def _rename_rest(state: dict, out: dict, block: re.Pattern, parts: dict, renames: dict) -> dict:
    """Both layouts' last pass: each block tensor by its first matching part (`block`: layer, rest), the other
    visual tensors by their first matching prefix; `out` gets them all."""
    for key, value in state.items():
        match = block.match(key)
        if match:
            rest = match.group(2)
            new = next((rest.replace(old, part, 1) for old, part in parts.items() if rest.startswith(old)), rest)
            out[f"{_LAYER}{match.group(1)}.{new}"] = value
        elif key.startswith("visual."):
            new = next((key.replace(old, part, 1) for old, part in renames.items() if key.startswith(old)), key)
            out[new] = value
    return out


def transformers_state(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """A CLIP vision file's tensors under transformers' names (the text tower, if any, left out)."""
    state = dict(state)
    if layout == "open_clip":
        return _from_open_clip({k: v for k, v in state.items() if k.startswith("visual.")})
    if layout == "wan":
        return _from_wan({k: v for k, v in state.items() if k.startswith("visual.")})
    state.pop(f"{_EMBED}position_ids", None)  # a buffer older transformers versions saved
    return {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}


def clip_config(shapes: dict[str, tuple[int, ...]], heads: int = HEADS):
    """`CLIPVisionConfig` of the tower these (transformers-named) shapes belong to."""
    from transformers import CLIPVisionConfig

    hidden, _, patch, _ = shapes[f"{_EMBED}patch_embedding.weight"]
    positions = shapes[f"{_EMBED}position_embedding.weight"][0]
    side = math.isqrt(positions - 1)
    if side * side != positions - 1 or hidden % heads:
        raise CheckpointMismatch(f"a CLIP vision tower with {positions} positions and width {hidden} is not a square "
                                 f"ViT with {heads} heads")
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=shapes[f"{_LAYER}0.mlp.fc1.weight"][0],
        num_hidden_layers=block_count(shapes, _LAYER), num_attention_heads=heads, image_size=side * patch,
        patch_size=patch, projection_dim=shapes.get("visual_projection.weight", (hidden,))[0], hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def load_clip_vision_file(path: str | Path, dtype: torch.dtype = torch.float32, heads: int = HEADS):
    """`CLIPVisionModelWithProjection` (or `CLIPVisionModel` when the file has no projection) in `dtype`."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    from fantasy.weights.scaled_fp8 import dequantize

    path = Path(path)
    layout = clip_layout(read_header(path))
    state = transformers_state(dequantize(read_tensors(path), dtype), layout)
    config = clip_config({key: tuple(value.shape) for key, value in state.items()}, heads)
    model_class = CLIPVisionModelWithProjection if "visual_projection.weight" in state else CLIPVisionModel
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    check_names(path, "CLIP vision", set(model.state_dict()), set(state))
    model.load_state_dict({key: value.to(dtype).contiguous() for key, value in state.items()}, assign=True)
    return model.eval()
