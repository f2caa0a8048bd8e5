"""Identity similarity: does the face in the video stay the person in the portrait?

The paper's IDC is the cosine similarity of ArcFace embeddings. No ArcFace (or dlib) weights can be
downloaded on our machines, so the default `AppearanceEmbedder` is a documented **proxy** that ships
offline: it describes a face crop by its colours, its edge layout and its fine texture. It tracks
"same face vs. another face" and drift (colour shift, warping, blur), but it is not a recogniser:
two people with similar skin, hair and pose can score high. Its values are only comparable with
each other, never with published ArcFace numbers.

A real recogniser plugs in through the `FaceEmbedder` protocol: any object with a `name` and a
`__call__(face_rgb) -> 1-D vector` (for example an ArcFace ONNX model run by onnxruntime, or dlib's
`face_recognition_model_v1.compute_face_descriptor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from fantasy.face import FaceBox, square_face_crop

CROP_EXPAND = 1.4  # around the landmark box: forehead, jaw line and some hair, as recognisers expect


class FaceEmbedder(Protocol):
    """Anything that maps a square RGB face crop to a feature vector compared by cosine similarity."""

    name: str

    def __call__(self, face_rgb: np.ndarray) -> np.ndarray: ...


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


class AppearanceEmbedder:
    """Offline proxy: [colour histogram | HOG | LBP histograms], each part unit-length, over sqrt(3).

    Cosine similarity of two such vectors is the mean of the three parts' cosine similarities.
    - colour: hue x saturation histogram inside a centred ellipse (skin, hair, eyes; little background),
      square-rooted (Hellinger), so that a few dominant bins do not swamp the rest;
    - HOG (9 orientations, 12 px cells at 96 px): where the eyes, brows, nose and mouth edges are;
    - LBP (uniform, P=8, R=1) histograms on a 4x4 grid: skin/hair texture, blur and noise.
    """

    name = "appearance proxy (HSV histogram + HOG + LBP), not a face recogniser"
    size = 96

    def __init__(self) -> None:
        s = self.size
        self._ellipse = np.zeros((s, s), np.uint8)
        cv2.ellipse(self._ellipse, (s // 2, s // 2), (int(s * 0.42), int(s * 0.48)), 0, 0, 360, 1, -1)

    def __call__(self, face_rgb: np.ndarray) -> np.ndarray:
        from skimage.feature import hog, local_binary_pattern

        face = cv2.resize(np.asarray(face_rgb, dtype=np.uint8), (self.size, self.size), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(face, cv2.COLOR_RGB2HSV)
        colour = cv2.calcHist([hsv], [0, 1], self._ellipse, [18, 8], [0, 180, 0, 256]).ravel()
        colour = np.sqrt(colour / max(colour.sum(), 1.0))
        gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        edges = hog(gray, orientations=9, pixels_per_cell=(12, 12), cells_per_block=(2, 2), block_norm="L2-Hys")
        lbp = local_binary_pattern(gray, P=8, R=1, method="uniform")
        cell = self.size // 4
        texture = []
        for y in range(0, self.size, cell):
            for x in range(0, self.size, cell):
                hist, _ = np.histogram(lbp[y : y + cell, x : x + cell], bins=10, range=(0, 10))
                texture.append(np.sqrt(hist / hist.sum()))
        parts = [_unit(colour), _unit(np.asarray(edges, dtype=np.float64)), _unit(np.concatenate(texture))]
        return np.concatenate(parts) / np.sqrt(len(parts))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else float("nan")


def face_crop(image_rgb: np.ndarray, landmarks: np.ndarray, expand: float = CROP_EXPAND) -> np.ndarray:
    """Square crop centred on the landmarks, so both portrait and frames are framed the same way."""
    return square_face_crop(image_rgb, FaceBox.from_landmarks(landmarks), expand=expand)


def sample_indices(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly from first to last (all frames if there are fewer)."""
    if num_frames <= 0 or count <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, min(count, num_frames))})


@dataclass(frozen=True)
class IdentityResult:
    mean: float  # mean cosine similarity, reference vs. sampled frames with a face
    minimum: float  # the worst sampled frame: identity drift shows up here first
    per_frame: tuple[tuple[int, float], ...]  # (frame index, similarity)
    frames_sampled: int
    embedder: str


def identity_similarity(
    reference_rgb: np.ndarray,
    reference_landmarks: np.ndarray,
    frames: Sequence[np.ndarray],
    frame_landmarks: Sequence[np.ndarray | None],
    indices: Sequence[int],
    embedder: FaceEmbedder | None = None,
) -> IdentityResult | None:
    """Similarity between the reference face and the face in each sampled frame (frames without one skipped).

    Returns None when none of the sampled frames shows a face.
    """
    embedder = embedder or AppearanceEmbedder()
    ref = embedder(face_crop(reference_rgb, reference_landmarks))
    scores = []
    for i in indices:
        if frame_landmarks[i] is None:
            continue
        scores.append((int(i), cosine_similarity(ref, embedder(face_crop(frames[i], frame_landmarks[i])))))
    if not scores:
        return None
    values = np.array([s for _, s in scores])
    return IdentityResult(
        mean=float(values.mean()),
        minimum=float(values.min()),
        per_frame=tuple(scores),
        frames_sampled=len(indices),
        embedder=embedder.name,
    )
