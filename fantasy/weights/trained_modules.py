"""One safetensors file for everything trainable: the audio adapter, and the paper's motion and identity modules.

A training checkpoint (`python -m fantasy train`) is a superset of the released adapter's layout: the
audio keys (`audio_proj.*`, `blocks.N.attn2.processor.{k,v}_proj.weight`), plus `motion_intensity.*`
when the motion module was trained and `blocks.N.attn2.processor.identity.{k,v}_proj.weight` when the
identity module was. Loading installs whichever modules the file holds (their sizes are read from the
tensor shapes) and then requires an exact key-and-shape match, so a truncated or foreign file is an
error naming the keys, never a partial load. The released `.ckpt` loads through the same function.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch
from fantasy.model.identity import IDENTITY_MODULE_NAME, install_identity_module
from fantasy.model.motion import MOTION_MODULE_NAME, MotionIntensityModel, install_motion_module
from fantasy.weights.adapter_weights import _atomic_save, adapter_modules, copy_checked, read_adapter_weights

MOTION_PREFIX = f"{MOTION_MODULE_NAME}."
IDENTITY_KEY = re.compile(rf"^blocks\.(\d+)\.attn2\.processor\.{IDENTITY_MODULE_NAME}\.")


@dataclass(frozen=True)
class LoadedModules:
    """What a file put into the pipeline (the audio adapter is always there)."""

    path: Path
    tensors: int
    motion: bool
    identity: bool

    def describe(self) -> str:
        extra = [name for name, present in (("motion", self.motion), ("identity", self.identity)) if present]
        return "audio adapter" + "".join(f" + {name} module" for name in extra)


def trainable_parameters(pipe) -> dict[str, torch.nn.Parameter]:
    """Key -> live parameter for every installed trainable module (what training updates and saves)."""
    params = adapter_modules(pipe.transformer, pipe.audio_proj)
    motion = getattr(pipe.transformer, MOTION_MODULE_NAME, None)
    if motion is not None:
        params |= {f"{MOTION_PREFIX}{name}": p for name, p in motion.named_parameters()}
    for i, block in enumerate(pipe.transformer.blocks):
        branch = getattr(block.attn2.processor, IDENTITY_MODULE_NAME, None)
        if branch is not None:
            params |= {f"blocks.{i}.attn2.processor.{IDENTITY_MODULE_NAME}.{n}": p for n, p in branch.named_parameters()}
    return params


def _motion_model_from(state: dict[str, torch.Tensor]) -> MotionIntensityModel:
    """Rebuild the module's config from its tensor shapes (first layer: hidden x features; last: 6*inner)."""
    hidden, features = state[f"{MOTION_PREFIX}mlp.0.weight"].shape
    inner = state[f"{MOTION_PREFIX}mlp.4.weight"].shape[0] // 6
    return MotionIntensityModel(inner_dim=inner, hidden_dim=hidden, frequencies=features // 4)


def install_modules_for(pipe, state: dict[str, torch.Tensor]) -> None:
    """Install the motion / identity modules a checkpoint has and the pipeline lacks (zero-initialised)."""
    if any(k.startswith(MOTION_PREFIX) for k in state) and pipe.motion_context is None:
        needed = [k for k in (f"{MOTION_PREFIX}mlp.0.weight", f"{MOTION_PREFIX}mlp.4.weight") if k not in state]
        if needed:
            raise CheckpointMismatch(f"the motion module in this file is incomplete: missing {', '.join(needed)}")
        pipe.motion_context = install_motion_module(pipe.transformer, _motion_model_from(state))
    identity = sorted(k for k in state if IDENTITY_KEY.match(k))
    if identity and pipe.identity_context is None:
        token_dim = state[identity[0]].shape[1]
        pipe.identity_context = install_identity_module(pipe.transformer, token_dim)


def load_modules(pipe, path: str | Path) -> LoadedModules:
    """Load an adapter or training checkpoint into `pipe`, installing the modules it contains."""
    path = Path(path)
    state = read_adapter_weights(path)
    install_modules_for(pipe, state)
    count = copy_checked(state, trainable_parameters(pipe), path.name)
    return LoadedModules(path, count, pipe.motion_context is not None, pipe.identity_context is not None)


def save_modules(pipe, path: str | Path, dtype: torch.dtype = torch.float32) -> int:
    """Write every trainable module's weights (atomically); returns the tensor count."""
    tensors = {k: p.detach().to("cpu", dtype).contiguous() for k, p in trainable_parameters(pipe).items()}
    _atomic_save(tensors, Path(path))
    return len(tensors)
