"""Long speech: consecutive 81-frame windows chained by motion frames, in sync with absolute time.

Rules (tested):
- total frames `N = int(fps*d // 4)*4 + 5` with `d = min(duration, max_duration)`: the release's rule
  without its 81-frame limit, so the video covers the whole speech (1 to 5 frames longer) unless the
  maximum duration cuts it. N <= 81 is exactly the release's single clip.
- window 0 is frames [0, 81); each next window starts 5 frames (the motion frames, two latent frames)
  before the end of what exists, is conditioned on those 5 frames instead of the portrait, and adds up to
  76 new frames. The 5 regenerated overlap frames are dropped, so no frame is duplicated or skipped.
- the portrait's CLIP tokens condition every window (identity anchor); audio windows come from the
  whole track's features at each latent frame's absolute time.
- colour: each window's regenerated overlap is compared with the frames it was conditioned on, and a
  per-channel gain/offset mapping the one onto the other is applied to the window's new frames, so
  colour cannot drift from window to window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

MOTION_FRAMES = 5  # 1 + 4: two latent frames of Wan's causal VAE


def total_frame_count(duration_s: float, fps: float, max_duration_s: float) -> tuple[int, bool]:
    """(frames to generate, whether the speech is cut by the maximum duration).

    The release's rule `int(fps*d // 4)*4 + 5` on `d = min(duration, max_duration)`, without its 81 cap.
    """
    used = min(duration_s, max_duration_s)
    return int(fps * used // 4) * 4 + 5, duration_s > max_duration_s


@dataclass(frozen=True)
class Window:
    start: int  # first video frame (absolute), a multiple of 4
    length: int  # frames generated, 4k+1
    overlap: int  # leading frames that repeat the previous window (conditioned on, then dropped)

    @property
    def new_frames(self) -> range:
        return range(self.start + self.overlap, self.start + self.length)


def plan_windows(total: int, clip_frames: int = 81, motion: int = MOTION_FRAMES) -> list[Window]:
    if (total - 1) % 4 or (clip_frames - 1) % 4 or (motion - 1) % 4 or motion >= clip_frames:
        raise ValueError(f"frames must be 4k+1 with motion < clip: total={total} clip={clip_frames} motion={motion}")
    windows = [Window(0, min(total, clip_frames), 0)]
    done = windows[0].length
    while done < total:
        new = min(clip_frames - motion, total - done)
        windows.append(Window(done - motion, motion + new, motion))
        done += new
    return windows


@dataclass(frozen=True)
class ColourMatch:
    """Per-channel `out = gain * x + offset`, fitted so regenerated overlap frames match the originals."""

    gain: np.ndarray
    offset: np.ndarray

    @classmethod
    def fit(cls, generated: np.ndarray, reference: np.ndarray) -> ColourMatch:
        g = generated.reshape(-1, 3).astype(np.float64)
        r = reference.reshape(-1, 3).astype(np.float64)
        # +1 (a grey level) keeps flat regions from giving wild gains; identical inputs give gain 1.
        gain = np.clip((r.std(0) + 1.0) / (g.std(0) + 1.0), 0.5, 2.0)
        return cls(gain=gain, offset=r.mean(0) - gain * g.mean(0))

    def apply(self, frames: np.ndarray) -> np.ndarray:
        return np.clip(frames.astype(np.float64) * self.gain + self.offset, 0, 255).round().astype(np.uint8)


class FrameStitcher:
    """Joins the windows' decoded frames into one video, as they are decoded.

    A later window's first `overlap` frames regenerate frames that already exist: they are dropped, after the
    colour match is fitted on them against the frames the window was conditioned on (`motion_frames`), and the
    window's new frames are colour matched. The last `MOTION_FRAMES` frames handed out are kept: the next
    window starts from them.
    """

    def __init__(self) -> None:
        self.tail: np.ndarray | None = None  # the last frames handed out (at most MOTION_FRAMES)

    def motion_frames(self, window: Window) -> np.ndarray | None:
        """uint8 [overlap, H, W, 3]: the frames `window` is conditioned on (None for the first window)."""
        if window.overlap == 0:
            return None
        if self.tail is None or len(self.tail) < window.overlap:
            raise ValueError(f"window at frame {window.start} needs {window.overlap} earlier frames")
        return self.tail[-window.overlap:]

    def add(self, window: Window, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the new frames of `window` from its decoded chunks (uint8 [n, H, W, 3], in order)."""
        reference = self.motion_frames(window)
        repeated: list[np.ndarray] = []  # the regenerated overlap, until all of it is seen
        colour: ColourMatch | None = None
        done = 0
        for frames in chunks:
            start, done = done, done + len(frames)
            if reference is not None and colour is None:
                repeated.append(frames[: window.overlap - start])
                if done >= window.overlap:  # all repeated frames seen: fit the colour match on them
                    colour = ColourMatch.fit(np.concatenate(repeated), reference)
            new = frames[max(0, window.overlap - start):]
            if not len(new):
                continue
            new = colour.apply(new) if colour is not None else new
            self.tail = np.concatenate([self.tail, new])[-MOTION_FRAMES:] if self.tail is not None else new[-MOTION_FRAMES:]
            yield new
