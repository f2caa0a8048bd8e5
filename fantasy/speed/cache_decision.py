"""FirstBlockCache's skip decision, made so that it cannot depend on how many processes share the video.

diffusers' rule: skip blocks 2..N when mean|r - r_prev| / mean|r_prev| <= threshold, r being block 1's residual.
Under context parallelism each process holds a slice of r; deciding from a slice makes processes disagree and
hang in the next collective, and summing partial fp32 sums (what this module replaced) rounds differently from
one process, so a threshold inside that rounding gap (~1e-8) gave a different video on 1 and 2 processes.

Here every run, alone or in a group, decides from the same table: per-token sums of |r - r_prev| and |r_prev|
in float64 ([2, batch, tokens]), gathered across the group in token order, then one sum over the whole table.
The per-token sums of a slice are the sums of those tokens (the blocks give the same rows in 1 and N processes),
and every process then sums the same table in the same order: the same ratio, bit for bit.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist

from fantasy.model.frame_shards import shard_bounds


class CacheDecision:
    """Replaces `FBCHeadBlockHook._should_compute_remaining_blocks` (see the module docstring)."""

    def __init__(self, hook, shard=None, group=None):
        """`shard`: this process's `fantasy.speed.parallel.TokenShard` (None: one process); `group`: its group."""
        self.hook, self.shard, self.group = hook, shard, group
        self.ratios: deque[float] = deque(maxlen=4096)  # the latest ratios, for the log and the tests

    def table(self, residual: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """[2, batch, tokens] float64 per-token sums over the whole sequence (gathered under a group)."""
        rows = torch.stack([(residual - previous).abs().double().sum(-1), previous.abs().double().sum(-1)])
        if self.shard is None:
            return rows
        sizes = [shard_bounds(self.shard.total, r, self.shard.world, self.shard.uneven)[1]
                 for r in range(self.shard.world)]
        longest = max(sizes)
        padded = torch.cat([rows, rows.new_zeros(*rows.shape[:-1], longest - rows.shape[-1])], dim=-1)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[..., :size] for part, size in zip(parts, sizes, strict=True)], dim=-1)

    @torch.compiler.disable
    def __call__(self, residual: torch.Tensor) -> bool:
        previous = self.hook.state_manager.get_state().head_block_residual
        if previous is None:
            return True
        sums = self.table(residual, previous).sum(dim=(1, 2))
        ratio = (sums[0] / sums[1]).item()
        self.ratios.append(ratio)
        return ratio > self.hook.threshold


def install_cache_decision(transformer, shard=None, group=None) -> CacheDecision | None:
    """Replace FirstBlockCache's decision by `CacheDecision` (one process: `shard` None), if the cache is on."""
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer.blocks[0])
    hook = registry.get_hook("fbc_leader_block_hook")
    if hook is None:
        return None
    decision = CacheDecision(hook, shard, group)
    hook._should_compute_remaining_blocks = decision
    transformer._fantasy_cache_decision = decision
    return decision
