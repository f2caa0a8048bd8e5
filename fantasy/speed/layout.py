"""How one video is laid out over N processes, and every layout that cannot work, refused before loading.

diffusers' context parallelism (`ContextParallelConfig`) takes a Ulysses degree and a ring degree whose product
is the process count: Ulysses swaps tokens for heads with all-to-alls (it needs the heads to split over its
processes), the ring passes key/value blocks around (it needs an attention backend that returns the
log-sum-exp). Both together (`--ulysses-degree U` with `--context-parallel N`: Ulysses U x ring N/U) is what
lets more processes run than Ulysses alone allows on Wan's 40 heads, e.g. 16 = Ulysses 8 x ring 2.

The rules, each checked here against diffusers 0.42.1 (and in the tests against its code):
- Ulysses over U processes pads the heads to a multiple of U and asserts that the padding is smaller than one
  process's share (`_maybe_pad_qkv_head`): with 40 heads U = 2-8, 10, 14, 20, 40 work, 9, 11-13, 15-19 and 21-39
  fail -- inside diffusers, after every process has loaded, with a bare `AssertionError`. Refused here instead.
- its uneven paths (`ulysses_anything`, `ring_anything`) exist for Ulysses alone or the ring alone; Ulysses x ring
  needs the video tokens of every call to divide by N and the heads by U;
- compiled blocks cannot trace the uneven paths either (`TokenShard` checks each call; here the sizes known
  before loading are checked the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fantasy.errors import InvalidSetting

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
SHARDED = "sharded"  # the VRAM mode that shards the DiT and umT5 over the group (`fantasy.speed.sharding`)
TIMEOUT_S = 600.0  # a collective waits this long for the other processes (--collective-timeout)


@dataclass(frozen=True)
class ContextParallel:
    """`degree` processes share one video: Ulysses over `ulysses_degree` of them x a ring over the rest.

    `kind` alone sets the whole degree to one method; `ulysses_degree` (1 < U < degree) combines them.
    `shard_weights`: FSDP2 shards the DiT and umT5 over the same processes (`--vram sharded`).
    `timeout_s`: how long a collective waits for the others before this process gives up with an error.
    """

    degree: int
    kind: str = "ulysses"
    ulysses_degree: int | None = None
    shard_weights: bool = False
    timeout_s: float = TIMEOUT_S

    @property
    def ulysses(self) -> int:
        if self.ulysses_degree is not None:
            return self.ulysses_degree
        return self.degree if self.kind == "ulysses" else 1

    @property
    def ring(self) -> int:
        return self.degree // self.ulysses

    @property
    def hybrid(self) -> bool:
        return self.ulysses > 1 and self.ring > 1

    def describe(self) -> str:
        if self.hybrid:
            how = f"ulysses {self.ulysses} x ring {self.ring}"
        else:
            how = "ulysses" if self.ulysses > 1 else "ring"
        return f"context parallel: {how} over {self.degree} processes" + (
            ", weights sharded (FSDP2)" if self.shard_weights else "")


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, accelerate) started; 1 without one."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def ulysses_splits(heads: int, degree: int) -> bool:
    """Whether diffusers can split `heads` over `degree` Ulysses processes (evenly, or padded as it allows)."""
    if heads % degree == 0:
        return True
    padding = degree - heads % degree
    return padding < -(-heads // degree)  # diffusers' `_maybe_pad_qkv_head` assertion


def working_ulysses_degrees(heads: int) -> list[int]:
    return [d for d in range(2, heads + 1) if ulysses_splits(heads, d)]


def _ranges(values: list[int]) -> str:
    """2, 3, 4, 5, 10 -> '2-5, 10'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _suggest_hybrid(heads: int, degree: int) -> str:
    """'--ulysses-degree 8 (x ring 2)' for the largest U that divides both, or '' when there is none."""
    choices = [u for u in range(degree - 1, 1, -1) if degree % u == 0 and heads % u == 0]
    if not choices:
        return ""
    u = choices[0]
    return (f"; or combine: --context-parallel {degree} --ulysses-degree {u} (Ulysses {u} x ring {degree // u}, "
            "needs --attention flash/cudnn/sage)")


