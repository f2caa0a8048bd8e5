"""Which latent frames a context-parallel shard of video tokens covers.

Under diffusers' context parallelism each process holds one contiguous slice of the video tokens
(frame-major: `T_lat x H' x W'`), cut without regard to frame boundaries. The audio attention works per
latent frame (each frame attends to its own speech window), so a shard must know where it starts in the
whole sequence: `shard_bounds` is diffusers' split rule, and `FrameSpan` pads the shard out to whole
frames and cuts the padding off again. Pure arithmetic, no process group: tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def shard_bounds(total: int, rank: int, world: int, uneven: bool) -> tuple[int, int]:
    """(start, length) of `rank`'s slice of `total` tokens, exactly as diffusers cuts them.

    `uneven` (diffusers' `ulysses_anything` / `ring_anything`): `tensor_split`, the first `total % world`
    slices one token longer. Otherwise `chunk` on a length that must divide evenly (diffusers asserts it).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a group of {world}")
    if not uneven and total % world:
        raise ValueError(f"{total} tokens do not split evenly over {world} processes")
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (rank < extra)


@dataclass(frozen=True)
class FrameSpan:
    """Tokens `[start, start + length)` of a frame-major sequence, seen as whole latent frames.

    first/count: the latent frames the tokens touch; before/after: tokens to pad on each side so the
    slice fills exactly those frames.
    """

    first: int
    count: int
    before: int
    after: int

    @classmethod
    def whole(cls, num_frames: int) -> FrameSpan:
        return cls(0, num_frames, 0, 0)

    @classmethod
    def covering(cls, start: int, length: int, tokens_per_frame: int) -> FrameSpan:
        first = start // tokens_per_frame
        end_frame = -(-(start + length) // tokens_per_frame)  # ceil
        before = start - first * tokens_per_frame
        return cls(first, end_frame - first, before, end_frame * tokens_per_frame - start - length)

    @property
    def frames(self) -> slice:
        return slice(self.first, self.first + self.count)

    def pad(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> [B, before + S + after, ...] (zeros; their results are cut off by `unpad`)."""
        if not (self.before or self.after):
            return tokens
        widths = [0, 0] * (tokens.ndim - 2) + [self.before, self.after]
        return F.pad(tokens, widths)

    def unpad(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.before : tokens.shape[1] - self.after]
