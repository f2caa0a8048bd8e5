"""The `demo` preset: a small model of the real preset's family, trained on a CPU by `fantasy train`.

Same classes as the real preset (diffusers `AutoencoderKLWan` + `WanTransformer3DModel` with the audio
adapter and the motion module, a `Wav2Vec2Model` speech encoder), small configs: a VAE of base width 12,
a DiT of width 128 x 4 blocks, a speech encoder of width 64 pre-trained on espeak-ng's visemes. umT5 and
CLIP are the tiny preset's fixed random models (the prompt is fixed; the face comes through the I2V
condition latent). A model folder holds one file per trained part:

  vae.safetensors     the VAE (its latent mean/std in the file's metadata)
  speech.safetensors  the speech encoder (wav2vec2)
  dit.safetensors     the transformer with its audio adapter and motion module, plus `audio_proj.*`

`fantasy train --preset demo --part vae|speech|dit --out DIR` writes them; `load_demo_pipeline(DIR)`
reads them. Lookup order for the shipped model: `FANTASY_DEMO_WEIGHTS`, the package's own
`fantasy/_demo_weights/` (an installed wheel), then the checkout's `weights/demo/`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from fantasy.errors import CheckpointMismatch, WeightsMissing
from fantasy.model.adapter import AudioProjModel
from fantasy.model.motion import MotionIntensityModel, install_motion_module

PARTS = ("vae", "speech", "dit")
DEMO_ENV = "FANTASY_DEMO_WEIGHTS"
SIZE = 128  # the demo's frames are 128 x 128 face crops
AUDIO_DIM = 64
CONTEXT_DIM = 64
DIT_HEADS, DIT_HEAD_DIM, DIT_LAYERS, DIT_FFN = 4, 32, 4, 512
MOTION_HIDDEN = 256


def demo_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(base_dim=12, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=[0.0] * 16, latents_std=[1.0] * 16)


def demo_speech_encoder() -> Wav2Vec2Model:
    """Real conv strides (320 samples per token, 50 Hz); 2 transformer layers of width 64."""
    config = Wav2Vec2Config(
        hidden_size=AUDIO_DIM, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=(32,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
        do_stable_layer_norm=False, vocab_size=32, mask_time_prob=0.0, layerdrop=0.0,
    )
    return Wav2Vec2Model(config)


def demo_transformer() -> WanTransformer3DModel:
    from fantasy.weights.tiny import CLIP_HIDDEN, TEXT_DIM

    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=DIT_HEADS, attention_head_dim=DIT_HEAD_DIM, in_channels=36,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=DIT_FFN, num_layers=DIT_LAYERS,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=CLIP_HIDDEN,
        added_kv_proj_dim=DIT_HEADS * DIT_HEAD_DIM, rope_max_seq_len=1024,
    )


def demo_components(seed: int = 0) -> dict:
    """Pipeline components with the demo's shapes, randomly initialised (seeded); `load_part` fills them."""
    from fantasy.model.clip_processor import clip_image_processor_class
    from fantasy.model.sampling import make_scheduler
    from fantasy.weights.tiny import (
        CLIP_IMAGE,
        _seeded,
        tiny_image_encoder,
        tiny_text_encoder,
        tiny_tokenizer,
    )

    return {
        "tokenizer": tiny_tokenizer(),
        "text_encoder": _seeded(seed + 1, tiny_text_encoder),
        "vae": _seeded(seed + 2, demo_vae).eval(),
        "scheduler": make_scheduler(),
        "image_encoder": _seeded(seed + 3, tiny_image_encoder),
        "image_processor": clip_image_processor_class()(crop_size=CLIP_IMAGE, size=CLIP_IMAGE),
        "transformer": _seeded(seed + 4, demo_transformer).eval(),
        "audio_encoder": _seeded(seed + 5, demo_speech_encoder).eval(),
        "feature_extractor": Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                                      do_normalize=True, return_attention_mask=False),
        "audio_proj": _seeded(seed + 6, lambda: AudioProjModel(audio_dim=AUDIO_DIM, context_dim=CONTEXT_DIM)),
    }


