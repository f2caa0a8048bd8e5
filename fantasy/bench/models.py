"""What the GPU benchmarks build with random weights: the Wan2.1-I2V-14B DiT, the encoders and the VAE.

Random weights time and weigh the same as trained ones (same shapes, same kernels), so nothing is
downloaded. `FULL` is the real model's configuration, `TINY` a small one that runs the same code on
a CPU (the benchmarks' `--tiny` dry runs, used by CI).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fantasy.model.adapter import AudioContext, install_audio_adapter
from fantasy.model.precision import DEFAULT_PRECISION, apply_precision
from fantasy.model.windows import split_into_windows

FULL = {
    "config": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36,
                   out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=5120,
                   rope_max_seq_len=1024),
    "image_tokens": 257, "context_dim": 2048, "frames": 81, "size": 512, "text_tokens": 512,
    "sizes": [(512, 512), (832, 480)],  # (width, height)
}
TINY = {
    "config": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=36,
                   out_channels=16, text_dim=256, freq_dim=256, ffn_dim=512, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=256, added_kv_proj_dim=256,
                   rope_max_seq_len=1024),
    "image_tokens": 17, "context_dim": 64, "frames": 9, "size": 64, "text_tokens": 32,  # our attn2 splits by CLIP count
    "sizes": [(64, 64), (96, 64)],
}
FPS = 23
GiB = 1024**3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_gib(device: torch.device, peak: bool) -> float | None:
    """Allocated (or peak allocated) GPU memory; None on a CPU."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / GiB


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def built_on(device: torch.device, dtype: torch.dtype, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` with its parameters created directly on `device` in `dtype` (no host copy of 30 GB)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return build().eval()
    finally:
        torch.set_default_dtype(previous)


def build_random_bf16(config: dict, device: torch.device, dtype: torch.dtype):
    """The transformer with random weights created on `device` (fp32 for the modules diffusers keeps fp32)."""
    from diffusers import WanTransformer3DModel

    model = built_on(device, dtype, lambda: WanTransformer3DModel(**config))
    keep = set(model._keep_in_fp32_modules or [])
    for name, module in model.named_modules():
        if keep & set(name.split(".")):
            module.to(torch.float32)
    return model


def build_dit(spec: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, AudioContext]:
    """Random DiT with the audio adapter installed (zero K/V: same kernels as trained ones), all on `device`."""
    model = build_random_bf16(spec["config"], device, dtype)
    audio = install_audio_adapter(model, spec["context_dim"], spec["image_tokens"])
    for block in model.blocks:
        block.attn2.processor.to(device=device, dtype=dtype)
    apply_precision(model, DEFAULT_PRECISION, dtype)  # as `fantasy.model.assemble.assemble` leaves every pipeline's DiT
    return model, audio


def dit_inputs(spec: dict, device: torch.device, dtype: torch.dtype, width: int | None = None,
               height: int | None = None, frames: int | None = None) -> dict:
    """Random DiT inputs for one clip: latents + condition, prompt/negative embeddings, CLIP tokens, audio windows."""
    config = spec["config"]
    frames = frames or spec["frames"]
    width, height = width or spec["size"], height or spec["size"]
    latent_frames = (frames - 1) // 4 + 1
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    audio_tokens = round(frames / FPS * 50)
    windows, lengths = split_into_windows(torch.randn(1, audio_tokens, spec["context_dim"], generator=gen), frames)
    return {
        "latents": rand(1, config["in_channels"], latent_frames, height // 8, width // 8),
        "text": rand(1, spec["text_tokens"], config["text_dim"]),
        "negative": rand(1, spec["text_tokens"], config["text_dim"]),
        "image": rand(1, spec["image_tokens"], config["image_dim"]),
        "windows": windows.to(device, dtype), "lengths": lengths.to(device),
        "timestep": torch.tensor([500.0], device=device),
    }


# ---- encoders and VAE ------------------------------------------------------------------------------


def full_encoders() -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders for the real preset's other models: umT5-XXL encoder, CLIP ViT-H/14, wav2vec2-base, Wan VAE."""
    from diffusers import AutoencoderKLWan
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        UMT5Config,
        UMT5EncoderModel,
        Wav2Vec2Config,
        Wav2Vec2Model,
    )

    from fantasy.model.adapter import AudioProjModel

    umt5_xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                          relative_attention_num_buckets=32, relative_attention_max_distance=128,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    vit_h14 = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024)
    return {
        "text_encoder": lambda: UMT5EncoderModel(umt5_xxl),
        "image_encoder": lambda: CLIPVisionModel(vit_h14),
        "audio_encoder": lambda: Wav2Vec2Model(Wav2Vec2Config()),  # the base configuration
        "audio_proj": lambda: AudioProjModel(audio_dim=768, context_dim=2048),
        "vae": lambda: AutoencoderKLWan(),  # the defaults are Wan2.1's VAE
    }


def tiny_encoders() -> dict[str, Callable[[], torch.nn.Module]]:
    from fantasy.model.adapter import AudioProjModel
    from fantasy.weights import tiny

    return {
        "text_encoder": tiny.tiny_text_encoder, "image_encoder": tiny.tiny_image_encoder,
        "audio_encoder": tiny.tiny_speech_encoder,
        "audio_proj": lambda: AudioProjModel(audio_dim=tiny.AUDIO_DIM, context_dim=tiny.CONTEXT_DIM),
        "vae": tiny.tiny_vae,
    }


# The real preset's dtypes: umT5 in the compute dtype, the rest in fp32.
ENCODER_DTYPES = {"text_encoder": None, "image_encoder": torch.float32, "audio_encoder": torch.float32,
                  "audio_proj": torch.float32, "vae": torch.float32}