def check_heads(options: ContextParallel, heads: int) -> None:
    """The Ulysses degree against the DiT's head count (one line naming what would work)."""
    u = options.ulysses
    if u <= 1:
        return
    if options.hybrid and heads % u:
        fits = [d for d in range(2, options.degree) if options.degree % d == 0 and heads % d == 0]
        raise InvalidSetting(
            f"Ulysses x ring needs the DiT's {heads} attention heads to divide by the Ulysses degree, and {u} does "
            "not (diffusers splits uneven heads only for Ulysses alone)"
            + (f"; use --ulysses-degree {fits[-1]}" if fits else "")
        )
    if not ulysses_splits(heads, u):
        padded = -(-heads // u) * u
        raise InvalidSetting(
            f"Ulysses over {u} processes cannot split the DiT's {heads} attention heads (diffusers pads them to "
            f"{padded} = {u} x {padded // u} and refuses a padding of {padded - heads} heads, not fewer than each "
            f"process's {padded // u}); Ulysses degrees that work with {heads} heads: "
            f"{_ranges(working_ulysses_degrees(heads))}"
            + _suggest_hybrid(heads, options.degree)
        )


def check_context_parallel(
    options: ContextParallel, attention: str | None = None, vram: str = "resident", device: str | None = None,
    world_size: int | None = None, heads: int | None = None,
) -> None:
    """Every combination we refuse, with its reason, before any model is loaded.

    `attention`: the diffusers backend name the user chose (None: the default, torch SDPA). `heads`: the DiT's
    attention heads (None: not known yet; `fantasy.speed.parallel` checks again on the loaded DiT).
    """
    world = launched_world_size() if world_size is None else world_size
    if options.kind not in KINDS:
        raise InvalidSetting(f"unknown context-parallel kind '{options.kind}'; choose one of {', '.join(KINDS)}")
    if options.degree < 2:
        raise InvalidSetting(f"--context-parallel needs at least 2 processes, got {options.degree}")
    if options.ulysses_degree is not None:
        u = options.ulysses_degree
        if options.kind != "ulysses":
            raise InvalidSetting("--ulysses-degree sets how many of the processes use Ulysses (the others form "
                                 "rings); drop --context-parallel-kind ring")
        if not 1 <= u <= options.degree or options.degree % u:
            raise InvalidSetting(f"--ulysses-degree must divide --context-parallel {options.degree} "
                                 f"(Ulysses U x ring {options.degree}/U), got {u}")
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
    if options.ring > 1 and backend not in RING_BACKENDS:
        which = "ring attention" if not options.hybrid else f"Ulysses x ring (ring {options.ring})"
        raise InvalidSetting(
            f"{which} needs a backend that returns the log-sum-exp ({', '.join(sorted(RING_BACKENDS))}); "
            f"'{backend}' does not: use --context-parallel-kind ulysses, or --attention flash/cudnn/sage on GPUs"
        )
    if vram not in ("resident", SHARDED):
        raise InvalidSetting(f"--vram {vram} cannot be combined with --context-parallel: every process keeps "
                             "its DiT on its GPU (use --vram resident, or --vram sharded to split the weights)")
    if device is not None and torch.device(device).type == "cpu" and torch.cuda.is_available():
        raise InvalidSetting("context parallelism on CPU processes needs a machine without CUDA "
                             "(diffusers builds its device mesh on the accelerator); drop --device cpu")
    if not options.timeout_s > 0:
        raise InvalidSetting(f"--collective-timeout must be more than 0 seconds, got {options.timeout_s:g}")
    if heads is not None:
        check_heads(options, heads)


def check_token_split(options: ContextParallel, token_counts: list[int], compiled: bool = False) -> None:
    """Sizes that only diffusers' uneven split could cut, for layouts that cannot use it (Ulysses x ring,
    compiled blocks): refused before loading, with the counts. `token_counts`: video tokens per DiT call."""
    if not (options.hybrid or compiled):
        return
    for tokens in sorted(set(token_counts)):
        if tokens % options.degree:
            why = "Ulysses x ring" if options.hybrid else "compiled blocks under context parallelism"
            raise InvalidSetting(
                f"{why} needs the video tokens of each window ({tokens}) to divide by {options.degree} processes "
                "(diffusers splits uneven counts only for Ulysses or the ring alone); change the size or the "
                "frame count"
            )


def video_tokens(width: int, height: int, frames: int, patch: tuple[int, int, int] = (1, 2, 2)) -> int:
    """Tokens of one DiT call: latent frames x patches (the VAE: 4x in time, 8x in space)."""
    pt, ph, pw = patch
    return ((frames - 1) // 4 + 1) // pt * (height // 8 // ph) * (width // 8 // pw)
