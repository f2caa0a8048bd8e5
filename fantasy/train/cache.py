"""Encode every training clip once with the frozen pipeline and keep the features on disk.

The trainer then never runs the VAE encoder, umT5, CLIP or wav2vec2, and never decodes a video.
One safetensors file per clip, `CACHE_DIR/NAME.safetensors` (default `DATA_DIR/.cache/`):

tensors (features in the storage dtype, default float32; the rest float32)
  latents           [16, T_lat, H/8, W/8]   VAE latents of the frames, latent_dist.mode(), (z - mean) / std
  condition         [20, T_lat, H/8, W/8]   Wan I2V condition: 4 mask channels + latents of frame 0 + zeros
  prompt_embeds     [512, D_text]           umT5 embeddings of the clip's prompt (zero past its tokens)
  clip_tokens       [N, D_clip]             CLIP penultimate tokens of frame 0 (squashed, as at inference)
  face_clip_tokens  [N, D_clip]             the same for a square face crop of frame 0 (identity module)
  audio_features    [L, D_audio]            wav2vec2 last_hidden_state, 50 Hz, before the audio projection
  lip_mask          [T_lat, H/16, W/16]     lip-tracing mask on the DiT token grid (0/1)
  landmarks         [F, 68, 2]              sample-pixel landmarks (x, y)
  motion_scores     [2]                     raw (expression, body) scores, see `fantasy.train.labels`
metadata (strings): format, name, prompt, fps, num_frames, width, height, fingerprint, source, filled_frames.

Dataset-wide, `_dataset.safetensors` holds `empty_prompt_embeds` and `negative_prompt_embeds`
[512, D_text] (for text-condition dropout) and, in its metadata, the clip names of the last caching
run and their common fingerprint. A clip whose fingerprint or source signature differs from the
current one is encoded again (see `fantasy.train.fingerprint`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fantasy.errors import TrainingDataError
from fantasy.face import FaceBox
from fantasy.media.audio import speech_features
from fantasy.model.identity import face_crop
from fantasy.model.pipeline import DEFAULT_NEGATIVE_PROMPT
from fantasy.train.clips import SampleSpec, TrainingSample, discover_clips, load_sample
from fantasy.train.fingerprint import CACHE_FORMAT, TEXT_LENGTH, cache_fingerprint, source_signature
from fantasy.train.labels import body_score, expression_score, lip_token_mask
from fantasy.train.tracks import BackendLandmarks, ProviderFactory, provider_fingerprint

CACHE_DIRNAME = ".cache"
DATASET_FILE = "_dataset.safetensors"
FEATURES = ("latents", "condition", "prompt_embeds", "clip_tokens", "face_clip_tokens", "audio_features")
EXTRAS = ("lip_mask", "landmarks", "motion_scores")

# (clips done, clips in total, clip name, "encoded" | "reused")
CacheProgress = Callable[[int, int, str, str], None]


@dataclass(frozen=True)
class CachedClip:
    """One clip's cached features and metadata (tensors on the CPU, shapes in the module docstring)."""

    name: str
    prompt: str
    fps: float
    num_frames: int
    width: int
    height: int
    latents: torch.Tensor
    condition: torch.Tensor
    prompt_embeds: torch.Tensor
    clip_tokens: torch.Tensor
    face_clip_tokens: torch.Tensor
    audio_features: torch.Tensor
    lip_mask: torch.Tensor
    landmarks: torch.Tensor
    motion_scores: torch.Tensor
    fingerprint: str = ""
    source: str = ""
    filled_frames: int = 0

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in FEATURES + EXTRAS}

    def metadata(self) -> dict[str, str]:
        tensor_names = set(FEATURES + EXTRAS)
        meta = {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name not in tensor_names}
        return meta | {"format": str(CACHE_FORMAT)}

    def save(self, path: str | Path) -> Path:
        """Write atomically: an interrupted run never leaves a truncated file that looks cached."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        tensors = {k: v.detach().clone().contiguous() for k, v in self.tensors().items()}  # no shared storage
        save_file(tensors, str(tmp), metadata=self.metadata())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CachedClip:
        path = Path(path)
        meta = read_metadata(path)
        with safe_open(str(path), framework="pt") as f:
            missing = set(FEATURES + EXTRAS) - set(f.keys())
            if missing:
                raise TrainingDataError(f"Cached clip '{path}' lacks {sorted(missing)}; delete it and cache again.")
            tensors = {name: f.get_tensor(name) for name in FEATURES + EXTRAS}
        return cls(
            name=meta["name"], prompt=meta["prompt"], fps=float(meta["fps"]), num_frames=int(meta["num_frames"]),
            width=int(meta["width"]), height=int(meta["height"]), fingerprint=meta["fingerprint"],
            source=meta["source"], filled_frames=int(meta["filled_frames"]), **tensors,
        )


def read_metadata(path: str | Path) -> dict[str, str]:
    """A cache file's metadata without loading its tensors; a clear error for a foreign or broken file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (OSError, SafetensorError) as exc:
        raise TrainingDataError(f"Could not read cache file '{path}' ({exc}); delete it and cache again.") from None
    if meta.get("format") != str(CACHE_FORMAT):
        raise TrainingDataError(
            f"'{path}' is not a cache file of format {CACHE_FORMAT} (found {meta.get('format')!r}); cache the data again."
        )
    return meta


