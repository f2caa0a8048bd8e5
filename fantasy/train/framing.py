"""Where a training sample's frames come from: which source frames, and the resize + centre crop.

Frames and landmarks go through the same `Framing`, so a landmark keeps pointing at the same pixel
of the face after resampling to the training frame rate and cropping to the training size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def sample_indices(num_source: int, source_fps: float, fps: float, num_frames: int) -> np.ndarray:
    """Source frame shown nearest each training frame time i/fps: round(i * source_fps / fps), half up."""
    times = np.arange(num_frames) * (source_fps / fps)
    return np.minimum(np.floor(times + 0.5).astype(np.int64), num_source - 1)


def frames_needed(source_fps: float, fps: float, num_frames: int) -> int:
    """Source frames a clip must have to last `num_frames / fps` seconds (tolerates float rounding)."""
    return int(np.ceil(num_frames * source_fps / fps - 1e-6))


@dataclass(frozen=True)
class Framing:
    """Scale the source to cover width x height (aspect kept), then cut the centre out.

    Coordinates follow pixel centres (as OpenCV resizes): x' = (x + 0.5) * sx - 0.5 - left.
    """

    source_width: int
    source_height: int
    width: int
    height: int

    @property
    def scaled_size(self) -> tuple[int, int]:
        """(width, height) after scaling, before the crop; never smaller than the target."""
        scale = max(self.width / self.source_width, self.height / self.source_height)
        return (max(self.width, round(self.source_width * scale)), max(self.height, round(self.source_height * scale)))

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) of the crop inside the scaled frame."""
        sw, sh = self.scaled_size
        return (sw - self.width) // 2, (sh - self.height) // 2

    def frame(self, image: np.ndarray) -> np.ndarray:
        """One (H, W, 3) uint8 source frame -> the training frame; area filter down, cubic up."""
        sw, sh = self.scaled_size
        shrinking = sw < self.source_width
        if (sw, sh) != (self.source_width, self.source_height):
            interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
            image = cv2.resize(image, (sw, sh), interpolation=interpolation)
        left, top = self.offset
        return np.ascontiguousarray(image[top : top + self.height, left : left + self.width])

    def points(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) source pixel coordinates (x, y) -> training-frame coordinates."""
        sw, sh = self.scaled_size
        scale = np.array([sw / self.source_width, sh / self.source_height])
        left, top = self.offset
        return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5 - np.array([left, top])
