"""A complete `weights/` directory in the real layout, filled with tiny models (no download).

Every file the real preset reads is there under its real name: the diffusers-layout Wan folder
(tokenizer, umT5, CLIP + processor, VAE, transformer config), the DiT as a GGUF and as a bf16 safetensors,
both with the *original* Wan key names, wav2vec2, and the converted adapter.

The GGUF carries city96's tensor types key by key (`tools.real_layout.city96_type`, from
reference/turn2-findings.md §4): 2-D weights Q8_0, `time_embedding.*` weights F16, 1-D tensors,
`*.modulation` and the 5-D patch embedding F32, so the loader meets every type the real file holds. The DiT
and its CLIP are a little wider than the tiny preset's (inner and image dims 32, not 24 and 16): every 2-D
weight then splits into whole 32-value Q8_0 blocks, as the real 5120/1280/256-wide ones do.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, Wav2Vec2FeatureExtractor

from fantasy.weights import tiny
from fantasy.weights.adapter_weights import expected_keys, storage_dtype
from fantasy.weights.real import ADAPTER_SAFETENSORS, DIT_FILES, WAN_PART, WAV2VEC_PART
from fantasy.weights.wan_keys import to_original_state_dict
from tools.real_layout import city96_type

HEADS, HEAD_DIM = 2, 16  # inner dim 32: rows of 32 values, one Q8_0 block each
INNER = HEADS * HEAD_DIM
IMAGE_DIM = 32  # the CLIP's hidden size: the image projection's rows are Q8_0 too (1280 in the real file)
Q8_0 = gguf.GGMLQuantizationType.Q8_0
F16 = gguf.GGMLQuantizationType.F16


def gguf_transformer(seed: int = 0) -> WanTransformer3DModel:
    """The tiny I2V transformer, widened so Q8_0 applies to its attention and FFN weights."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=36,
        out_channels=16, text_dim=tiny.TEXT_DIM, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=IMAGE_DIM, added_kv_proj_dim=INNER,
        rope_max_seq_len=1024,
    ).eval()


def write_gguf(state: dict[str, torch.Tensor], path: Path) -> dict[str, str]:
    """Write a state dict (original Wan names) as GGUF with gguf-py, each tensor as city96's file stores it;
    returns name -> GGML type name. A tensor whose shape cannot take its real type is refused, not stored
    otherwise: the fake must hold what the real file holds."""
    writer = gguf.GGUFWriter(str(path), arch="wan")
    types = {}
    for name, tensor in state.items():
        array = tensor.detach().float().numpy()
        kind = city96_type(name, array.shape)
        if kind == Q8_0:
            if array.shape[-1] % gguf.GGML_QUANT_SIZES[Q8_0][0]:
                raise ValueError(f"{name} {array.shape}: rows must split into 32-value Q8_0 blocks")
            writer.add_tensor(name, gguf.quants.quantize(array, Q8_0), raw_dtype=Q8_0)
        else:
            writer.add_tensor(name, array.astype(np.float16 if kind == F16 else np.float32))
        types[name] = kind.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return types


def adapter_state(num_blocks: int, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"audio_proj.proj.weight": (tiny.CONTEXT_DIM, tiny.AUDIO_DIM), "audio_proj.norm.weight": (tiny.CONTEXT_DIM,),
              "audio_proj.norm.bias": (tiny.CONTEXT_DIM,)}
    for key in expected_keys(num_blocks)[3:]:
        shapes[key] = (INNER, tiny.CONTEXT_DIM)
    # As `convert_checkpoint` writes them: K/V in bf16, the projection in fp32.
    return {k: (torch.randn(s, generator=gen) * 0.3).to(storage_dtype(k, torch.bfloat16)) for k, s in shapes.items()}


def build_weights_dir(root: Path, with_gguf: bool = True, with_bf16: bool = True) -> dict:
    """Write the tiny real-layout weights under `root`; return the reference transformer and counts."""
    root.mkdir(parents=True, exist_ok=True)
    wan = root / WAN_PART.folder
    tiny.tiny_tokenizer().save_pretrained(wan / "tokenizer")
    (wan / "tokenizer" / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tiny.tiny_text_encoder().save_pretrained(wan / "text_encoder")
    tiny.tiny_image_encoder(hidden_size=IMAGE_DIM).save_pretrained(wan / "image_encoder")
    CLIPImageProcessor(crop_size=tiny.CLIP_IMAGE, size=tiny.CLIP_IMAGE).save_pretrained(wan / "image_processor")
    tiny.tiny_vae().save_pretrained(wan / "vae")
    reference = gguf_transformer()
    reference.save_config(wan / "transformer")
    original = to_original_state_dict(reference.state_dict())
    info = {"reference": reference, "quantized": 0, "gguf_types": {}}
    if with_gguf:
        part = DIT_FILES["q8_0"]
        (root / part.folder).mkdir(parents=True, exist_ok=True)
        info["gguf_types"] = write_gguf(original, root / part.folder / part.required[0])
        info["quantized"] = sum(kind == "Q8_0" for kind in info["gguf_types"].values())
    if with_bf16:
        part = DIT_FILES["bf16"]
        target = root / part.folder / part.required[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in original.items()}, str(target))
    speech = root / WAV2VEC_PART.folder
    tiny.tiny_speech_encoder().save_pretrained(speech)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(speech)
    info["adapter"] = adapter_state(reference.config.num_layers)
    save_file(info["adapter"], str(root / ADAPTER_SAFETENSORS))
    return info
