"""Speed switches for a loaded pipeline, each one diffusers' or torchao's own mechanism, applied in order.

| switch | what | result vs the plain path |
|---|---|---|
| `precision` | `stock`: diffusers' all-bf16 DiT instead of the release's mixed precision (`fantasy.model.precision`) | bf16 rounding |
| `batch_guidance` | the 3 guidance passes as one batch | same (float rounding) |
| `attention` | diffusers' attention dispatcher: sdpa, cudnn, flash, flash3, sage, ... | kernel rounding |
| `compile` | `compile_repeated_blocks`: the 40 identical blocks compile once | float rounding |
| `fp8_linears` | torchao dynamic fp8 matmuls in the blocks (GPU, cc >= 8.9) | fp8 rounding |
| `step_cache` | FirstBlockCache: skip blocks 2..40 when block 1's residual barely moved | approximate |
| `distilled_lora` | the few-step mode (`fantasy.speed.distill`): 4 steps, 1 pass | a different model |

Order matters and is fixed here: the adapter and the precision policy are installed at load time (a
`precision` switch only removes or re-adds the policy's hooks, before any other); the LoRA is loaded (and
fused) before quantizing and compiling, so both see the final weights; the step cache comes next, its
hooks wrapping the compiled blocks; context parallelism (`fantasy.speed.parallel`) goes last, its split hook
outside the cache's. Every choice is checked before anything is changed.

Step cache and guidance: the pipeline runs each pass inside `transformer.cache_context(name)`
("full", "text", "uncond", or one "batched"), so FirstBlockCache keeps one residual per pass and a
pass only ever reuses its own (the audio-on "full" pass never gets the audio-off residual). The
pipeline drops that state at the start of every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fantasy.errors import InvalidSetting
from fantasy.model.precision import DEFAULT_PRECISION, apply_precision, check_precision, precision_of

if TYPE_CHECKING:
    from fantasy.speed.parallel import ContextParallel

# Short names for the CLI; any `diffusers.models.attention_dispatch.AttentionBackendName` value works too.
ATTENTION_ALIASES = {
    "sdpa": "native",  # torch SDPA, torch picks the kernel
    "math": "_native_math",
    "cudnn": "_native_cudnn",
    "flash-sdpa": "_native_flash",  # torch's built-in FlashAttention-2
    "efficient": "_native_efficient",
    "flash": "flash",  # the flash-attn package (FA2)
    "flash3": "_flash_3",  # FlashAttention-3 (Hopper), built from source
    "sage": "sage",  # the sageattention package
    "xformers": "xformers",
}
CPU_ATTENTION = {"native", "_native_math"}  # the backends that run on a CPU (checked in tests)
STEP_CACHES = {"fbc": "FirstBlockCache (diffusers): reuse blocks 2..N when block 1's residual changes little"}
DEFAULT_CACHE_THRESHOLD = 0.05  # diffusers' FirstBlockCacheConfig default


@dataclass(frozen=True)
class SpeedOptions:
    """Which fast paths to use. All off is the plain path."""

    batch_guidance: bool = False
    attention: str | None = None  # an alias above or a diffusers backend name; None: diffusers' default
    compile: bool = False
    fp8_linears: bool = False
    step_cache: str | None = None  # "fbc"
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD
    distilled_lora: str | Path | None = None  # few-step mode
    lora_scale: float = 1.0
    fuse_lora: bool = True
    precision: str = DEFAULT_PRECISION  # "stock": diffusers' all-bf16 DiT (fantasy.model.precision)

    def describe(self) -> str:
        parts = []
        if self.precision != DEFAULT_PRECISION:
            parts.append(f"{self.precision} precision")
        if self.batch_guidance:
            parts.append("batched guidance")
        if self.attention:
            parts.append(f"attention {self.attention}")
        if self.compile:
            parts.append("regional compile")
        if self.fp8_linears:
            parts.append("fp8 linears")
        if self.step_cache:
            parts.append(f"step cache {self.step_cache} ({self.cache_threshold:g})")
        if self.distilled_lora:
            parts.append(f"few-step LoRA {Path(self.distilled_lora).name}")
        return ", ".join(parts) or "plain"


def parse_step_cache(text: str) -> tuple[str, float]:
    """'fbc' or 'fbc:0.08' -> ('fbc', threshold)."""
    kind, _, value = text.partition(":")
    if kind not in STEP_CACHES:
        raise InvalidSetting(f"unknown step cache '{kind}'; choose one of {', '.join(STEP_CACHES)} (e.g. fbc:0.05)")
    try:
        threshold = float(value) if value else DEFAULT_CACHE_THRESHOLD
    except ValueError:
        raise InvalidSetting(f"step cache threshold must be a number, got '{value}'") from None
    if not 0.0 <= threshold <= 1.0:
        raise InvalidSetting(f"step cache threshold must be between 0 and 1, got {threshold:g}")
    return kind, threshold


# ---- attention --------------------------------------------------------------------------------


def attention_backend_name(name: str) -> str:
    """An alias or a diffusers backend name -> the diffusers name; `InvalidSetting` for anything else."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    backend = ATTENTION_ALIASES.get(name.lower(), name.lower())
    known = {b.value for b in AttentionBackendName}
    if backend not in known:
        raise InvalidSetting(
            f"unknown attention backend '{name}'; choose one of {', '.join(ATTENTION_ALIASES)} "
            f"or a diffusers backend name ({', '.join(sorted(known))})"
        )
    return backend


