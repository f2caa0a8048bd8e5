"""The `tiny` preset: every component of the real pipeline, built from small configs with random weights.

Nothing is downloaded. It runs the exact code path of the 14B model (umT5, CLIP, Wan VAE, Wan I2V
transformer with the image K/V branch, wav2vec2 with the real conv strides, the audio adapter) in
seconds on a CPU. Its output is noise: this is for demos of the plumbing, tests and CI.
Weights are seeded per component, so the same seed always builds the same model.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from fantasy.model.adapter import AudioProjModel
from fantasy.model.clip_processor import clip_image_processor_class
from fantasy.model.sampling import make_scheduler

TEXT_DIM = 32
AUDIO_DIM = 32  # tiny wav2vec2 hidden size (768 on the real model)
CONTEXT_DIM = 16  # audio projection output (2048 on the real model)
HEADS, HEAD_DIM = 2, 12  # transformer inner dim 24 (5120 on the real model)
CLIP_HIDDEN, CLIP_IMAGE, CLIP_PATCH = 16, 32, 8  # (32/8)^2 + 1 = 17 image tokens (257 on the real model)

_WORDS = ["a", "the", "person", "man", "woman", "is", "are", "talking", "speaking", "smiling", "looking", "at", "camera", "with", "and", "of", "in", "on", "head", "hands", "moving", "body", "still", "motionless", "enthusiastically", "calmly", "slowly", "quickly", "his", "her", "their", "face", "mouth", "eyes", "background", "light", "bright", "dark", "video", "portrait", "young", "old", "happy", "sad", "nods", "turns", "gestures"]


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM, in_channels=36,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=CLIP_HIDDEN, added_kv_proj_dim=HEADS * HEAD_DIM,
        rope_max_seq_len=1024,
    ).eval()


def tiny_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()


def tiny_text_encoder() -> UMT5EncoderModel:
    config = UMT5Config(vocab_size=len(_WORDS) + 3, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    return UMT5EncoderModel(config).eval()


def tiny_image_encoder(hidden_size: int = CLIP_HIDDEN) -> CLIPVisionModel:
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, image_size=CLIP_IMAGE, patch_size=CLIP_PATCH)
    return CLIPVisionModel(config).eval()


def tiny_speech_encoder() -> Wav2Vec2Model:
    """Real conv kernels and strides (320 samples per token, 50 Hz), tiny widths and depth."""
    config = Wav2Vec2Config(
        hidden_size=AUDIO_DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group",
        do_stable_layer_norm=False, vocab_size=32,
    )
    return Wav2Vec2Model(config).eval()


def tiny_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Keyword arguments for `FantasyTalkingPipeline`, every model seeded on its own.

    `dtype`: the DiT's and umT5's compute dtype, as the real preset's `dtype` (bf16 there): the DiT is
    cast with diffusers' fp32 modules (time embedder, modulation tables, norms) kept in fp32, as
    `from_pretrained` and the single-file loader leave them. The same seed gives the same values.
    """
    from fantasy.weights.quantize import keep_fp32_modules_in_fp32

    transformer = _seeded(seed + 4, tiny_transformer)
    if dtype != torch.float32:
        keep_fp32_modules_in_fp32(transformer.to(dtype))
    return {
        "tokenizer": tiny_tokenizer(),
        "text_encoder": _seeded(seed + 1, tiny_text_encoder).to(dtype),
        "vae": _seeded(seed + 2, tiny_vae),
        "scheduler": make_scheduler(),
        "image_encoder": _seeded(seed + 3, tiny_image_encoder),
        "image_processor": clip_image_processor_class()(crop_size=CLIP_IMAGE, size=CLIP_IMAGE),
        "transformer": transformer,
        "audio_encoder": _seeded(seed + 5, tiny_speech_encoder),
        "feature_extractor": Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=False),
        "audio_proj": _seeded(seed + 6, lambda: AudioProjModel(audio_dim=AUDIO_DIM, context_dim=CONTEXT_DIM)),
    }


def random_adapter_weights(pipe, seed: int = 7, std: float = 0.5) -> None:
    """Give the zero-initialised audio K/V random values, so the tiny demo's output depends on the speech."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in pipe.transformer.blocks:
            for linear in (block.attn2.processor.k_proj, block.attn2.processor.v_proj):
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * std)
