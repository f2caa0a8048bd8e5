"""Reading, checking, saving and converting the audio-adapter weights.

The released `fantasytalking_model.ckpt` is an fp32 pickle of two dicts: `proj_model` (3 tensors) and
`audio_processor` (`blocks.{i}.cross_attn.processor.{k,v}_proj.weight`, 2 per block). We read it with
`weights_only=True`, rename to our module paths and refuse to go on unless every expected tensor
lands with the right shape (the release's own `strict=False` load would silently ignore a mismatch).
Conversion to safetensors (bf16) lets the app start without unpickling anything. The audio projection
(3 tensors, 6 MB) stays fp32 there, as the release keeps and runs it; only the per-block K/V go bf16,
as the release casts them to the DiT's dtype.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fantasy.errors import CheckpointMismatch, WeightsMissing

OFFICIAL_REPO = "acvlab/FantasyTalking"
OFFICIAL_FILE = "fantasytalking_model.ckpt"
PROJ_KEYS = ("audio_proj.proj.weight", "audio_proj.norm.weight", "audio_proj.norm.bias")
PROJ_DTYPE = torch.float32  # the release runs its `proj_model` in fp32 (infer.py: never cast)

_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^audio_processor\."), ""),  # official safetensors branch: flat with a prefix
    (re.compile(r"^proj_model\."), "audio_proj."),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.processor\.([kv])_proj\.weight$"), r"blocks.\1.attn2.processor.\2_proj.weight"),
    (re.compile(r"^blocks\.(\d+)\.cross_attn\.([kv])_proj\.weight$"), r"blocks.\1.attn2.processor.\2_proj.weight"),  # kijai
]


def to_our_key(key: str) -> str:
    """Map an official / official-safetensors / ComfyUI-wrapper key to our module path."""
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def expected_keys(num_blocks: int) -> list[str]:
    keys = list(PROJ_KEYS)
    for i in range(num_blocks):
        keys += [f"blocks.{i}.attn2.processor.k_proj.weight", f"blocks.{i}.attn2.processor.v_proj.weight"]
    return keys


def read_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read any supported adapter file and return its tensors under our key names."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissing(
            f"Audio adapter weights not found: {path}. Get '{OFFICIAL_FILE}' from the Hugging Face repo "
            f"'{OFFICIAL_REPO}' with `python -m fantasy download` (it is converted to safetensors there)."
        )
    raw = load_file(str(path)) if path.suffix == ".safetensors" else _read_official_pickle(path)
    renamed = {to_our_key(k): v for k, v in raw.items()}
    if len(renamed) != len(raw):
        raise CheckpointMismatch(f"{path.name}: two keys map to the same adapter tensor; the file is not an adapter")
    return renamed


def _load_pickle(path: Path):
    """`torch.load(weights_only=True)`, memory-mapped: the fp32 tensors stay in the page cache, not in RAM."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # only the legacy (non-zip) format cannot be mapped
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _read_official_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = _load_pickle(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        raise CheckpointMismatch(
            f"{path.name} is not a readable tensor checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Only plain tensor checkpoints are loaded (weights_only=True); re-download the file."
        ) from exc
    if not isinstance(obj, dict) or not {"proj_model", "audio_processor"} <= set(obj):
        found = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointMismatch(
            f"{path.name} does not have the FantasyTalking layout: expected the entries 'proj_model' and "
            f"'audio_processor', found {found}."
        )
    flat: dict[str, torch.Tensor] = {}
    for group in ("proj_model", "audio_processor"):
        if not isinstance(obj[group], dict):
            raise CheckpointMismatch(f"{path.name}: entry '{group}' is not a dict of tensors")
        prefix = "proj_model." if group == "proj_model" else ""
        for key, value in obj[group].items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointMismatch(f"{path.name}: '{group}/{key}' is not a tensor")
            flat[prefix + key] = value
    return flat


def check_adapter_keys(state: dict[str, torch.Tensor], expected_shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Raise `CheckpointMismatch` naming missing/unexpected/mis-shaped keys unless the sets match exactly."""
    missing = [k for k in expected_shapes if k not in state]
    unexpected = [k for k in state if k not in expected_shapes]
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {expected_shapes[k]}"
        for k in expected_shapes
        if k in state and tuple(state[k].shape) != expected_shapes[k]
    ]
    if missing or unexpected or wrong:
        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = [f"{source}: expected exactly {len(expected_shapes)} adapter tensors, "
                 f"{len(expected_shapes) - len(missing)} matched."]
        if missing:
            parts.append(f"Missing {len(missing)}: {show(missing)}.")
        if unexpected:
            parts.append(f"Unexpected {len(unexpected)}: {show(unexpected)}.")
        if wrong:
            parts.append(f"Wrong shape {len(wrong)}: {show(wrong)}.")
        raise CheckpointMismatch(" ".join(parts))


def adapter_modules(transformer, audio_proj) -> dict[str, torch.nn.Parameter]:
    """Our key -> the live parameter it loads into."""
    params = {f"audio_proj.{name}": p for name, p in audio_proj.named_parameters()}
    for i, block in enumerate(transformer.blocks):
        processor = block.attn2.processor
        params[f"blocks.{i}.attn2.processor.k_proj.weight"] = processor.k_proj.weight
        params[f"blocks.{i}.attn2.processor.v_proj.weight"] = processor.v_proj.weight
    return params


def copy_checked(state: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], source: str) -> int:
    """Copy `state` into the live `params` after an exact key-and-shape check; return tensors copied."""
    check_adapter_keys(state, {k: tuple(p.shape) for k, p in params.items()}, source)
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(state[key])  # copy_ casts dtype and device itself, without an intermediate copy
    return len(params)


def load_adapter_weights(transformer, audio_proj, path: str | Path) -> int:
    """Load an adapter file into the installed processors and the projection; return tensors loaded."""
    return copy_checked(read_adapter_weights(path), adapter_modules(transformer, audio_proj), Path(path).name)


def storage_dtype(key: str, dtype: torch.dtype) -> torch.dtype:
    """`dtype` for the per-block K/V; the audio projection is always stored in fp32."""
    return PROJ_DTYPE if key.startswith("audio_proj.") else dtype


def has_low_precision_projection(path: str | Path) -> bool:
    """True for a converted file whose audio projection is not fp32 (converted before it stayed fp32)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            key = PROJ_KEYS[0]
            return key in f.keys() and f.get_slice(key).get_dtype() != "F32"  # noqa: SIM118 (no __contains__)
    except (SafetensorError, OSError):  # not readable as safetensors: loading it says what is wrong
        return False


def save_adapter_weights(transformer, audio_proj, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> None:
    tensors = {k: p.detach().to("cpu", storage_dtype(k, dtype)).contiguous()
               for k, p in adapter_modules(transformer, audio_proj).items()}
    _atomic_save(tensors, Path(path))


def convert_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.bfloat16) -> int:
    """Official `.ckpt` -> safetensors under our key names, after checking the layout is complete.

    The K/V go to `dtype` (bf16 by default); the projection keeps fp32 (`storage_dtype`).
    """
    state = read_adapter_weights(src)
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    num_blocks = len(blocks)
    if "audio_proj.proj.weight" not in state or num_blocks == 0:
        raise CheckpointMismatch(f"{Path(src).name}: no audio projection or no adapter blocks found")
    context_dim, audio_dim = state["audio_proj.proj.weight"].shape
    # The inner width from any block tensor: one missing tensor is then reported as missing, not every other
    # block tensor as mis-shaped.
    inner_dim = next(v.shape[0] for k, v in state.items() if k.startswith("blocks."))
    shapes = {"audio_proj.proj.weight": (context_dim, audio_dim),
              "audio_proj.norm.weight": (context_dim,), "audio_proj.norm.bias": (context_dim,)}
    for key in expected_keys(num_blocks)[3:]:
        shapes[key] = (inner_dim, context_dim)
    check_adapter_keys(state, shapes, Path(src).name)
    # One tensor at a time from the mapped pickle: only the converted copies are ever in RAM.
    _atomic_save({k: v.to(storage_dtype(k, dtype)).contiguous() for k, v in state.items()}, Path(dst))
    return len(state)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder: the rename is atomic. Named by pid: the processes of a group convert at once on shared storage.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", "layout": "fantasy-talking-studio/adapter-v1"})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves neither a half file nor a changed target
