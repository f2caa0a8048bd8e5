"""Real weights: where they live on disk, and loading the `real` preset from them.

Layout under the weights directory (default `weights/`, or `$FANTASY_WEIGHTS`):

    Wan2.1-I2V-14B-720P-Diffusers/   diffusers layout (model_index.json, transformer/, vae/, ...)
    wav2vec2-base-960h/              config.json, preprocessor_config.json, model weights
    fantasytalking_model.safetensors converted adapter (or the released fantasytalking_model.ckpt)

Nothing here downloads at run time: a missing file raises `WeightsMissing` naming the file, the
Hugging Face repo it comes from and the command that fetches it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fantasy.adapter_weights import OFFICIAL_FILE, OFFICIAL_REPO, load_adapter_weights
from fantasy.errors import FantasyError, WeightsMissing

WAN_REPO = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
WAV2VEC_REPO = "facebook/wav2vec2-base-960h"
ADAPTER_SAFETENSORS = "fantasytalking_model.safetensors"


def weights_dir(path: str | Path | None = None) -> Path:
    if path is not None:
        return Path(path)
    return Path(os.environ.get("FANTASY_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))


def _require(path: Path, repo: str, root: Path) -> Path:
    if not path.exists():
        raise WeightsMissing(
            f"Missing weight file {path} (from the Hugging Face repo '{repo}'). "
            f"Fetch the real preset's weights with: python -m fantasy download --dir {root}"
        )
    return path


def adapter_file(root: Path) -> Path:
    """Prefer the converted safetensors; fall back to the released pickle."""
    for name in (ADAPTER_SAFETENSORS, OFFICIAL_FILE):
        if (root / name).is_file():
            return root / name
    return _require(root / ADAPTER_SAFETENSORS, OFFICIAL_REPO, root)


def check_real_weights(root: Path) -> dict[str, Path]:
    """Paths of everything the real preset reads, or `WeightsMissing` for the first one absent."""
    wan = root / WAN_REPO.split("/")[1]
    for sub in ("model_index.json", "transformer/config.json", "vae/config.json", "text_encoder/config.json",
                "tokenizer", "image_encoder/config.json"):
        _require(wan / sub, WAN_REPO, root)
    wav2vec = root / WAV2VEC_REPO.split("/")[1]
    for sub in ("config.json", "preprocessor_config.json"):
        _require(wav2vec / sub, WAV2VEC_REPO, root)
    return {"wan": wan, "wav2vec": wav2vec, "adapter": adapter_file(root)}


def load_real_pipeline(
    device: str | None = None, adapter: str | Path | None = None, weights: str | Path | None = None,
    dtype: torch.dtype = torch.bfloat16,
):
    """The 14B pipeline in bf16 with the FantasyTalking adapter (VAE and encoders of audio in fp32)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionModel,
        UMT5EncoderModel,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    from fantasy.adapter import AudioProjModel
    from fantasy.presets import assemble
    from fantasy.sampling import make_scheduler

    if device is None:
        if not torch.cuda.is_available():
            raise FantasyError("The real preset needs a CUDA GPU; on this machine use --preset tiny.")
        device = "cuda"
    root = weights_dir(weights)
    paths = check_real_weights(root)
    wan, wav2vec = paths["wan"], paths["wav2vec"]
    components = {
        "tokenizer": AutoTokenizer.from_pretrained(wan / "tokenizer"),
        "text_encoder": UMT5EncoderModel.from_pretrained(wan / "text_encoder", dtype=dtype),
        "vae": AutoencoderKLWan.from_pretrained(wan / "vae", dtype=torch.float32),
        "scheduler": make_scheduler(),
        "image_encoder": CLIPVisionModel.from_pretrained(wan / "image_encoder", dtype=torch.float32),
        "image_processor": CLIPImageProcessor.from_pretrained(wan / "image_processor")
        if (wan / "image_processor").exists() else None,
        "transformer": WanTransformer3DModel.from_pretrained(wan / "transformer", dtype=dtype),
        "audio_encoder": Wav2Vec2Model.from_pretrained(wav2vec, dtype=torch.float32),
        "feature_extractor": Wav2Vec2FeatureExtractor.from_pretrained(wav2vec),
        "audio_proj": AudioProjModel(audio_dim=768, context_dim=2048),
    }
    pipe = assemble(components, "cpu")
    load_adapter_weights(pipe.transformer, pipe.audio_proj, adapter or paths["adapter"])
    return pipe.to(device)
