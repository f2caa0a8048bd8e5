"""ComfyUI's and kijai's single files, written by the tests in their exact layouts (names, dtypes, key spellings).

What each release holds, as read from the loaders that read them (ComfyUI `comfy/sd.py`, `comfy/ops.py`,
`comfy/text_encoders/wan.py`, `comfy/clip_vision.py`; kijai's WanVideoWrapper `nodes.py`, `wanvideo/modules/`):

- DiT, original Wan key names, no prefix: Comfy-Org `wan2.1_i2v_720p_14B_{bf16,fp16,fp8_e4m3fn,fp8_scaled}`,
  kijai `Wan2_1-I2V-14B-720P_{bf16,fp8_e4m3fn}` and `..._fp8_e4m3fn_scaled_KJ`. fp8 files hold the blocks'
  linear weights in `float8_e4m3fn` (kijai: everything but norms, biases, head, patch/time/image embeddings and
  modulation); scaled files add a per-tensor fp32 `<layer>.scale_weight` and an empty `scaled_fp8` marker.
- umT5: Comfy-Org `umt5_xxl_fp16` / `umt5_xxl_fp8_e4m3fn_scaled` in transformers' names with the tokenizer's
  SentencePiece model as a uint8 `spiece_model` tensor; kijai `umt5-xxl-enc-bf16` in the original Wan names.
- CLIP ViT-H: Comfy-Org `clip_vision_h` (fp16, transformers' names); open_clip's spelling (ComfyUI converts it);
  kijai `open-clip-xlm-roberta-large-vit-huge-14_visual_fp16` (the original Wan names).
- VAE, original Wan names: Comfy-Org `wan_2.1_vae` and kijai `Wan2_1_VAE_{bf16,fp32}`.

Key converters for writing are the inverses of the loaders' (round trips are tested); values are random.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from fantasy.weights.wan_keys import to_original_state_dict

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
COMFY_DIT = {"bf16": "wan2.1_i2v_720p_14B_bf16.safetensors", "fp16": "wan2.1_i2v_720p_14B_fp16.safetensors",
             "fp8_e4m3fn": "wan2.1_i2v_720p_14B_fp8_e4m3fn.safetensors",
             "fp8_scaled": "wan2.1_i2v_720p_14B_fp8_scaled.safetensors"}
KIJAI_DIT = {"bf16": "Wan2_1-I2V-14B-720P_bf16.safetensors", "fp8_e4m3fn": "Wan2_1-I2V-14B-720P_fp8_e4m3fn.safetensors",
             "fp8_scaled": "Wan2_1-I2V-14B-720P_fp8_e4m3fn_scaled_KJ.safetensors"}
COMFY_UMT5 = {"fp16": "umt5_xxl_fp16.safetensors", "fp8_scaled": "umt5_xxl_fp8_e4m3fn_scaled.safetensors"}
KIJAI_UMT5 = "umt5-xxl-enc-bf16.safetensors"
COMFY_CLIP = "clip_vision_h.safetensors"
KIJAI_CLIP = "open-clip-xlm-roberta-large-vit-huge-14_visual_fp16.safetensors"
COMFY_VAE = "wan_2.1_vae.safetensors"
KIJAI_VAE = {"bf16": "Wan2_1_VAE_bf16.safetensors", "fp32": "Wan2_1_VAE_fp32.safetensors"}
KIJAI_KEEP = ("norm", "head", "bias", "time_in", "vector_in", "patch_embedding", "time_", "img_emb", "modulation")
SPIECE_TEXT = ("a person is talking to the camera with calm head motion and clear lips",
               "the woman smiles and speaks slowly in a bright room", "his hands are still and his eyes look ahead")


# ---- fp8 -------------------------------------------------------------------------------------------

def to_fp8(weight: torch.Tensor) -> torch.Tensor:
    return weight.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


def scaled_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values, fp32 scale) as ComfyUI's scaled files store a weight: weight ~= fp8 * scale."""
    scale = weight.float().abs().max().clamp(min=1e-12) / FP8_MAX
    return (weight.float() / scale).to(FP8), scale.reshape(())


def with_fp8(state: dict, chosen, scaled: bool, rest_dtype: torch.dtype) -> dict:
    """`state` with the `chosen(key, tensor)` tensors in fp8 (plus `scale_weight`s and the marker when scaled)."""
    out = {}
    for key, value in state.items():
        if chosen(key, value):
            if scaled:
                out[key], out[key[: -len(".weight")] + ".scale_weight"] = scaled_fp8(value)
            else:
                out[key] = to_fp8(value)
        else:
            out[key] = value.to(rest_dtype)
    if scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return out


def block_linear(key: str, value: torch.Tensor) -> bool:
    """Comfy-Org's fp8 DiT files: the blocks' 2-D linear weights."""
    return key.startswith("blocks.") and key.endswith(".weight") and value.dim() == 2