def install_demo_motion(pipe) -> None:
    """The demo's motion module (hidden width 256 instead of 1024: most of a small DiT otherwise)."""
    if pipe.motion_context is None:
        inner = DIT_HEADS * DIT_HEAD_DIM
        pipe.motion_context = install_motion_module(pipe.transformer, MotionIntensityModel(inner, MOTION_HIDDEN))


def part_tensors(pipe, part: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What `part`'s file holds: (tensors, metadata)."""
    if part == "vae":
        config = pipe.vae.config
        meta = {"latents_mean": json.dumps(list(config.latents_mean)), "latents_std": json.dumps(list(config.latents_std))}
        return dict(pipe.vae.state_dict()), meta
    if part == "speech":
        return dict(pipe.audio_encoder.state_dict()), {}
    if part == "dit":
        state = dict(pipe.transformer.state_dict())
        state |= {f"audio_proj.{k}": v for k, v in pipe.audio_proj.state_dict().items()}
        return state, {}
    raise ValueError(f"unknown demo part '{part}'; choose one of {', '.join(PARTS)}")


def save_part(pipe, part: str, path: str | Path) -> Path:
    """Write one part's weights (fp32) atomically."""
    tensors, meta = part_tensors(pipe, part)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    save_file(tensors, str(tmp), metadata={"format": "fantasy-demo-v1", "part": part, **meta})
    os.replace(tmp, path)
    return path


def load_part(pipe, part: str, path: str | Path) -> None:
    """Load one part's file into `pipe` (every key and shape must match: a foreign file is an error)."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if meta.get("part") != part:
        raise CheckpointMismatch(f"{path} is not a demo '{part}' file (it says {meta.get('part')!r})")
    if part == "dit":
        install_demo_motion(pipe)
        proj = {k.removeprefix("audio_proj."): v for k, v in tensors.items() if k.startswith("audio_proj.")}
        _load_strict(pipe.audio_proj, proj, path)
        _load_strict(pipe.transformer, {k: v for k, v in tensors.items() if not k.startswith("audio_proj.")}, path)
    elif part == "vae":
        _load_strict(pipe.vae, tensors, path)
        pipe.vae.register_to_config(latents_mean=json.loads(meta["latents_mean"]),
                                    latents_std=json.loads(meta["latents_std"]))
    else:
        _load_strict(pipe.audio_encoder, tensors, path)


def _load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        raise CheckpointMismatch(
            f"{path.name} does not fit the demo model: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} "
            f"unexpected (e.g. {extra[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})"
        )
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value.to(own[key].dtype))


def demo_weights_dir() -> Path:
    """Where the shipped demo model is: $FANTASY_DEMO_WEIGHTS, the wheel's package data, the checkout's weights/demo."""
    if os.environ.get(DEMO_ENV):
        return Path(os.environ[DEMO_ENV])
    from fantasy.weights.real import weights_dir

    packaged = Path(str(resources.files("fantasy") / "_demo_weights"))
    return packaged if packaged.is_dir() else weights_dir() / "demo"


def load_demo_pipeline(folder: str | Path | None = None, device: str | None = None, need: tuple[str, ...] = PARTS):
    """The demo pipeline with the parts in `folder` loaded; a part named in `need` but absent is an error."""
    from fantasy.model.assemble import assemble

    folder = Path(folder) if folder is not None else demo_weights_dir()
    pipe = assemble(demo_components(), device or "cpu")
    missing = [part for part in need if not (folder / f"{part}.safetensors").is_file()]
    if missing:
        raise WeightsMissing(
            f"The demo model in {folder} lacks {', '.join(p + '.safetensors' for p in missing)}; train it with "
            f"`python -m fantasy train --preset demo --part {missing[0]} --out {folder} ...` (docs/demo-model.md)."
        )
    for part in PARTS:
        if (folder / f"{part}.safetensors").is_file():
            load_part(pipe, part, folder / f"{part}.safetensors")
    return pipe
