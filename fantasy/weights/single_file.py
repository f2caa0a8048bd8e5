"""One `.safetensors` single file: its header (names, shapes, dtypes) without reading tensors, and its tensors.

ComfyUI and kijai ship every model as one such file; which model a file holds and in which key spelling is
read from the header first (cheap, and a wrong file is refused before anything big is read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass(frozen=True)
class Header:
    """What a safetensors file holds: tensor name -> shape and dtype."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def keys(self):
        return self.shapes.keys()


def read_header(path: str | Path) -> Header:
    """The file's tensor names, shapes and dtypes (the header only); `CheckpointMismatch` for a file that is
    not safetensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes, dtypes = {}, {}
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                piece = f.get_slice(key)
                shapes[key] = tuple(piece.get_shape())
                dtypes[key] = _DTYPES.get(piece.get_dtype(), torch.uint8)
    except Exception as exc:  # safetensors raises its own SafetensorError for a bad header
        raise CheckpointMismatch(f"{path.name} is not a readable .safetensors file ({str(exc).splitlines()[0][:200]})"
                                 ) from None
    return Header(path, shapes, dtypes)


def read_tensors(path: str | Path, keys=None) -> dict[str, torch.Tensor]:
    """The file's tensors (or only `keys`), each read from the file's memory map."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys()) if keys is None else list(keys)
        return {key: f.get_tensor(key) for key in names}


def strip_prefix(state: dict, prefixes: tuple[str, ...]) -> dict:
    """Keys without the first of `prefixes` that all keys starting with any of them share (ComfyUI's
    full-checkpoint spellings, e.g. `model.diffusion_model.`)."""
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}
    return state


def block_count(keys, prefix: str) -> int:
    """How many `<prefix>N.` blocks the keys hold (the highest N + 1; 0 for none)."""
    numbers = [int(key[len(prefix):].split(".", 1)[0]) for key in keys
               if key.startswith(prefix) and key[len(prefix):].split(".", 1)[0].isdigit()]
    return max(numbers) + 1 if numbers else 0


def check_names(path: Path, what: str, expected: set[str], got: set[str]) -> None:
    """`CheckpointMismatch` (one line: counts and a first example) unless `got` is exactly `expected`."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    raise CheckpointMismatch(f"{Path(path).name}: a {what} file should hold {len(expected)} tensors; "
                             + ", ".join(parts))
