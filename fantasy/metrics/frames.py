"""Video in, for evaluation: every frame as RGB uint8 plus the frame rate, or a clear error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from fantasy.errors import InputFileNotFound, UnsupportedVideo


@dataclass(frozen=True)
class Clip:
    """Decoded frames (N, H, W, 3) uint8 and the rate they are meant to be shown at."""

    frames: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])


def read_video(path: str | Path, max_frames: int | None = None, max_seconds: float | None = None) -> Clip:
    """Decode `path` with ffmpeg (imageio-ffmpeg: metadata first, then raw rgb24 frames).

    All frames are kept in memory: the metrics need several passes (landmarks, flow, identity).
    A generated clip (81 frames at 512 px) is ~64 MB; `max_frames` bounds longer inputs, and
    `max_seconds` stops after the frames shown in the first `max_seconds` (`ceil(s * fps)` frames),
    so a training loader never holds a long source video in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"Video file not found: {path}")
    try:
        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = reader.__next__()
        width, height = (int(v) for v in meta["size"])
        fps = float(meta.get("fps") or 0.0)
        if max_seconds is not None and np.isfinite(fps) and fps > 0:
            by_time = max(1, int(np.ceil(max_seconds * fps - 1e-6)))
            max_frames = by_time if max_frames is None else min(max_frames, by_time)
        frames = []
        for raw in reader:
            frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3))
            if max_frames is not None and len(frames) >= max_frames:
                reader.close()
                break
    except (OSError, RuntimeError, StopIteration, KeyError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsupportedVideo(
            f"Could not read '{path.name}' as a video ({detail[:200]}). Use an mp4/mov/webm/mkv file."
        ) from None
    if not frames:
        raise UnsupportedVideo(f"'{path.name}' contains no video frames.")
    if not np.isfinite(fps) or fps <= 0:
        raise UnsupportedVideo(f"'{path.name}' does not state a frame rate, so it cannot be matched to speech.")
    return Clip(frames=np.stack(frames), fps=fps)
