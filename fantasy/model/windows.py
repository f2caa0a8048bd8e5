"""Per-latent-frame audio windows: which wav2vec2 tokens each latent frame of the video attends to.

Reproduces the official release's split exactly (reference §1.6), including its floating-point
order, because lip timing depends on it:

- `tpf = L / num_frames` audio tokens per video frame, `half = int(2 * tpf)`;
- latent frame i >= 1 covers video frames 4i-3..4i; its centre token is
  `int((tpf*(4i-3) + tpf*(4i+1)) / 2) - 1` and its core window is `[centre-half, centre+half]`;
- latent frame 0 gets the `2*half+1` tokens that end where window 1 starts;
- every window is widened by `expand` tokens on each side (4 in the release), tokens outside
  `[0, L-1]` are dropped, and the window is right-padded with zeros to a common length; the valid
  count is returned so attention can mask the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EXPAND_TOKENS = 4


@dataclass(frozen=True)
class WindowRange:
    """Inclusive token range of one latent frame's window (may extend past either end of the audio)."""

    start: int
    end: int

    def valid_count(self, num_tokens: int) -> int:
        return max(0, min(self.end, num_tokens - 1) - max(self.start, 0) + 1)


def latent_frame_count(num_frames: int, temporal_factor: int = 4) -> int:
    if (num_frames - 1) % temporal_factor != 0:
        raise ValueError(f"num_frames must be {temporal_factor}k+1, got {num_frames}")
    return (num_frames - 1) // temporal_factor + 1


def window_ranges(
    num_tokens: int, num_frames: int, expand: int = EXPAND_TOKENS,
    start_frame: int = 0, tokens_per_frame: float | None = None,
) -> list[WindowRange]:
    """Expanded inclusive token range of every latent frame, in the release's arithmetic.

    For one clip (the release) `start_frame` is 0 and `tokens_per_frame` is `num_tokens / num_frames`.
    A window of a long video starting at video frame `start_frame` (a multiple of 4) passes the whole
    track's tokens and its rate, so each latent frame gets the tokens at its absolute time.
    """
    num_latent = latent_frame_count(num_frames)
    tpf = num_tokens / num_frames if tokens_per_frame is None else tokens_per_frame
    half = int(2 * tpf)
    cores: list[tuple[int, int]] = []
    for i in range(1, num_latent):
        first, after = start_frame + 4 * i - 3, start_frame + 4 * i + 1
        centre = int((tpf * first + tpf * after) / 2) - 1
        cores.append((centre - half, centre + half))
    first_start = cores[0][0] if cores else 0
    cores.insert(0, (first_start - 2 * half, first_start))
    return [WindowRange(s - expand, e + expand) for s, e in cores]


def split_into_windows(
    tokens: torch.Tensor, num_frames: int, expand: int = EXPAND_TOKENS,
    start_frame: int = 0, tokens_per_frame: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, C] projected audio -> ([B, T_lat, W, C] right-zero-padded windows, [T_lat] valid lengths)."""
    batch, num_tokens, channels = tokens.shape
    ranges = window_ranges(num_tokens, num_frames, expand, start_frame, tokens_per_frame)
    width = max(r.end - r.start + 1 for r in ranges)
    windows = tokens.new_zeros(batch, len(ranges), width, channels)
    lengths = torch.zeros(len(ranges), dtype=torch.long)
    for j, r in enumerate(ranges):
        lo, hi = max(r.start, 0), min(r.end, num_tokens - 1)
        count = max(0, hi - lo + 1)
        if count:
            windows[:, j, :count] = tokens[:, lo : hi + 1]
        lengths[j] = count
    return windows, lengths
