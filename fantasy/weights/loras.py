"""LoRAs on the Wan DiT: `--lora FILE[:SCALE]` (repeatable) or `$FANTASY_LORA`, loaded by diffusers.

diffusers' `WanLoraLoaderMixin` reads the formats Wan LoRAs are published in (its `lora_state_dict`):
ComfyUI's and kijai's original Wan names (`diffusion_model.blocks.0.self_attn.q.lora_down.weight` + `.alpha`,
or `lora_A`/`lora_B`, with `.diff`/`.diff_b` full deltas), musubi-tuner's `lora_unet_blocks_0_self_attn_q...`,
and its own `transformer.blocks.0.attn1.to_q.lora_A.weight`. ComfyUI also accepts the original names with no
prefix or under `model.diffusion_model.`; those are renamed to `diffusion_model.` first.

A LoRA is checked twice, each time with one line naming the file: before any model loads (it exists, is a
safetensors file of LoRA weights, diffusers can convert it), and against the loaded DiT before it is applied
(every layer it names exists there, with its sizes: a LoRA for another model is refused, never half-applied).
The audio adapter (`attn2.processor.*`) is never a target. Fused (the default) a LoRA costs nothing per step;
on quantized weights (GGUF) it stays as separate layers, its strength set with `set_adapters`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from fantasy.errors import CheckpointMismatch, InputFileNotFound, InvalidSetting

LORA_ENV = "FANTASY_LORA"
SCALE_RANGE = (-4.0, 4.0)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # ComfyUI's spellings of the original names
_ORIGINAL_ROOTS = ("blocks.", "head.", "text_embedding.", "time_embedding.", "time_projection.", "img_emb.",
                   "patch_embedding.")
_DIFFUSERS_ROOTS = ("condition_embedder.", "proj_out.")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and its strength."""

    path: Path
    scale: float = 1.0

    def __str__(self) -> str:
        return f"{self.path.name}:{self.scale:g}"


def parse_lora(text: str, source: str = "--lora") -> LoraSpec:
    """`FILE` or `FILE:SCALE` -> `LoraSpec` (a path that itself contains ':' keeps it: only a number after the
    last ':' is a scale)."""
    text = text.strip()
    head, sep, tail = text.rpartition(":")
    path, scale = text, 1.0
    if sep and "/" not in tail and "\\" not in tail:
        with contextlib.suppress(ValueError):  # not a number: part of the file name
            path, scale = head, float(tail)
    if not path:
        raise InvalidSetting(f"{source}: give a LoRA file, optionally with :SCALE (e.g. style.safetensors:0.8)")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise InvalidSetting(f"{source}: the scale of {Path(path).name} must be between {SCALE_RANGE[0]:g} and "
                             f"{SCALE_RANGE[1]:g}, got {scale:g}")
    return LoraSpec(Path(path).expanduser(), scale)


def loras_from_env(value: str | None = None, source: str = LORA_ENV) -> list[LoraSpec]:
    """`$FANTASY_LORA` (or `value`): `FILE[:SCALE]` entries separated by commas (or `;`, the path separator on
    Windows, or new lines)."""
    value = os.environ.get(LORA_ENV, "") if value is None else value
    entries = value.replace(";", ",").replace("\n", ",").split(",")
    return [parse_lora(entry, source) for entry in entries if entry.strip()]


def chosen_loras(given: list[str] | None) -> list[LoraSpec]:
    """The `--lora` values when any are given, else `$FANTASY_LORA`'s."""
    return [parse_lora(text) for text in given] if given else loras_from_env()


def _normalised(state: dict) -> dict:
    """ComfyUI's other spellings -> what diffusers converts: the original Wan names with no prefix or under
    `model.diffusion_model.` -> `diffusion_model.`; diffusers' own names with no prefix -> `transformer.`."""
    for prefix in _PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {f"diffusion_model.{key[len(prefix):]}" if key.startswith(prefix) else key: value
                    for key, value in state.items()}
    if state and all(key.startswith(_ORIGINAL_ROOTS + _DIFFUSERS_ROOTS) for key in state):
        diffusers_names = any(part in key for key in state for part in (".attn1.", ".attn2.", ".ffn.net."))
        prefix = "transformer." if diffusers_names else "diffusion_model."
        return {f"{prefix}{key}": value for key, value in state.items()}
    return state


