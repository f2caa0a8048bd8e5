"""Fingerprints that decide whether a cached clip is still valid.

The cache fingerprint covers everything that shapes the cached numbers: the encoders (configs,
dtypes and a probe of their weights), the sample spec, the label/mask constants, the storage dtype
and the cache format. The source signature covers the clip's files (names, sizes, modification
times). Either changing means the clip is encoded again, never that a stale entry is reused.
Landmarks: when a clip has no `.landmarks.npy` (a file is part of the source), the landmark provider's
own fingerprint joins the cache fingerprint: the face backend and its model files with their SHA-256
(`fantasy.train.tracks.BackendLandmarks.fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fantasy.train import labels
from fantasy.train.clips import DEFAULT_PROMPT, SampleSpec

CACHE_FORMAT = 1  # bump when the encoding or the label code changes what a cached clip holds
TEXT_LENGTH = 512  # the I2V transformer assumes exactly 512 text tokens
PROBE_VALUES = 4096  # leading values of a few parameters: a different checkpoint changes them
ENCODERS = ("vae", "text_encoder", "image_encoder", "audio_encoder")
PROCESSORS = ("feature_extractor", "image_processor")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _plain_config(config: Any) -> dict:
    """A component's config without machine- or version-specific keys (paths, library versions)."""
    if config is None:
        return {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {k: v for k, v in data.items() if not k.startswith("_") and not k.endswith("_version")}


def _weights_probe(module: torch.nn.Module) -> list:
    """Shapes of all parameters plus a hash of the leading values of the first, middle and last ones."""
    params = list(module.parameters())
    shapes = [list(p.shape) for p in params]
    probe = hashlib.sha256()
    for p in (params[0], params[len(params) // 2], params[-1]) if params else ():
        if p.is_meta:
            continue
        probe.update(p.detach().flatten()[:PROBE_VALUES].to("cpu", torch.float32).numpy().tobytes())
    return [_digest(shapes), probe.hexdigest()[:20], str(params[0].dtype) if params else ""]


def pipeline_fingerprint(pipe) -> str:
    """Identity of the encoders and processors the cache is made with (not the trainable transformer)."""
    parts: dict[str, Any] = {}
    for name in ENCODERS:
        module = getattr(pipe, name)
        parts[name] = [type(module).__name__, _plain_config(getattr(module, "config", None)), _weights_probe(module)]
    for name in PROCESSORS:
        processor = getattr(pipe, name, None)
        parts[name] = _plain_config(processor) if processor is not None else None
    probe_text = "A person is talking."
    parts["tokenizer"] = [type(pipe.tokenizer).__name__, len(pipe.tokenizer), pipe.tokenizer(probe_text).input_ids]
    parts["vae_scale"] = [pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial]
    parts["patch"] = list(pipe.transformer.config.patch_size) if pipe.transformer is not None else None
    return _digest(parts)


def cache_fingerprint(pipe, spec: SampleSpec, dtype: torch.dtype, landmarks: dict[str, Any] | None = None) -> str:
    """Everything that shapes a cached clip's tensors, apart from the clip's own files.

    `landmarks`: the landmark provider's fingerprint, when some clip's landmarks are measured (None: all
    come from `.landmarks.npy` files).
    """
    return _digest({
        "format": CACHE_FORMAT,
        "pipeline": pipeline_fingerprint(pipe),
        "spec": asdict(spec),
        "dtype": str(dtype),
        "text_length": TEXT_LENGTH,
        "default_prompt": DEFAULT_PROMPT,
        "labels": {
            "face_margin": labels.FACE_MARGIN, "lip_dilate": labels.LIP_DILATE,
            "analysis_side": labels.ANALYSIS_SIDE, "inner_face": [labels.INNER_FACE.start, labels.INNER_FACE.stop],
        },
        "landmarks": landmarks,
    })


def source_signature(files: Iterable[Path]) -> str:
    """Names, sizes and modification times of a clip's files: editing or replacing one changes it."""
    return _digest([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
