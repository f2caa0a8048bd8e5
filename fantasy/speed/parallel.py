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
  sees its slice, so the two sums behind the decision are all-reduced (else the processes disagree and hang);
- token counts (or, for Ulysses, head counts) that do not divide evenly switch that call to diffusers'
  `ulysses_anything` / `ring_anything` split, whose final gather gloo cannot do (unequal sizes): on gloo it
  is padded (`_gather_unequal_on_gloo`); even counts keep the plain split, which `torch.compile` can trace;
- on a CPU-only torch `enable_parallelism` takes `rank % torch.accelerator.device_count()` = `rank % 0`.

The identity branch (every video token against the face tokens) and the motion module (a timestep offset)
do not depend on where a token sits, so they are exact on a slice as they are.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fantasy.errors import FantasyError, InvalidSetting
from fantasy.model.frame_shards import shard_bounds
from fantasy.quiet import drop_known

KINDS = {
    "ulysses": "all-to-all of heads and tokens (any attention backend diffusers parallelises; best on NVLink)",
    "ring": "key/value blocks passed around a ring (needs a backend that returns the log-sum-exp)",
}
# Backends diffusers can run under context parallelism; the ring also needs the log-sum-exp, which `native`
# (torch SDPA) and NPU attention do not return. Checked against diffusers' registry in the tests.
PARALLEL_BACKENDS = {"native", "_native_cudnn", "_native_flash", "_native_npu", "flash", "flash_hub",
                     "flash_varlen_hub", "_flash_3_hub", "_flash_3_varlen_hub", "sage", "sage_hub"}
RING_BACKENDS = PARALLEL_BACKENDS - {"native", "_native_npu"}
DEFAULT_BACKEND = "native"  # diffusers' default (torch SDPA), the one that runs on CPUs
CONTROL_TIMEOUT = timedelta(days=30)  # the job channel waits for the next request this long
# What diffusers 0.42.1's context parallelism says on every rank that concerns nothing a user can act on: that
# the API is experimental, that Wan's plan entry for a per-token timestep (Wan 2.2) does not apply to our 1-D
# timestep (correct: it is not split), and torch's deprecation of the collective diffusers calls.
CP_NOISE = (
    ("diffusers.models.modeling_utils", r"^`enable_parallelism` is an experimental feature"),
    ("diffusers.hooks.context_parallel",
     r"^Expected input tensor to have 2 dimensions, but got 1 dimensions, split will not be applied"),
)
CP_DEPRECATION = r"`torch\.distributed\._functional_collectives\.all_gather_tensor` is deprecated"


@dataclass(frozen=True)
class ContextParallel:
    """`degree` processes share one video; `kind` is how self-attention sees all tokens."""

    degree: int
    kind: str = "ulysses"

    def describe(self) -> str:
        return f"context parallel: {self.kind} over {self.degree} processes"


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, accelerate) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_context_parallel(
    options: ContextParallel, attention: str | None = None, vram: str = "resident", device: str | None = None,
    world_size: int | None = None,
) -> None:
    """Every combination we refuse, with its reason, before any model is loaded.

    `attention`: the diffusers backend name the user chose (None: the default, torch SDPA).
    """
    world = launched_world_size() if world_size is None else world_size
    if options.kind not in KINDS:
        raise InvalidSetting(f"unknown context-parallel kind '{options.kind}'; choose one of {', '.join(KINDS)}")
    if options.degree < 2:
        raise InvalidSetting(f"--context-parallel needs at least 2 processes, got {options.degree}")
    if world != options.degree:
        raise InvalidSetting(
            f"--context-parallel {options.degree} needs {options.degree} processes, but {world} "
            f"{'was' if world == 1 else 'were'} launched: run it under "
            f"`torchrun --nproc_per_node {options.degree} -m fantasy ...` (or `torchrun ... app.py`)"
        )
    backend = attention or DEFAULT_BACKEND
    if backend not in PARALLEL_BACKENDS:
        raise InvalidSetting(
            f"attention backend '{backend}' cannot run under context parallelism; use one of "
            f"{', '.join(sorted(PARALLEL_BACKENDS))}"
        )
    if options.kind == "ring" and backend not in RING_BACKENDS:
        raise InvalidSetting(
            f"ring attention needs a backend that returns the log-sum-exp ({', '.join(sorted(RING_BACKENDS))}); "
            f"'{backend}' does not: use --context-parallel-kind ulysses, or --attention flash/cudnn/sage on GPUs"
        )
    if vram != "resident":
        raise InvalidSetting(f"--vram {vram} cannot be combined with --context-parallel: every process keeps "
                             "its whole DiT on its GPU (use --vram resident)")
    if device is not None and torch.device(device).type == "cpu" and torch.cuda.is_available():
        raise InvalidSetting("context parallelism on CPU processes needs a machine without CUDA "
                             "(diffusers builds its device mesh on the accelerator); drop --device cpu")