def kijai_fp8(key: str, value: torch.Tensor) -> bool:
    """kijai's fp8 DiT files: every tensor whose name has none of his `params_to_keep` words."""
    return not any(word in key for word in KIJAI_KEEP)


def expected_weights(file_state: dict, dtype: torch.dtype) -> dict:
    """What a loader must make of a written file: fp8 * scale (fp32 maths) in `dtype`, fp8 cast, others as is."""
    out = {}
    for key, value in file_state.items():
        if key == "scaled_fp8" or key.endswith(".scale_weight"):
            continue
        scale = file_state.get(key[: -len(".weight")] + ".scale_weight")
        if scale is not None:
            out[key] = (value.float() * scale.float()).to(dtype)
        elif value.dtype == FP8:
            out[key] = value.to(dtype)
        else:
            out[key] = value
    return out


# ---- DiT ---------------------------------------------------------------------------------------------

def dit_file_state(transformer, variant: str) -> dict:
    """A diffusers Wan I2V transformer as one of the single files above (`comfy_bf16`, `kijai_fp8_scaled`, ...)."""
    original = {k: v.detach() for k, v in to_original_state_dict(transformer.state_dict()).items()}
    maker, kind = variant.split("_", 1)
    if kind in ("bf16", "fp16"):
        return {k: v.to(torch.bfloat16 if kind == "bf16" else torch.float16) for k, v in original.items()}
    chosen = block_linear if maker == "comfy" else kijai_fp8
    return with_fp8(original, chosen, scaled=kind == "fp8_scaled", rest_dtype=torch.bfloat16)


def dit_file_name(variant: str) -> str:
    maker, kind = variant.split("_", 1)
    return (COMFY_DIT if maker == "comfy" else KIJAI_DIT)[kind]


# ---- umT5 --------------------------------------------------------------------------------------------

def spiece_model(byte_fallback: bool = False, vocab_size: int = 40) -> bytes:
    """A small SentencePiece model with umT5's special ids (pad 0, eos 1, bos 2, unk 3), trained here."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPIECE_TEXT * 20), model_writer=out, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, byte_fallback=byte_fallback,
        hard_vocab_limit=False, minloglevel=2,
    )
    return out.getvalue()


_HF_TO_WAN = [(re.compile(p), r) for p, r in [
    (r"^shared\.weight$", "token_embedding.weight"),
    (r"^encoder\.final_layer_norm\.weight$", "norm.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$", r"blocks.\1.norm1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$",
     r"blocks.\1.pos_embedding.embedding.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight$", r"blocks.\1.norm2.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.weight$", r"blocks.\1.ffn.gate.0.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.weight$", r"blocks.\1.ffn.fc1.weight"),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.weight$", r"blocks.\1.ffn.fc2.weight"),
]]


def umt5_wan_key(key: str) -> str:
    for pattern, replacement in _HF_TO_WAN:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    raise KeyError(key)


def umt5_file_state(encoder, variant: str, spiece: bytes | None = None) -> dict:
    """A transformers `UMT5EncoderModel` as `comfy_fp16`, `comfy_fp8_scaled` or `kijai_bf16`."""
    state = {k: v.detach() for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    if variant == "kijai_bf16":
        return {umt5_wan_key(k): v.to(torch.bfloat16) for k, v in state.items()}
    if variant == "comfy_fp16":
        out = {k: v.to(torch.float16) for k, v in state.items()}
    else:
        linear = lambda k, v: k.startswith("encoder.block.") and "relative_attention_bias" not in k and v.dim() == 2  # noqa: E731
        out = with_fp8(state, linear, scaled=True, rest_dtype=torch.float16)
    if spiece is not None:
        out["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    return out


# ---- CLIP vision ---------------------------------------------------------------------------------------

def clip_file_state(model, layout: str) -> dict:
    """A transformers `CLIPVisionModelWithProjection` as `transformers` (ComfyUI), `open_clip` or `wan` (kijai), fp16."""
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    if layout == "transformers":
        return state
    emb, layer = "vision_model.embeddings.", "vision_model.encoder.layers."
    layers = sorted({int(k[len(layer):].split(".")[0]) for k in state if k.startswith(layer)})
    if layout == "open_clip":
        out = {"visual.class_embedding": state[f"{emb}class_embedding"], "visual.conv1.weight": state[f"{emb}patch_embedding.weight"],
               "visual.positional_embedding": state[f"{emb}position_embedding.weight"],
               "visual.proj": state["visual_projection.weight"].t().contiguous()}
        names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                 "self_attn.out_proj": "attn.out_proj"}
        norms = {"pre_layrnorm": "ln_pre", "post_layernorm": "ln_post"}
        block = "visual.transformer.resblocks."
    else:
        out = {"visual.cls_embedding": state[f"{emb}class_embedding"].reshape(1, 1, -1),
               "visual.patch_embedding.weight": state[f"{emb}patch_embedding.weight"],
               "visual.pos_embedding": state[f"{emb}position_embedding.weight"][None],
               "visual.head": state["visual_projection.weight"].t().contiguous()}
        names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2",
                 "self_attn.out_proj": "attn.proj"}
        norms = {"pre_layrnorm": "pre_norm", "post_layernorm": "post_norm"}
        block = "visual.transformer."
    for ours, theirs in norms.items():
        for p in ("weight", "bias"):
            out[f"visual.{theirs}.{p}"] = state[f"vision_model.{ours}.{p}"]
    for i in layers:
        src = f"{layer}{i}."
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"{block}{i}.{theirs}.{p}"] = state[f"{src}{ours}.{p}"]
        for p in ("weight", "bias"):
            qkv = torch.cat([state[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
            key = f"{block}{i}.attn.in_proj_{p}" if layout == "open_clip" else f"{block}{i}.attn.to_qkv.{p}"
            out[key] = qkv
    return out


# ---- VAE ---------------------------------------------------------------------------------------------

_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
             "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}


def _residual(rest: str) -> str:
    return next((rest.replace(ours, theirs, 1) for ours, theirs in _RESIDUAL.items() if rest.startswith(ours)), rest)


def vae_original_key(key: str) -> str:
    """A diffusers `AutoencoderKLWan` key -> the original Wan VAE name (the inverse of diffusers' converter)."""
    fixed = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.", "encoder.conv_in.": "encoder.conv1.",
             "decoder.conv_in.": "decoder.conv1.", "encoder.norm_out.": "encoder.head.0.",
             "decoder.norm_out.": "decoder.head.0.", "encoder.conv_out.": "encoder.head.2.",
             "decoder.conv_out.": "decoder.head.2."}
    for ours, theirs in fixed.items():
        if key.startswith(ours):
            return theirs + key[len(ours):]
    if m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)$", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_residual(m[3])}"
    if m := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", key):
        return f"{m[1]}.middle.1.{m[2]}"
    if m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key):
        return f"encoder.downsamples.{m[1]}.{_residual(m[2])}"
    if m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_residual(m[3])}"
    if m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$", key):
        return f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}"
    raise KeyError(key)