def read_lora(spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The LoRA's tensors in diffusers' names (`transformer.blocks.0.attn1.to_q.lora_A.weight`, ...); one-line
    errors for a missing file, a file that is not safetensors, no LoRA weights, a format diffusers cannot read."""
    from diffusers import WanImageToVideoPipeline
    from safetensors.torch import load_file

    name = spec.path.name
    if not spec.path.is_file():
        raise InputFileNotFound(f"LoRA file not found: {spec.path}")
    try:
        raw = load_file(str(spec.path))
    except Exception as exc:  # safetensors' own error type for a bad header
        raise CheckpointMismatch(f"{name} is not a readable .safetensors LoRA ({str(exc).splitlines()[0][:160]})"
                                 ) from None
    if not any("lora" in key or key.endswith((".diff", ".diff_b")) for key in raw):
        sample = ", ".join(list(raw)[:2])
        raise CheckpointMismatch(f"{name} holds no LoRA weights (no lora_A/lora_down keys; first keys: {sample})")
    if any(part in key for key in raw for part in (".hada_", ".lokr_")):
        raise CheckpointMismatch(f"{name} is a LyCORIS LoHa/LoKr file; diffusers loads plain LoRAs only")
    try:
        state = WanImageToVideoPipeline.lora_state_dict(_normalised(raw))
    except (ValueError, KeyError, IndexError, RuntimeError, AttributeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointMismatch(f"{name} is not a Wan2.1 LoRA that diffusers can read ({first})") from None
    if not state or not all(key.startswith("transformer.") for key in state):
        sample = next((key for key in state if not key.startswith("transformer.")), next(iter(raw)))
        raise CheckpointMismatch(f"{name} is not a LoRA for the Wan DiT (e.g. key '{sample}'; a Wan LoRA names "
                                 "diffusion_model.blocks.N... layers)")
    return state


def check_fits(transformer, state: dict[str, torch.Tensor], name: str) -> int:
    """Every layer the LoRA names exists in this DiT with the LoRA's sizes; returns how many layers it names."""
    from fantasy.weights.quantize import ADAPTER_PATTERN

    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        module, _, part = key.removeprefix("transformer.").partition(".lora_")
        layers.setdefault(module, {})[part] = value
    modules = dict(transformer.named_modules())
    absent = sorted(module for module in layers if module not in modules)
    if absent:
        what = (f"none of its {len(layers)} layers exist" if len(absent) == len(layers)
                else f"{len(absent)} of its {len(layers)} layers do not exist")
        raise CheckpointMismatch(f"{name} is a LoRA for another model: {what} in this Wan2.1 I2V DiT (e.g. "
                                 f"'{absent[0]}')")
    for module, parts in sorted(layers.items()):
        if ADAPTER_PATTERN in module.split("."):
            raise CheckpointMismatch(f"{name} targets the audio adapter ('{module}'); a Wan LoRA may not")
        layer = modules[module]
        fan_in, fan_out = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        down, up = parts.get("A.weight"), parts.get("B.weight")
        if down is not None and fan_in is not None and down.shape[-1] != fan_in:
            raise CheckpointMismatch(f"{name} was made for a model of another size: '{module}' takes {fan_in} inputs "
                                     f"here, the LoRA {down.shape[-1]} (a Wan2.1 1.3B or Wan2.2 5B LoRA?)")
        if up is not None and fan_out is not None and up.shape[0] != fan_out:
            raise CheckpointMismatch(f"{name} was made for a model of another size: '{module}' gives {fan_out} "
                                     f"outputs here, the LoRA {up.shape[0]}")
    return len(layers)


def lora_layer_names(transformer) -> list[str]:
    """Names of the modules PEFT wrapped with a LoRA (they have a `lora_A` child)."""
    return [name for name, module in transformer.named_modules() if hasattr(module, "lora_A")]


def _quantized(transformer) -> bool:
    from fantasy.weights.quantize import is_quantized_weight

    return any(is_quantized_weight(p) for n, p in transformer.named_parameters() if ".base_layer." in n)


@dataclass(frozen=True)
class AppliedLora:
    """What `load_loras` did with one LoRA."""

    spec: LoraSpec
    name: str  # its adapter name (while kept as separate layers)
    layers: int  # DiT layers it changed
    fused: bool  # folded into the weights (else separate layers at `spec.scale`)

    def __str__(self) -> str:
        how = "fused into" if self.fused else "kept beside"
        return f"LoRA {self.spec}: {how} {self.layers} layers"


def read_loras(specs: list[LoraSpec]) -> list[dict[str, torch.Tensor]]:
    """Every LoRA read and converted (`read_lora`): the checks that need no model, before any model loads."""
    return [read_lora(spec) for spec in specs]


def load_loras(pipe, specs: list[LoraSpec], fuse: bool = True, names: list[str] | None = None,
               states: list[dict] | None = None) -> list[AppliedLora]:
    """Apply `specs` to the pipeline's DiT, in order, every file checked before the DiT is touched.

    Fused (default, plain weights): each is folded into the weights at its scale and its layers dropped.
    Not fused, or on quantized weights (GGUF: no delta can be added to packed weights): they stay as PEFT
    adapters named `names` (default `lora_0`, ...), active at their scales (`set_lora_scales` changes them).
    `states`: what `read_loras(specs)` returned, when the caller checked the files before loading the models.
    """
    taken = set(getattr(pipe.transformer, "peft_config", None) or {})
    names = names or [name for name in (f"lora_{i}" for i in range(len(taken) + len(specs))) if name not in taken
                      ][: len(specs)]
    states = read_loras(specs) if states is None else states  # `read_loras`' result, when the caller checked early
    for spec, state in zip(specs, states, strict=True):
        check_fits(pipe.transformer, state, spec.path.name)
    applied, kept = [], []
    for spec, state, name in zip(specs, states, names, strict=True):
        pipe.load_lora_weights(state, adapter_name=name)
        layers = sum(name in getattr(module, "lora_A", {}) for module in pipe.transformer.modules())
        fused = fuse and not _quantized(pipe.transformer)
        if fused:
            pipe.fuse_lora(components=["transformer"], lora_scale=spec.scale, adapter_names=[name])
            pipe.unload_lora_weights()  # drops the LoRA layers; the fused weights stay
        else:
            kept.append((name, spec.scale))
        applied.append(AppliedLora(spec, name, layers, fused))
    if kept:  # every LoRA kept so far stays active (set_adapters sets the whole list)
        pipe.lora_scales = {**getattr(pipe, "lora_scales", {}), **dict(kept)}
        pipe.set_adapters(list(pipe.lora_scales), list(pipe.lora_scales.values()))
    return applied


def set_lora_scales(pipe, scales: dict[str, float]) -> None:
    """New strengths for LoRAs kept as separate layers (the app's per-generation control)."""
    for name, scale in scales.items():
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
            raise InvalidSetting(f"LoRA strength must be between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}, got "
                                 f"{scale:g} for {name}")
    unknown = sorted(set(scales) - set(getattr(pipe, "lora_scales", {})))
    if unknown:
        raise InvalidSetting(f"no LoRA named '{unknown[0]}' is kept as separate layers (loaded: "
                             f"{', '.join(getattr(pipe, 'lora_scales', {})) or 'none'})")
    pipe.lora_scales = {**pipe.lora_scales, **scales}
    pipe.set_adapters(list(pipe.lora_scales), list(pipe.lora_scales.values()))


@contextlib.contextmanager
def lora_scales_for_run(pipe, scales: dict[str, float]) -> Iterator[None]:
    """`scales` (adapter name -> strength) for one run, the strengths from before restored after it, however it
    ends (done, failed, stopped): the app's per-video strengths never leak into the next video."""
    before = dict(getattr(pipe, "lora_scales", {}))
    changed = {name: scale for name, scale in scales.items() if before.get(name) != scale}
    if changed:
        set_lora_scales(pipe, changed)  # checks the names and the range before anything changes
    try:
        yield
    finally:
        if changed:
            set_lora_scales(pipe, {name: before[name] for name in changed})