def init_processes(device: str | None = None) -> torch.device:
    """Join the launcher's process group (NCCL on GPUs, gloo on CPUs); the device this process uses."""
    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        if use_cuda:
            dist.init_process_group("nccl", device_id=local)
        else:
            dist.init_process_group("gloo")
    return local


def control_group():
    """A gloo group with a long timeout, for jobs and stop decisions (`fantasy.app.parallel_jobs`).

    Every process must call it, in the same order, after `init_processes`.
    """
    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def leave_processes() -> None:
    """Leave the process group, if this process joined one (a clean exit for torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_leader() -> bool:
    """The process that prints and writes files: rank 0 of the process group, or before it is joined, of the
    launch (torchrun's RANK), so that errors found before joining are also said once; a plain run leads."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def leader_check(check: Callable[[], object]) -> None:
    """Run `check` on the leader only (e.g. of the output path, which only rank 0 writes) and raise its
    `FantasyError` in every process of the group, so that they stop together instead of waiting for rank 0
    in their next collective."""
    if not (dist.is_available() and dist.is_initialized()):
        check()
        return
    box: list[FantasyError | None] = [None]
    if dist.get_rank() == 0:
        try:
            check()
        except FantasyError as exc:
            box = [exc]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]


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
        self.ulysses = cp_config.ulysses_degree > 1
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
        uneven = self.total % self.world != 0 or (self.ulysses and self.heads % self.world != 0)
        if uneven and self.compiled:
            raise InvalidSetting(
                f"compiled blocks under context parallelism need the video tokens ({self.total} = {frames // pt} "
                f"latent frames x {height // ph} x {width // pw}) and the {self.heads} heads to divide by "
                f"{self.world} processes; change the size or the frame count, or drop --compile"
            )
        self.config.ulysses_anything = uneven and self.ulysses
        self.config.ring_anything = uneven and not self.ulysses

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


def _share_cache_decision(transformer, group) -> bool:
    """Make FirstBlockCache decide from the whole residual, not this process's slice (else processes disagree
    and deadlock in the next collective): the two sums behind its relative change are all-reduced."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer.blocks[0])
    hook = registry.get_hook("fbc_leader_block_hook")
    if hook is None:
        return False

    @torch.compiler.disable
    def should_compute(residual: torch.Tensor) -> bool:
        previous = hook.state_manager.get_state().head_block_residual
        if previous is None:
            return True
        sums = torch.stack([(residual - previous).abs().sum(), previous.abs().sum()]).double()
        dist.all_reduce(sums, group=group)
        return (sums[0] / sums[1]).item() > hook.threshold

    hook._should_compute_remaining_blocks = should_compute
    return True


def enable_context_parallel(pipe, options: ContextParallel) -> list[str]:
    """Split the DiT over the launched processes. Call after `fantasy.speed.switches.apply_speed`'s other switches
    (the step cache must be inside diffusers' split hook on block 0, so it is installed first)."""
    from diffusers import ContextParallelConfig
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from fantasy.model.adapter import audio_processors

    transformer = pipe.transformer
    if getattr(transformer, "_parallel_config", None) is not None:
        raise InvalidSetting("context parallelism is already enabled on this pipeline")
    backend = getattr(transformer.blocks[0].attn1.processor, "_attention_backend", None)
    backend = AttentionBackendName(backend) if backend else _AttentionBackendRegistry.get_active_backend()[0]
    check_context_parallel(options, attention=backend.value, world_size=dist.get_world_size())
    degree = {"ulysses_degree": options.degree} if options.kind == "ulysses" else {"ring_degree": options.degree}
    drop_known(CP_NOISE)
    warnings.filterwarnings("ignore", message=CP_DEPRECATION, category=FutureWarning)
    with _cpu_only_device_count():
        transformer.enable_parallelism(config=ContextParallelConfig(**degree))
    cp_config = transformer._parallel_config.context_parallel_config
    _gather_unequal_on_gloo()
    compiled = any(getattr(block, "_compiled_call_impl", None) is not None for block in transformer.blocks)
    shard = TokenShard(cp_config, transformer.config.patch_size, transformer.config.num_attention_heads, compiled)
    transformer.register_forward_pre_hook(shard.record, with_kwargs=True)
    for processor in audio_processors(transformer):
        processor.token_shard = shard
    done = [f"{options.describe()} (attention {backend.value}, rank {shard.rank})"]
    if _share_cache_decision(transformer, cp_config._flattened_mesh.get_group()):
        done.append("step cache: skip decision all-reduced over the processes")
    return done