def vae_file_state(vae, dtype: torch.dtype) -> dict:
    return {vae_original_key(k): v.detach().to(dtype) for k, v in vae.state_dict().items()}


# ---- files and folders ---------------------------------------------------------------------------------

def save(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# ---- real widths, reduced depth ----------------------------------------------------------------------------

def write_real_width_dit(path: Path, variant: str, blocks: int = 1, seed: int = 0) -> dict:
    """The Wan2.1-I2V-14B DiT at its real widths with `blocks` blocks, as `variant`'s single file; returns the
    file's tensors (random values, written one dtype conversion at a time)."""
    from tools.real_layout import RandomPool, _meta_state, dit_config

    maker, kind = variant.split("_", 1)
    pool = RandomPool(seed)
    state = {}
    for name, shape in _meta_state(dit_config(blocks)).items():
        value = pool.weights(name, tuple(shape), torch.float16 if kind == "fp16" else torch.bfloat16)
        chosen = (block_linear if maker == "comfy" else kijai_fp8)(name, value) and kind.startswith("fp8")
        if chosen and kind == "fp8_scaled":
            state[name], state[name[: -len(".weight")] + ".scale_weight"] = scaled_fp8(value)
        else:
            state[name] = to_fp8(value) if chosen else value
    if kind == "fp8_scaled":
        state["scaled_fp8"] = torch.empty(0, dtype=FP8)
    save(state, path)
    return state


def write_real_width_umt5(path: Path, variant: str, layers: int = 1, vocab: int = 4096, spiece: bytes | None = None,
                          seed: int = 1) -> dict:
    """umT5-XXL at its real widths (d_model 4096, 64 heads, d_ff 10240) with `layers` layers and a cut vocabulary."""
    from transformers import UMT5Config, UMT5EncoderModel

    from tools.real_layout import UMT5_XXL, random_model

    config = UMT5Config(**dict(UMT5_XXL, num_layers=layers, vocab_size=vocab))
    state = umt5_file_state(random_model(lambda: UMT5EncoderModel(config), seed), variant, spiece)
    save(state, path)
    return state


def write_real_width_clip(path: Path, layout: str, layers: int = 2, seed: int = 2) -> dict:
    """CLIP ViT-H/14 (width 1280, 16 heads, 224 px) with `layers` of its 32 layers, fp16."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from tools.real_layout import CLIP_VIT_H14, random_model

    config = CLIPVisionConfig(**dict(CLIP_VIT_H14, num_hidden_layers=layers))
    state = clip_file_state(random_model(lambda: CLIPVisionModelWithProjection(config), seed), layout)
    save(state, path)
    return state


def write_real_vae(path: Path, dtype: torch.dtype, seed: int = 3) -> dict:
    """The Wan2.1 VAE (diffusers' default configuration) in the original key names."""
    from diffusers import AutoencoderKLWan

    from tools.real_layout import random_model

    state = vae_file_state(random_model(AutoencoderKLWan, seed), dtype)
    save(state, path)
    return state
