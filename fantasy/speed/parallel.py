"""One video on several GPUs: diffusers' own context parallelism on the DiT, made exact for our processors.

Launch one process per GPU (`torchrun --nproc_per_node N ... --context-parallel N`). Every process loads the
whole pipeline and runs the same generation (same CPU noise, same inputs); inside the DiT diffusers splits
the video tokens over the processes before block 0 and gathers them after the head
(`WanTransformer3DModel._cp_plan`), and self-attention exchanges heads for tokens with an all-to-all
(Ulysses) or passes key/value blocks around (ring). Text and image tokens are not split.

What we add to diffusers' mechanism, each needed for an exact result:
- the audio cross-attention works per latent frame, so each process must know where its slice starts: a
  forward pre-hook records the whole token count, and `TokenShard.locate` applies diffusers' split rule
  (`fantasy.model.frame_shards`); the processor pads its slice to whole frames and drops the padding after;
- FirstBlockCache decides "skip the remaining blocks?" from the first block's residual; each process only
  sees its slice, so the decision is made from the whole residual: per-token sums, gathered in token order,
  summed once, the same numbers in every process and in one process (`CacheDecision`), else the processes
  disagree and hang, or decide differently from one process near the threshold;
- token counts (or, for Ulysses, head counts) that do not divide evenly switch that call to diffusers'
  `ulysses_anything` / `ring_anything` split, whose final gather gloo cannot do (unequal sizes): on gloo it
  is padded (`_gather_unequal_on_gloo`); even counts keep the plain split, which `torch.compile` can trace;
- on a CPU-only torch `enable_parallelism` takes `rank % torch.accelerator.device_count()` = `rank % 0`;
- with `shard_weights`, FSDP2 shards the DiT and umT5 over the same mesh (`fantasy.speed.sharding`).

The layout rules (Ulysses degree against the heads, Ulysses x ring) are in `fantasy.speed.layout`; joining the
group, agreeing and failing in bounded time in `fantasy.speed.group`.

The identity branch (every video token against the face tokens) and the motion module (a timestep offset)
do not depend on where a token sits, so they are exact on a slice as they are.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist

from fantasy.errors import InvalidSetting
from fantasy.model.frame_shards import shard_bounds
from fantasy.quiet import drop_known
from fantasy.speed.group import (  # noqa: F401 (re-exported: the group's life cycle, for the app layer)
    control_group,
    init_processes,
    is_leader,
    leader_check,
    leave_processes,
)
from fantasy.speed.layout import (  # noqa: F401 (re-exported)
    KINDS,
    PARALLEL_BACKENDS,
    RING_BACKENDS,
    ContextParallel,
    check_context_parallel,
    launched_world_size,
)

# What diffusers 0.42.1's context parallelism says on every rank that concerns nothing a user can act on: that
# the API is experimental, that Wan's plan entry for a per-token timestep (Wan 2.2) does not apply to our 1-D
# timestep (correct: it is not split), and torch's deprecation of the collective diffusers calls.
CP_NOISE = (
    ("diffusers.models.modeling_utils", r"^`enable_parallelism` is an experimental feature"),
    ("diffusers.hooks.context_parallel",
     r"^Expected input tensor to have 2 dimensions, but got 1 dimensions, split will not be applied"),
)
CP_DEPRECATION = r"`torch\.distributed\._functional_collectives\.all_gather_tensor` is deprecated"


# ---- diffusers' context parallelism on our pipeline ------------------------------------------------------


class TokenShard:
    """Where this process's video tokens sit in the whole sequence of the current transformer call.

    It also picks diffusers' split for the call: the plain even one when the tokens (and, for Ulysses, the
    heads) divide by the process count, else the `*_anything` one, whose uneven slices and size exchanges
    cost a little more and which `torch.compile` cannot trace (so compiled blocks refuse such sizes).
    """

    def __init__(self, cp_config, patch_size: tuple[int, int, int], heads: int, compiled: bool = False):
        mesh = cp_config._flattened_mesh
        self.config = cp_config
        self.rank, self.world = dist.get_rank(mesh.get_group()), mesh.size()
        self.ulysses_degree, self.ring_degree = cp_config.ulysses_degree, cp_config.ring_degree
        self.patch, self.heads, self.compiled = tuple(patch_size), heads, compiled
        self.total: int | None = None

    @property
    def uneven(self) -> bool:
        return bool(self.config.ulysses_anything or self.config.ring_anything)

    def record(self, _module, args, kwargs) -> None:
        """Forward pre-hook on the transformer: the token count before diffusers splits it, and the split."""
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        frames, height, width = hidden.shape[2:]
        pt, ph, pw = self.patch
        self.total = (frames // pt) * (height // ph) * (width // pw)
        ulysses = self.ulysses_degree > 1
        uneven = self.total % self.world != 0 or (ulysses and self.heads % self.ulysses_degree != 0)
        hybrid = ulysses and self.ring_degree > 1
        if uneven and (self.compiled or hybrid):
            why = "Ulysses x ring needs" if hybrid else "compiled blocks under context parallelism need"
            raise InvalidSetting(
                f"{why} the video tokens ({self.total} = {frames // pt} latent frames x {height // ph} x "
                f"{width // pw}) to divide by {self.world} processes and the {self.heads} heads by the Ulysses "
                f"degree {self.ulysses_degree}; change the size or the frame count"
                + (", or drop --compile" if self.compiled else "")
            )
        self.config.ulysses_anything = uneven and ulysses
        self.config.ring_anything = uneven and not ulysses

    def locate(self, local: int) -> tuple[int, int]:
        """(start, total) for a slice of `local` tokens; an error if diffusers cut it some other way."""
        if self.total is None:
            raise RuntimeError("the video token count was not recorded (transformer pre-hook missing)")
        start, length = shard_bounds(self.total, self.rank, self.world, self.uneven)
        if length != local:
            raise RuntimeError(f"rank {self.rank} holds {local} of {self.total} tokens; the split rule says {length}")
        return start, self.total


@contextmanager
def _cpu_only_device_count():
    """Workaround, diffusers 0.42.1 `ModelMixin._resolve_parallel_config`: it builds the process's device as
    `rank % torch.accelerator.device_count()`, a ZeroDivisionError on a CPU-only build. Count one device there."""
    count = torch.accelerator.device_count
    if count() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = count


def _gather_unequal_on_gloo() -> None:
    """Workaround, diffusers 0.42.1 `hooks.context_parallel._all_gather_anything`: it all-gathers slices of
    unequal length, which NCCL accepts and gloo refuses ("invalid tensor size"). On gloo, pad every slice to
    the longest, gather, and cut each back: the same tensor diffusers means to build. Installed once."""
    import diffusers.hooks.context_parallel as cp_hooks
    from diffusers.models._modeling_parallel import gather_size_by_comm

    original = cp_hooks._all_gather_anything
    if getattr(original, "_fantasy_gloo_padding", False):
        return

    def gather(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
        if "gloo" not in str(dist.get_backend(group)):
            return original(tensor, dim, group)
        sizes = gather_size_by_comm(tensor.shape[dim], group)
        tensor = tensor.contiguous()
        longest = max(sizes)
        if tensor.shape[dim] < longest:
            pad_shape = list(tensor.shape)
            pad_shape[dim] = longest - tensor.shape[dim]
            tensor = torch.cat([tensor, tensor.new_zeros(pad_shape)], dim=dim)
        parts = [torch.empty_like(tensor) for _ in sizes]
        dist.all_gather(parts, tensor, group=group)
        return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes, strict=True)], dim=dim)

    gather._fantasy_gloo_padding = True
    cp_hooks._all_gather_anything = gather


def enable_context_parallel(pipe, options: ContextParallel) -> list[str]:
    """Split the DiT over the launched processes (and shard the weights, if asked). Call after
    `fantasy.speed.switches.apply_speed`'s other switches (the step cache must be inside diffusers' split hook on
    block 0, so it is installed first; the weights must be final before they are sharded)."""
    from diffusers import ContextParallelConfig
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from fantasy.model.adapter import audio_processors
    from fantasy.speed.cache_decision import install_cache_decision

    transformer = pipe.transformer
    if getattr(transformer, "_parallel_config", None) is not None:
        raise InvalidSetting("context parallelism is already enabled on this pipeline")
    backend = getattr(transformer.blocks[0].attn1.processor, "_attention_backend", None)
    backend = AttentionBackendName(backend) if backend else _AttentionBackendRegistry.get_active_backend()[0]
    heads = transformer.config.num_attention_heads
    check_context_parallel(options, attention=backend.value, world_size=dist.get_world_size(), heads=heads)
    drop_known(CP_NOISE)
    warnings.filterwarnings("ignore", message=CP_DEPRECATION, category=FutureWarning)
    with _cpu_only_device_count():
        transformer.enable_parallelism(
            config=ContextParallelConfig(ulysses_degree=options.ulysses, ring_degree=options.ring))
    cp_config = transformer._parallel_config.context_parallel_config
    _gather_unequal_on_gloo()
    compiled = any(getattr(block, "_compiled_call_impl", None) is not None for block in transformer.blocks)
    shard = TokenShard(cp_config, transformer.config.patch_size, heads, compiled)
    transformer.register_forward_pre_hook(shard.record, with_kwargs=True)
    for processor in audio_processors(transformer):
        processor.token_shard = shard
    done = [f"{options.describe()} (attention {backend.value}, rank {shard.rank})"]
    mesh = cp_config._flattened_mesh
    if install_cache_decision(transformer, shard, mesh.get_group()) is not None:  # replaces the one-process rule
        done.append("step cache: decided from the whole residual (per-token sums gathered over the processes)")
    if options.shard_weights:
        from fantasy.speed.sharding import shard_weights

        done.extend(shard_weights(pipe, mesh))
    return done
