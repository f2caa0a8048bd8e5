"""Identity: does the face in the video stay the person in the portrait?

The paper's IDC is the cosine similarity of ArcFace embeddings; ArcFace's weights do not ship in any
package we can install. We measure with a real face recogniser that does: dlib's ResNet (the default
face backend's `embed`), a 128-d embedding compared by **euclidean distance**. 0 is the same picture;
dlib calls two faces the same person below 0.6. Measured (docs/face-analysis.md): copies of one
picture flipped, rotated, rescaled, darkened or JPEG-compressed 0.04-0.27; the example portrait talking
(mouth warped open, H.264) 0.25-0.35; the portrait against other people ≥ 0.68. Lower is better, and the
numbers are on dlib's scale: never compare them with published IDC values.

Another recogniser plugs in through `FaceEmbedder`: a `name`, a `metric` ("euclidean": lower is more
alike; "cosine": higher is), a same-person `threshold` (or None) and `__call__(image_rgb, landmarks)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fantasy.face import FaceAnalyzer

EUCLIDEAN, COSINE = "euclidean", "cosine"


class FaceEmbedder(Protocol):
    """Maps a face (the whole RGB frame plus its 68 landmarks) to a vector compared by `metric`."""

    name: str
    metric: str  # EUCLIDEAN (a distance: lower = more alike) or COSINE (a similarity: higher = more alike)
    threshold: float | None  # same person below this distance / above this similarity; None: no threshold

    def __call__(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...


class BackendEmbedder:
    """A face backend's identity embedding: dlib's ResNet, 128-d, euclidean, same person below 0.6."""

    metric = EUCLIDEAN

    def __init__(self, analyzer: FaceAnalyzer) -> None:
        from fantasy.face.dlib_backend import SAME_PERSON_THRESHOLD

        self.analyzer = analyzer
        self.threshold = SAME_PERSON_THRESHOLD
        source = "" if analyzer.name == "dlib" else f", aligned on {analyzer.name} landmarks"
        self.name = f"dlib ResNet face embedding (128-d, euclidean distance{source})"

    def __call__(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return self.analyzer.embed(image_rgb, landmarks)


def compare(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Euclidean distance or cosine similarity of two embeddings."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if metric == EUCLIDEAN:
        return float(np.linalg.norm(a - b))
    if metric == COSINE:
        denom = float(np.linalg.norm(a) * np.linalg.norm(b))
        return float(a @ b / denom) if denom > 0 else float("nan")
    raise ValueError(f"metric must be {EUCLIDEAN} or {COSINE}, got {metric}")


def same_person(value: float, metric: str, threshold: float | None) -> bool | None:
    """Whether a comparison falls on the same-person side of the threshold (None without a threshold)."""
    if threshold is None:
        return None
    return value < threshold if metric == EUCLIDEAN else value > threshold


def sample_indices(num_frames: int, count: int) -> list[int]:
    """`count` frame indices spread evenly from first to last (all frames if there are fewer)."""
    if num_frames <= 0 or count <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, min(count, num_frames))})


@dataclass(frozen=True)
class IdentityResult:
    mean: float  # mean distance (euclidean) or similarity (cosine) of the sampled frames to the reference
    worst: float  # the sampled frame least like the reference: identity drift shows up here first
    per_frame: tuple[tuple[int, float], ...]  # (frame index, distance or similarity)
    frames_sampled: int
    embedder: str
    metric: str
    threshold: float | None
    same_person: int | None  # sampled frames with a face on the same-person side of the threshold

    @property
    def lower_is_better(self) -> bool:
        return self.metric == EUCLIDEAN


def identity_similarity(
    reference_rgb: np.ndarray,
    reference_landmarks: np.ndarray,
    frames: Sequence[np.ndarray],
    frame_landmarks: Sequence[np.ndarray | None],
    indices: Sequence[int],
    embedder: FaceEmbedder,
) -> IdentityResult | None:
    """The reference face against the face in each sampled frame (frames without one skipped).

    Returns None when none of the sampled frames shows a face.
    """
    ref = embedder(reference_rgb, reference_landmarks)
    scores = [(int(i), compare(ref, embedder(frames[i], frame_landmarks[i]), embedder.metric))
              for i in indices if frame_landmarks[i] is not None]
    if not scores:
        return None
    values = np.array([s for _, s in scores])
    verdicts = [same_person(v, embedder.metric, embedder.threshold) for v in values]
    return IdentityResult(
        mean=float(values.mean()),
        worst=float(values.max() if embedder.metric == EUCLIDEAN else values.min()),
        per_frame=tuple(scores),
        frames_sampled=len(indices),
        embedder=embedder.name,
        metric=embedder.metric,
        threshold=embedder.threshold,
        same_person=None if embedder.threshold is None else int(sum(bool(v) for v in verdicts)),
    )
