"""A complete `weights/` directory in the real layout, filled with tiny models (no download).

Every file the real preset reads is there under its real name: the diffusers-layout Wan folder
(tokenizer, umT5, CLIP + processor, VAE, transformer config), the DiT as a GGUF (Q8_0 where a row
splits into 32-value blocks, F32 elsewhere) and as a bf16 safetensors, both with the *original* Wan key
names, wav2vec2, and the converted adapter. The DiT is a little wider than `tiny_transformer()`
(inner dim 32 instead of 24) so most of its linear weights really are quantized.
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

HEADS, HEAD_DIM = 2, 16  # inner dim 32: rows of 32 values, one Q8_0 block each
INNER = HEADS * HEAD_DIM
Q8_0 = gguf.GGMLQuantizationType.Q8_0


def gguf_transformer(seed: int = 0) -> WanTransformer3DModel:
    """The tiny I2V transformer, widened so Q8_0 applies to its attention and FFN weights."""
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=36,
        out_channels=16, text_dim=tiny.TEXT_DIM, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=tiny.CLIP_HIDDEN, added_kv_proj_dim=INNER,
        rope_max_seq_len=1024,
    ).eval()


def quantizable(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q8_0][0] == 0


def write_gguf(state: dict[str, torch.Tensor], path: Path) -> int:
    """Write a state dict (original Wan names) as GGUF with gguf-py; returns how many tensors are Q8_0."""
    writer = gguf.GGUFWriter(str(path), arch="wan")
    quantized = 0
    for name, tensor in state.items():
        array = tensor.detach().float().numpy()
        if quantizable(array):
            writer.add_tensor(name, gguf.quants.quantize(array, Q8_0), raw_dtype=Q8_0)
            quantized += 1
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized


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
    tiny.tiny_image_encoder().save_pretrained(wan / "image_encoder")
    CLIPImageProcessor(crop_size=tiny.CLIP_IMAGE, size=tiny.CLIP_IMAGE).save_pretrained(wan / "image_processor")
    tiny.tiny_vae().save_pretrained(wan / "vae")
    reference = gguf_transformer()
    reference.save_config(wan / "transformer")
    original = to_original_state_dict(reference.state_dict())
    info = {"reference": reference, "quantized": 0}
    if with_gguf:
        part = DIT_FILES["q8_0"]
        (root / part.folder).mkdir(parents=True, exist_ok=True)
        info["quantized"] = write_gguf(original, root / part.folder / part.required[0])
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