def check_attention(name: str, device: torch.device) -> str:
    """The diffusers backend for `name`, if it can run here: its package is installed, and a GPU for GPU kernels."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    backend = attention_backend_name(name)
    try:
        _check_attention_backend_requirements(AttentionBackendName(backend))
    except RuntimeError as exc:
        raise InvalidSetting(f"attention backend '{name}' cannot be used: {exc}") from None
    if device.type != "cuda" and backend not in CPU_ATTENTION:
        raise InvalidSetting(
            f"attention backend '{name}' ({backend}) needs a CUDA GPU; the model is on '{device.type}'. "
            f"Here use one of: {', '.join(sorted(CPU_ATTENTION))} (sdpa = native)"
        )
    return backend


def set_attention(transformer, name: str, device: torch.device | None = None) -> str:
    """Route every attention of the DiT (our audio processors included) through one backend.

    `device`: where the DiT runs, when offloading keeps it elsewhere at rest (default: where it is).
    """
    backend = check_attention(name, device or _device_of(transformer))
    transformer.set_attention_backend(backend)
    return backend


def reset_attention(transformer) -> None:
    """Back to diffusers' default, for the processors *and* the dispatcher's process-wide active backend."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
    from diffusers.utils.constants import DIFFUSERS_ATTN_BACKEND

    transformer.reset_attention_backend()
    _AttentionBackendRegistry.set_active_backend(AttentionBackendName(DIFFUSERS_ATTN_BACKEND))


# ---- compile and cache --------------------------------------------------------------------------


def compile_blocks(transformer, fullgraph: bool = True) -> None:
    """Regional compilation: each `WanTransformerBlock` compiled once and reused by all 40 (diffusers)."""
    transformer.compile_repeated_blocks(fullgraph=fullgraph)


def enable_step_cache(transformer, kind: str = "fbc", threshold: float = DEFAULT_CACHE_THRESHOLD) -> None:
    """FirstBlockCache on the DiT; one cached residual per `cache_context` (per guidance pass)."""
    from diffusers import FirstBlockCacheConfig

    if kind != "fbc":
        raise InvalidSetting(f"unknown step cache '{kind}'; choose one of {', '.join(STEP_CACHES)}")
    if transformer.is_cache_enabled:
        transformer.disable_cache()
    transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    from fantasy.speed.cache_decision import install_cache_decision

    install_cache_decision(transformer)  # the rule every process count shares (`fantasy.speed.cache_decision`)


def _device_of(transformer) -> torch.device:
    return next(transformer.parameters()).device


# ---- all together --------------------------------------------------------------------------------


def check_options(pipe, options: SpeedOptions, parallel: ContextParallel | None = None) -> None:
    """Every check that can fail, before the pipeline is touched."""
    from fantasy.weights.quantize import check_fp8_matmuls

    if options.attention:  # where it will run: offloading keeps the DiT on the CPU at rest
        check_attention(options.attention, pipe._execution_device)
    if parallel is not None:
        from fantasy.speed.parallel import check_context_parallel

        backend = attention_backend_name(options.attention) if options.attention else None
        check_context_parallel(parallel, attention=backend)
    if options.step_cache:
        parse_step_cache(f"{options.step_cache}:{options.cache_threshold}")
    check_precision(options.precision)
    if options.fp8_linears:
        check_fp8_matmuls(pipe.transformer)
        if options.distilled_lora and not options.fuse_lora:
            raise InvalidSetting("fp8 linears need the few-step LoRA fused (drop --no-fuse-lora)")
    if options.distilled_lora and not Path(options.distilled_lora).is_file():
        from fantasy.errors import InputFileNotFound

        raise InputFileNotFound(f"LoRA file not found: {options.distilled_lora}")
    if not 0.0 < options.lora_scale <= 4.0:
        raise InvalidSetting(f"LoRA scale must be in (0, 4], got {options.lora_scale:g}")


def apply_speed(pipe, options: SpeedOptions, parallel: ContextParallel | None = None) -> list[str]:
    """Apply the switches in their one correct order; return a line per change, for the log.

    `parallel`: split the DiT over the launched processes as well (`fantasy.speed.parallel`), last.
    """
    from fantasy.speed.distill import load_distilled_lora, use_distilled_sampler
    from fantasy.weights.quantize import quantize_fp8_linears

    check_options(pipe, options, parallel)
    done: list[str] = []
    transformer = pipe.transformer
    if precision_of(transformer) != options.precision:
        apply_precision(transformer, options.precision)
        done.append(f"DiT precision: {options.precision}")
    if options.distilled_lora:
        fused = load_distilled_lora(pipe, options.distilled_lora, options.lora_scale, options.fuse_lora)
        use_distilled_sampler(pipe)
        done.append(f"few-step LoRA {Path(options.distilled_lora).name} ({'fused' if fused else 'separate layers'}), "
                    "stochastic sampler")
    if options.fp8_linears:
        done.append(f"fp8 linears: {len(quantize_fp8_linears(transformer))} layers")
    if options.attention:
        done.append(f"attention backend: {set_attention(transformer, options.attention, pipe._execution_device)}")
    if options.compile:  # the cache hooks' control flow and the collectives of context parallelism break graphs
        compile_blocks(transformer, fullgraph=not (options.step_cache or parallel))
        done.append("regional compile of the repeated blocks (first step compiles)")
    if options.step_cache:
        enable_step_cache(transformer, options.step_cache, options.cache_threshold)
        done.append(f"step cache: {options.step_cache}, threshold {options.cache_threshold:g}")
    pipe.batch_guidance = options.batch_guidance
    if options.batch_guidance:
        done.append("batched guidance")
    if parallel is not None:
        from fantasy.speed.parallel import enable_context_parallel

        done.extend(enable_context_parallel(pipe, parallel))
    return done
