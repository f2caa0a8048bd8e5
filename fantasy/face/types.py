"""What every face backend speaks: boxes with scores, 68 iBUG landmarks, an identity embedding.

A backend (`FaceBackend`) is anything with `detect`, `landmarks`, `embed` and `describe`. The rest of
the project (face check, identity crop, lip masks, metrics) only talks to this interface, so the
default dlib backend and the optional face-alignment one are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fantasy.errors import UnsupportedImage

# 68-point iBUG 300-W layout (dlib and FAN agree): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
# outer lips 48-59, inner lips 60-67.
NUM_LANDMARKS = 68
RIGHT_EYE = slice(36, 42)  # the subject's right eye: on the left of the picture
LEFT_EYE = slice(42, 48)
OUTER_LIPS = slice(48, 60)
LIPS = slice(48, 68)

# frame (H, W, 3) RGB uint8 -> (68, 2) landmarks, or None when the frame shows no face.
LandmarkProvider = Callable[[np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixel coordinates (x2/y2 exclusive), its score, and the detector that found it.

    Scores are on the detector's own scale (dlib HOG: SVM margin, > 0 is a face; YuNet and S3FD: 0-1),
    so they rank faces within one image, never across detectors.
    """

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0
    detector: str = ""

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0

    def as_array(self) -> np.ndarray:
        """The `[x1, y1, x2, y2, score]` row face-alignment accepts as `detected_faces`.

        float64 on purpose: face-alignment 1.5.0 assigns the derived scale into a torch tensor, and
        torch 2.13 refuses a numpy.float32 scalar there (TypeError) while it accepts a Python float.
        """
        return np.array([self.x1, self.y1, self.x2, self.y2, self.score], dtype=np.float64)

    @classmethod
    def from_landmarks(cls, points: np.ndarray, score: float = 1.0) -> FaceBox:
        """Tight box around landmarks (chin to brows: smaller than a detector's box, no forehead)."""
        pts = np.asarray(points, dtype=np.float64)[:, :2]
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        return cls(float(x1), float(y1), float(x2), float(y2), score, "landmarks")


class FaceBackend(Protocol):
    """Face detection, 68 landmarks and an identity embedding, on RGB uint8 arrays (see `as_rgb_uint8`)."""

    name: str
    redetect_every: int  # how often a clip tracker should run `detect` (1: every frame: detection is cheap)

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Every face found, the most confident first (empty: no face)."""
        ...

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray | None:
        """(68, 2) float64 (x, y) in the iBUG layout for the face in `box`; None if the backend refuses it."""
        ...

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Identity embedding of the face with these landmarks (dlib: 128-d, `dlib_backend.embedding_distance`)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend name, versions and model files with their SHA-256: what decides its numbers."""
        ...


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept grey, RGB or RGBA arrays (uint8 or float in [0, 1]) and return contiguous RGB uint8."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnsupportedImage(f"Expected an image array of shape (H, W, 3), got {arr.shape}.")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        scale = 255.0 if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def eye_distance(landmarks: np.ndarray) -> float:
    """Distance between the two eye centres (means of 36-41 and 42-47): the scale landmark errors are given in."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(pts[RIGHT_EYE, :2].mean(axis=0) - pts[LEFT_EYE, :2].mean(axis=0)))
