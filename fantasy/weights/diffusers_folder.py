"""`fantasy convert --diffusers OUT`: a preset's pipeline written as a diffusers folder.

The folder is what `FantasyTalkingPipeline.save_pretrained` writes (`model_index.json`, one subfolder per
component: umT5, CLIP, VAE, the Wan transformer as Wan's alone, wav2vec2 with its feature extractor, the audio
projection, and the adapter's per-block modules in `audio_adapter/`), read back by
`FantasyTalkingPipeline.from_pretrained(OUT)` or `--weights OUT` (`fantasy.weights.real.load_diffusers_folder`).
The real preset is loaded on the CPU with its bf16 DiT (GGUF weights cannot be saved unquantized); it is written
under a temporary name and renamed when complete, so OUT is never a partial folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fantasy.errors import FantasyError

MAX_SHARD_SIZE = "5GB"  # the transformer's and umT5's shards (diffusers' and transformers' own sharding)


def write_diffusers_folder(out: str | Path, preset: str = "real", weights: str | Path | None = None,
                           adapter: str | Path | None = None, max_shard_size: str = MAX_SHARD_SIZE) -> Path:
    """Load `preset` (the real one: from `weights`, bf16 DiT, on the CPU) and save it as a diffusers folder at `out`."""
    from fantasy.weights.presets import load_pipeline

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FantasyError(f"{out} already exists and is not an empty folder: name a new folder for the diffusers layout")
    options = {"weights": weights, "dit": "bf16", "vram": "resident", "allow_cpu": True} if preset == "real" else {}
    pipe = load_pipeline(preset, device="cpu", adapter=adapter, **options)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        pipe.save_pretrained(partial, max_shard_size=max_shard_size)
        if out.exists():
            out.rmdir()  # empty (checked above)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out
