"""Choosing a face backend, and the questions the project asks it: which face, where its points are, who.

The backend is dlib unless one is named (`backend=`, or `FANTASY_FACE_BACKEND` for a whole process,
e.g. a training run). Where an image shows several faces, the most confident one is the subject:
not the largest, because a detector's low-score false box can be larger than the real face. Other
boxes count as faces (for the status line) only when they score at least a quarter of the best: dlib
puts 0.06-0.2 boxes on a spacesuit's folds next to a face scoring 1.0-1.5.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from fantasy.errors import InvalidSetting, NoFaceFound
from fantasy.face.types import FaceBackend, FaceBox, as_rgb_uint8

DEFAULT_BACKEND = "dlib"
BACKENDS = ("dlib", "face-alignment")
BACKEND_ENV = "FANTASY_FACE_BACKEND"
OTHER_FACE_SHARE = 0.25  # another box counts as a face when it scores at least this share of the best
NO_FACE_MESSAGE = (
    "No face found in the portrait: use a photo where one face is clearly visible, frontal or three-quarter, "
    "not too small, and not covered by hands, masks or heavy shadow."
)


def backend_name(name: str | None = None) -> str:
    """The backend to use: `name`, else `$FANTASY_FACE_BACKEND`, else dlib; anything else is refused."""
    chosen = (name or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND).strip()
    if chosen not in BACKENDS:
        raise InvalidSetting(f"The face backend must be one of {', '.join(BACKENDS)}, got '{chosen}'.")
    return chosen


def make_backend(name: str | None = None, device: str | None = None, allow_download: bool | None = None) -> FaceBackend:
    """A new backend. `device` and `allow_download` only matter to face-alignment (dlib runs on the CPU)."""
    chosen = backend_name(name)
    if chosen == "face-alignment":
        from fantasy.face.fan_backend import FaceAlignmentBackend

        return FaceAlignmentBackend(device=device, allow_download=allow_download)
    from fantasy.face.dlib_backend import DlibBackend

    return DlibBackend()


@dataclass(frozen=True)
class FaceFinding:
    """The face taken as the subject (the most confident), how many faces the image shows, and its size."""

    box: FaceBox
    count: int
    width: int
    height: int

    def where(self) -> str:
        """'top left', 'centre', 'bottom right'…: the face's centre in thirds of the picture.

        Words, not pixels: the check runs on a copy at most 1024 px, whose pixels are not the upload's.
        """
        cx, cy = self.box.center
        column = ("left", "centre", "right")[min(2, max(0, int(3 * cx / self.width)))]
        row = ("top", "middle", "bottom")[min(2, max(0, int(3 * cy / self.height)))]
        return "centre" if (row, column) == ("middle", "centre") else f"{row} {column}".replace("middle ", "")

    def note(self) -> str:
        """The status line's words: '1 face (dlib HOG)' or '2 faces found; using the most confident …'."""
        found_by = self.box.detector or "detector"
        if self.count == 1:
            return f"1 face ({found_by})"
        return (f"{self.count} faces found; using the most confident, {self.where()} "
                f"({found_by} score {self.box.score:.2f})")


class FaceAnalyzer:
    """One backend plus the project's choices: the most confident face, RGB uint8 input, user-facing errors."""

    def __init__(self, backend: FaceBackend | str | None = None, device: str | None = None) -> None:
        self.backend = backend if backend is not None and not isinstance(backend, str) else make_backend(backend, device)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def redetect_every(self) -> int:
        return int(getattr(self.backend, "redetect_every", 1))

    def faces(self, image_rgb: np.ndarray) -> list[FaceBox]:
        """Every face, the most confident first."""
        return sorted(self.backend.detect(as_rgb_uint8(image_rgb)), key=lambda b: b.score, reverse=True)

    def detect(self, image_rgb: np.ndarray) -> FaceBox | None:
        """The most confident face, or None."""
        faces = self.faces(image_rgb)
        return faces[0] if faces else None

    def find(self, image_rgb: np.ndarray) -> FaceFinding:
        """The subject's face and the face count, or a `NoFaceFound` the user can act on."""
        image = as_rgb_uint8(image_rgb)
        faces = self.faces(image)
        if not faces:
            raise NoFaceFound(NO_FACE_MESSAGE)
        best = faces[0]
        count = 1 + sum(f.score >= OTHER_FACE_SHARE * best.score for f in faces[1:])
        return FaceFinding(best, count, image.shape[1], image.shape[0])

    def require_face(self, image_rgb: np.ndarray) -> FaceBox:
        return self.find(image_rgb).box

    def landmarks(self, image_rgb: np.ndarray, box: FaceBox | None = None) -> np.ndarray | None:
        """(68, 2) float64 landmarks of the face in `box`, or of the most confident face; None if no face."""
        image = as_rgb_uint8(image_rgb)
        if box is None:
            box = self.detect(image)
            if box is None:
                return None
        return self.backend.landmarks(image, box)

    def embed(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The identity embedding of the face with these landmarks."""
        return self.backend.embed(as_rgb_uint8(image_rgb), landmarks)

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()


@functools.cache
def _shared(name: str) -> FaceAnalyzer:
    return FaceAnalyzer(name)


def shared_analyzer(backend: str | None = None) -> FaceAnalyzer:
    """One analyzer per backend and process (building one loads ~120 MB of models): training, identity crops."""
    return _shared(backend_name(backend))


shared_analyzer.cache_clear = _shared.cache_clear  # type: ignore[attr-defined]
