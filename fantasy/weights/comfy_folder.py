"""Finding Wan's model files in a ComfyUI `models/` folder (`--comfy-models DIR` or `$FANTASY_COMFY_MODELS`).

ComfyUI keeps one file per model in folders by role (`folder_paths.py`): `diffusion_models/` (older: `unet/`),
`text_encoders/` (older: `clip/`), `clip_vision/`, `vae/`. Files are recognised by the names their publishers
give them (Comfy-Org's `Wan_2.1_ComfyUI_repackaged`, kijai's `WanVideo_comfy`, city96's GGUFs), and checked by
their tensors when loaded (`fantasy.weights.wan_files`, `umt5_file`, `clip_vision_file`), so a renamed
file of the wrong kind is still refused with a message. Where a folder holds several candidates, the choice
follows FantasyTalking (trained on the 720P model) and the storage asked for, and is reported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fantasy.errors import InvalidSetting

COMFY_ENV = "FANTASY_COMFY_MODELS"
FOLDERS = {"dit": ("diffusion_models", "unet"), "text_encoder": ("text_encoders", "clip"),
           "clip_vision": ("clip_vision",), "vae": ("vae",)}
SAFETENSORS = (".safetensors", ".sft")
# 16-bit first (exact), then scaled fp8 (per-tensor scales), then plain fp8: the closest to the release first.
STORAGE_ORDER = ("bf16", "fp16", "fp32", "fp8_scaled", "fp8_e4m3fn", "fp8_e5m2", "")
VAE_ORDER = ("fp32", "bf16", "fp16", "")  # the VAE runs in fp32
_NOT_I2V_14B = ("flf2v", "vace", "fun", "control", "camera", "animate", "t2v", "1.3b", "1_3b", "5b")


def _words(name: str) -> str:
    return name.lower().replace("-", "_")


def storage_of(name: str) -> str:
    """The storage a file's name announces ('bf16', 'fp8_scaled', ..., '' when it says none)."""
    words = _words(name)
    if "scaled" in words and "fp8" in words:
        return "fp8_scaled"
    return next((kind for kind in STORAGE_ORDER[:-1] if kind in words), "")


def storage_rank(name: str, order: tuple[str, ...] = STORAGE_ORDER) -> int:
    storage = storage_of(name)
    return order.index(storage) if storage in order else len(order)


def gguf_quant_of(name: str) -> str:
    """'q8_0', 'q4_k_m', ... from a GGUF file's name ('' when it names none)."""
    match = re.search(r"(q\d(?:_k)?(?:_[a-z0-9]+)?)\.gguf$", name.lower())
    return match.group(1) if match else ""


def is_wan21_i2v_14b(name: str) -> bool:
    """Comfy-Org's `wan2.1_i2v_720p_14B_*`, kijai's `Wan2_1-I2V-14B-720P_*`, city96's `wan2.1-i2v-14b-720p-*`."""
    words = _words(name)
    return (re.search(r"wan2[._]?1", words) is not None and "i2v" in words and "14b" in words
            and not any(other in words for other in _NOT_I2V_14B))


def is_umt5(name: str) -> bool:
    return "umt5" in _words(name) and _words(name).endswith(SAFETENSORS)


def is_clip_vision_h(name: str) -> bool:
    words = _words(name)
    return words.endswith(SAFETENSORS) and ("clip_vision_h" in words or "vit_huge_14" in words)


def is_wan21_vae(name: str) -> bool:
    words = _words(name)
    return words.endswith(SAFETENSORS) and re.search(r"wan_?2[._]?1_?vae", words) is not None


@dataclass(frozen=True)
class ComfyFiles:
    """The files found in one ComfyUI models folder (None: not there) and why each was chosen."""

    root: Path
    dit: Path | None = None
    text_encoder: Path | None = None
    clip_vision: Path | None = None
    vae: Path | None = None
    notes: tuple[str, ...] = field(default=())

    def found(self) -> dict[str, Path]:
        return {name: path for name in FOLDERS if (path := getattr(self, name)) is not None}


def comfy_models_dir(given: str | Path | None = None) -> Path | None:
    """The ComfyUI models folder from `--comfy-models` or `$FANTASY_COMFY_MODELS` (None when neither is set).

    ComfyUI's own folder (holding `models/`) is accepted too.
    """
    value = given if given is not None else (os.environ.get(COMFY_ENV) or None)
    if value is None:
        return None
    path = Path(value).expanduser()
    source = "--comfy-models" if given is not None else COMFY_ENV
    if not path.is_dir():
        raise InvalidSetting(f"{source}: {path} is not a folder (give ComfyUI's models/ folder)")
    if not _has_model_folders(path) and _has_model_folders(path / "models"):
        path = path / "models"
    if not _has_model_folders(path):
        names = ", ".join(sorted({folders[0] for folders in FOLDERS.values()}))
        raise InvalidSetting(f"{source}: {path} holds none of ComfyUI's model folders ({names})")
    return path


def _has_model_folders(path: Path) -> bool:
    return any((path / folder).is_dir() for folders in FOLDERS.values() for folder in folders)


def _files(root: Path, role: str) -> list[Path]:
    out = []
    for folder in FOLDERS[role]:
        if (root / folder).is_dir():  # ComfyUI looks into subfolders too
            out += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    return out


def _pick(candidates: list[Path], key) -> tuple[Path | None, str | None]:
    if not candidates:
        return None, None
    ranked = sorted(candidates, key=lambda p: (key(p), p.name))
    chosen = ranked[0]
    note = None
    if len(ranked) > 1:
        others = ", ".join(p.name for p in ranked[1:4]) + (" ..." if len(ranked) > 4 else "")
        note = f"{chosen.name} (also there: {others})"
    return chosen, note


def find_comfy_files(root: Path, want_gguf: str | None = None) -> ComfyFiles:
    """Wan2.1 I2V 14B's files in `root` (see the module docstring).

    `want_gguf`: a GGUF storage the DiT should have ('q8_0', 'q4_k_m'); None: a safetensors DiT (any precision,
    loaded in the compute dtype). The other kind is not picked.
    """
    notes = []

    def dit_rank(path: Path):
        words = _words(path.name)
        resolution = 0 if "720p" in words else 1 if "480p" in words else 2
        return resolution, storage_rank(path.name)

    dits = [p for p in _files(root, "dit") if is_wan21_i2v_14b(p.name)]
    if want_gguf is None:
        dits = [p for p in dits if _words(p.name).endswith(SAFETENSORS)]
    else:
        dits = [p for p in dits if p.name.lower().endswith(".gguf") and gguf_quant_of(p.name) == want_gguf]
    dit, note = _pick(dits, dit_rank)
    if note:
        notes.append(f"DiT: {note}")
    picks = {}
    for role, matches in (("text_encoder", is_umt5), ("clip_vision", is_clip_vision_h), ("vae", is_wan21_vae)):
        order = VAE_ORDER if role == "vae" else STORAGE_ORDER
        chosen, note = _pick([p for p in _files(root, role) if matches(p.name)],
                             lambda p, order=order: storage_rank(p.name, order))
        picks[role] = chosen
        if note:
            notes.append(f"{role.replace('_', ' ')}: {note}")
    return ComfyFiles(root, dit, picks["text_encoder"], picks["clip_vision"], picks["vae"], tuple(notes))