@torch.no_grad()
def encode_video_latents(pipe, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> normalised latents [16, T_lat, H/8, W/8] (`pipe.encode_video`)."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    return pipe.encode_video(video)[0]


@torch.no_grad()
def encode_text(pipe, prompt: str) -> torch.Tensor:
    """umT5 embeddings [512, D] of one prompt, exactly as the pipeline feeds the transformer."""
    embeds, _ = pipe.encode_prompt(
        prompt=prompt, do_classifier_free_guidance=False, max_sequence_length=TEXT_LENGTH,
        device=pipe._execution_device, dtype=torch.float32,
    )
    return embeds[0]


@torch.no_grad()
def encode_sample(
    pipe, sample: TrainingSample, dtype: torch.dtype = torch.float32, prompt_embeds: torch.Tensor | None = None
) -> CachedClip:
    """All cached features of one sample (`prompt_embeds` given: reuse them for a prompt already encoded)."""
    frames = sample.frames
    num_frames, height, width = frames.shape[:3]
    first = Image.fromarray(frames[0])
    face = face_crop(first, FaceBox.from_landmarks(sample.landmarks[0]))  # the crop inference uses
    pixels = torch.from_numpy(frames[0]).permute(2, 0, 1)[None, :, None].float() / 127.5 - 1.0
    if prompt_embeds is None:
        prompt_embeds = encode_text(pipe, sample.prompt)
    patch = tuple(pipe.transformer.config.patch_size) if pipe.transformer is not None else (1, 2, 2)
    features = {
        "latents": encode_video_latents(pipe, frames),
        "condition": pipe.prepare_condition(pixels, num_frames)[0],
        "prompt_embeds": prompt_embeds,
        "clip_tokens": pipe.encode_image_tokens(first)[0],
        "face_clip_tokens": pipe.encode_image_tokens(face)[0],
        "audio_features": speech_features(pipe.audio_encoder, pipe.feature_extractor, sample.speech)[0],
    }
    extras = {
        "lip_mask": lip_token_mask(sample.landmarks, height, width, pipe.vae_scale_factor_temporal,
                                   pipe.vae_scale_factor_spatial, patch),
        "landmarks": torch.from_numpy(sample.landmarks).float(),
        "motion_scores": torch.tensor([expression_score(sample.landmarks), body_score(frames, sample.landmarks)]),
    }
    return CachedClip(
        name=sample.name, prompt=sample.prompt, fps=sample.fps, num_frames=num_frames, width=width, height=height,
        filled_frames=sample.filled_frames,
        **{k: v.detach().to("cpu", dtype) for k, v in features.items()},
        **{k: v.detach().to("cpu", torch.float32) for k, v in extras.items()},
    )


@dataclass
class CacheSummary:
    """What a caching run did: the clip files in dataset order, and which were encoded or reused."""

    cache_dir: Path
    fingerprint: str
    clips: list[Path] = field(default_factory=list)
    encoded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _is_fresh(path: Path, fingerprint: str, source: str) -> bool:
    if not path.is_file():
        return False
    try:
        meta = read_metadata(path)
    except TrainingDataError:
        return False  # unreadable or from another format: encode again
    return meta.get("fingerprint") == fingerprint and meta.get("source") == source


def _write_dataset_file(pipe, cache_dir: Path, fingerprint: str, names: list[str], spec: SampleSpec,
                        dtype: torch.dtype) -> None:
    path = cache_dir / DATASET_FILE
    tensors: dict[str, torch.Tensor] | None = None
    if path.is_file():
        try:
            if read_metadata(path).get("fingerprint") == fingerprint:
                with safe_open(str(path), framework="pt") as f:
                    tensors = {k: f.get_tensor(k) for k in ("empty_prompt_embeds", "negative_prompt_embeds")}
        except (TrainingDataError, KeyError):
            tensors = None
    if tensors is None:
        tensors = {"empty_prompt_embeds": encode_text(pipe, "").to("cpu", dtype),
                   "negative_prompt_embeds": encode_text(pipe, DEFAULT_NEGATIVE_PROMPT).to("cpu", dtype)}
    meta = {"format": str(CACHE_FORMAT), "fingerprint": fingerprint, "clips": json.dumps(names),
            "fps": str(spec.fps), "num_frames": str(spec.num_frames), "width": str(spec.width),
            "height": str(spec.height)}
    tmp = path.with_name(f".{path.name}.partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def cache_dataset(
    pipe,
    data_dir: str | Path,
    spec: SampleSpec,
    cache_dir: str | Path | None = None,
    landmarks: ProviderFactory | None = None,
    progress: CacheProgress | None = None,
    dtype: torch.dtype = torch.float32,
) -> CacheSummary:
    """Encode every clip of `data_dir` not yet cached with the current settings; write the dataset file.

    `landmarks` makes one `LandmarkProvider` per clip (default: `BackendLandmarks`, dlib). Any unusable
    clip raises (see `load_sample`) after the clips before it are cached, so a re-run resumes there.
    Open the result with `TrainingSet.from_cache_dir(summary.cache_dir)`.
    """
    clips = discover_clips(data_dir)
    target = Path(cache_dir) if cache_dir is not None else Path(data_dir) / CACHE_DIRNAME
    target.mkdir(parents=True, exist_ok=True)
    factory = landmarks if landmarks is not None else BackendLandmarks()
    measured = any(clip.landmarks_file is None for clip in clips)  # else the provider decides nothing
    fingerprint = cache_fingerprint(pipe, spec, dtype, provider_fingerprint(factory) if measured else None)
    summary = CacheSummary(cache_dir=target, fingerprint=fingerprint)
    prompts: dict[str, torch.Tensor] = {}
    for done, clip in enumerate(clips, start=1):
        path = target / f"{clip.name}.safetensors"
        source = source_signature(clip.files)
        if _is_fresh(path, fingerprint, source):
            summary.reused.append(clip.name)
            status = "reused"
        else:
            sample = load_sample(clip, spec, factory() if clip.landmarks_file is None else None)
            if sample.prompt not in prompts:
                prompts[sample.prompt] = encode_text(pipe, sample.prompt)
            encoded = encode_sample(pipe, sample, dtype, prompt_embeds=prompts[sample.prompt])
            replace(encoded, fingerprint=fingerprint, source=source).save(path)
            summary.encoded.append(clip.name)
            status = "encoded"
        summary.clips.append(path)
        if progress is not None:
            progress(done, len(clips), clip.name, status)
    _write_dataset_file(pipe, target, fingerprint, [c.name for c in clips], spec, dtype)
    return summary
