"""68-point landmarks for every frame of a training sample: from a `.landmarks.npy` file or a provider.

Frames where no face was found are filled by linear interpolation between the nearest frames that
have one (held constant before the first and after the last), so a brief detector miss does not
cost a clip; a clip with no face at all is an error, never a sample trained without its lips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fantasy.errors import NoFaceFound, TrainingDataError
from fantasy.face import LandmarkProvider, backend_name, shared_analyzer
from fantasy.metrics.landmarks import TrackedLandmarks

NUM_POINTS = 68
# Called once per clip: providers may keep state across one clip's frames (as TrackedLandmarks does).
# A factory with a `fingerprint()` method says what decides its landmarks (see `provider_fingerprint`).
ProviderFactory = Callable[[], LandmarkProvider]


class BackendLandmarks:
    """A `ProviderFactory` on a face backend (default dlib, or `$FANTASY_FACE_BACKEND`): one tracker per clip."""

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend_name(backend)

    def __call__(self) -> LandmarkProvider:
        return TrackedLandmarks(shared_analyzer(self.backend))

    def fingerprint(self) -> dict[str, Any]:
        """The backend, its model files (with SHA-256) and how often the tracker detects."""
        analyzer = shared_analyzer(self.backend)
        return {**analyzer.describe(), "redetect_every": analyzer.redetect_every}


def default_provider() -> LandmarkProvider:
    """The face backend through `TrackedLandmarks`; a fresh tracker for each clip.

    dlib by default, whose models ship with `requirements.txt`; with face-alignment chosen, raises
    `WeightsMissing` on first use when its weights are not on disk.
    """
    return BackendLandmarks()()


def provider_fingerprint(factory: ProviderFactory) -> dict[str, Any]:
    """What decides a factory's landmarks: its own `fingerprint()`; a factory without one (a test's stand-in,
    a caller's own detector) counts as one fixed provider, whose changes are the caller's to track."""
    describe = getattr(factory, "fingerprint", None)
    return describe() if callable(describe) else {"provider": "custom"}


def read_landmark_file(path: Path, needed: int) -> np.ndarray:
    """(N, 68, 2) float64 source-pixel landmarks from `path`; NaN rows mark frames without a face.

    `needed`: source frames the sample uses (N may be larger: the file covers the whole video).
    """
    try:
        points = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"Could not read landmarks file '{path.name}' ({exc}).") from None
    if points.ndim != 3 or points.shape[1] != NUM_POINTS or points.shape[2] < 2:
        raise TrainingDataError(
            f"Landmarks file '{path.name}' has shape {points.shape}; expected [frames, 68, 2] (x, y in pixels)."
        )
    if points.shape[0] < needed:
        raise TrainingDataError(
            f"Landmarks file '{path.name}' has {points.shape[0]} frames but the sample uses the first {needed} "
            "source frames: it must hold one row per source video frame."
        )
    return points[:, :, :2].astype(np.float64)


def run_provider(frames: Sequence[np.ndarray], provider: LandmarkProvider) -> np.ndarray:
    """(F, 68, 2) landmarks of each frame, in order; NaN where the provider found no face."""
    out = np.full((len(frames), NUM_POINTS, 2), np.nan)
    for i, frame in enumerate(frames):
        points = provider(frame)
        if points is not None:
            out[i] = np.asarray(points, dtype=np.float64)[:NUM_POINTS, :2]
    return out


def fill_missing(points: np.ndarray, clip_name: str) -> tuple[np.ndarray, int]:
    """Interpolate frames without a face (any NaN) from their neighbours; returns (filled, frames filled)."""
    points = np.asarray(points, dtype=np.float64)
    found = np.isfinite(points).all(axis=(1, 2))
    if not found.any():
        raise NoFaceFound(
            f"No face found in any frame of training clip '{clip_name}': use clips where one face is clearly "
            "visible, or give its landmarks in a .landmarks.npy file."
        )
    missing = int((~found).sum())
    if missing == 0:
        return points, 0
    t = np.arange(points.shape[0])
    filled = points.copy()
    flat = filled.reshape(points.shape[0], -1)
    for k in range(flat.shape[1]):
        flat[~found, k] = np.interp(t[~found], t[found], flat[found, k])
    return filled, missing
