"""The optional face backend: face-alignment 1.5.0 (S3FD or another of its detectors + 2D FAN).

Choose it explicitly (`--face-backend face-alignment`, or `FANTASY_FACE_BACKEND=face-alignment`). It is
not in `requirements.txt`: install it with `pip install --no-deps face-alignment==1.5.0` (it names
`opencv-python`, which would overwrite our headless OpenCV). Its weights are downloaded on first use
from its author's web site into `torch.hub.get_dir()/checkpoints` (`$TORCH_HOME/hub/checkpoints`); we
check for them before building the model, so an offline machine gets a `WeightsMissing` that names
the file and how to get it, never a urllib traceback. face-alignment has no face recogniser: `embed`
uses dlib's ResNet on FAN's landmarks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasy.errors import WeightsMissing
from fantasy.face.types import FaceBox

NAME = "face-alignment"
_FAN_BASE_URL = "https://www.adrianbulat.com/downloads/python-fan/"
# Landmark network for LandmarksType.TWO_D (network size 4): face-alignment cannot take a path for it.
FAN_2D_FILE = "2DFAN4-11f355bf06.pth.tar"
# Detector weights face-alignment fetches itself, by detector name. Detectors not listed here
# ('folder', or ones whose files we do not track) are built without a pre-check.
DETECTOR_FILES: dict[str, tuple[str, ...]] = {
    "sfd": ("s3fd-619a316812.pth",),
    "retinaface": ("retinaface_mobilenet0.25.pth",),
}
WEIGHT_URLS: dict[str, str] = {
    FAN_2D_FILE: _FAN_BASE_URL + FAN_2D_FILE,
    "s3fd-619a316812.pth": _FAN_BASE_URL + "s3fd-619a316812.pth",
    "retinaface_mobilenet0.25.pth": _FAN_BASE_URL + "retinaface_mobilenet0.25.pth",
}


def checkpoints_dir() -> Path:
    """Where face-alignment (and torch.hub) cache weights: `$TORCH_HOME/hub/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def required_weight_files(detector: str = "sfd") -> tuple[str, ...]:
    """Files face-alignment will look for in `checkpoints_dir()` for 2D landmarks with `detector`."""
    return (FAN_2D_FILE, *DETECTOR_FILES.get(detector, ()))


def offline_mode() -> bool:
    """True when the user asked for no network (the Hub's switch, which the whole project honours)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _weights_missing_message(name: str, directory: Path, reason: str) -> str:
    url = WEIGHT_URLS.get(name, "(see face-alignment's documentation)")
    return (
        f"Face-alignment weight file '{name}' is missing from {directory} ({reason}). "
        f"Download it from {url} into that directory (set TORCH_HOME to use another cache), "
        "or run `python -m fantasy download --face`, which fetches it."
    )


def _download(url: str, destination: Path) -> None:
    """Fetch one file atomically (a partial download never looks like a good cache entry)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".partial")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, progress=False)
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_weights(detector: str = "sfd", allow_download: bool | None = None) -> Path:
    """Make sure the weights for `detector` + 2D FAN are cached; return the cache directory.

    Downloads missing files unless offline (`HF_HUB_OFFLINE=1`) or `allow_download=False`. Any
    failure, network or disk, becomes a `WeightsMissing` naming the file, directory and URL.
    """
    directory = checkpoints_dir()
    if allow_download is None:
        allow_download = not offline_mode()
    for name in required_weight_files(detector):
        target = directory / name
        if target.is_file():
            continue
        if not allow_download:
            raise WeightsMissing(_weights_missing_message(name, directory, "offline mode: HF_HUB_OFFLINE=1"))
        try:
            _download(WEIGHT_URLS[name], target)
        except Exception as exc:  # any failure means "not there"; the message says what to do
            reason = f"download failed: {type(exc).__name__}: {exc}".strip()
            raise WeightsMissing(_weights_missing_message(name, directory, reason)) from None
    return directory


class FaceAlignmentBackend:
    """S3FD (or `detector`) boxes and FAN's 68 points, built on first use; dlib's ResNet for `embed`.

    `device=None` picks CUDA when available. `compile=None` turns `torch.compile` on for CUDA only:
    on CPU it costs ~25 s of warm-up, and ZeroGPU does not support it (pass `compile=False` there).
    `flip_input` is off: it doubles the cost for a small gain.
    """

    name = NAME
    redetect_every = 8  # S3FD costs more than FAN on CPU (~0.7 s vs ~0.45 s a 512² frame)

    def __init__(self, device: str | None = None, detector: str = "sfd", compile: bool | None = None,
                 allow_download: bool | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.detector = detector
        self.compile = self.device.startswith("cuda") if compile is None else compile
        self.allow_download = allow_download
        self._model: Any = None
        self._embedder: Any = None

    @property
    def model(self) -> Any:
        """The `face_alignment.FaceAlignment` instance (weights checked first, see `ensure_weights`)."""
        if self._model is None:
            ensure_weights(self.detector, self.allow_download)
            try:
                import face_alignment
            except ImportError:
                raise WeightsMissing("The face backend 'face-alignment' is not installed: run `pip install "
                                     "--no-deps face-alignment==1.5.0` (see docs/face-analysis.md).") from None
            try:
                self._model = face_alignment.FaceAlignment(
                    face_alignment.LandmarksType.TWO_D,
                    device=self.device,
                    face_detector=self.detector,
                    flip_input=False,
                    compile=self.compile,
                )
            except OSError as exc:  # e.g. a detector file we do not pre-check and cannot download
                raise WeightsMissing(
                    f"face-alignment could not load its '{self.detector}' weights ({exc}); "
                    f"place them in {checkpoints_dir()} or run `python -m fantasy download --face`."
                ) from None
        return self._model

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        boxes = self.model.face_detector.detect_from_image(image.copy())
        faces = [FaceBox(*(float(v) for v in np.asarray(b)[:5]), detector=f"face-alignment {self.detector}")
                 for b in boxes]
        return sorted(faces, key=lambda f: f.score, reverse=True)

    def landmarks(self, image: np.ndarray, box: FaceBox) -> np.ndarray | None:
        found = self.model.get_landmarks_from_image(image, detected_faces=[box.as_array()])
        if not found:
            return None
        return np.asarray(found[0], dtype=np.float64)[:, :2]

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        if self._embedder is None:
            from fantasy.face.dlib_backend import DlibBackend

            self._embedder = DlibBackend(fallback=False)
        return self._embedder.embed(image, landmarks)

    def describe(self) -> dict[str, Any]:
        from fantasy.face.model_files import DLIB_RESNET

        # torch.hub file names carry the first hex digits of their SHA-256 (e.g. 2DFAN4-11f355bf06).
        return {"backend": NAME, "detector": self.detector, "weights": list(required_weight_files(self.detector)),
                "files": {DLIB_RESNET.name: DLIB_RESNET.sha256}}
