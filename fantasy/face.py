"""Face analysis: where the face is and where its 68 landmarks are (face-alignment / FAN).

One idea: find the face. Everything else that needs a face (the lip-tracing mask for training, the
face crop for the identity module, the lip-sync and identity metrics) builds on `FaceAnalyzer`.

face-alignment downloads its weights on first use into `torch.hub.get_dir()/checkpoints`
(`$TORCH_HOME/hub/checkpoints`). We check for them before building the model so that an offline
machine gets a `WeightsMissing` that names the file and how to get it, never a urllib traceback.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fantasy.errors import NoFaceFound, UnsupportedImage, WeightsMissing

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

# 68-point iBUG 300-W layout (FAN and dlib agree): outer lips 48-59, inner lips 60-67.
OUTER_LIPS = slice(48, 60)
LIPS = slice(48, 68)

# frame (H, W, 3) RGB uint8 -> (68, 2) landmarks, or None when the frame shows no face.
LandmarkProvider = Callable[[np.ndarray], np.ndarray | None]


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixel coordinates (x2/y2 exclusive-ish, as detectors report) and its score."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = 1.0

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
        return cls(float(x1), float(y1), float(x2), float(y2), score)


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


class FaceAnalyzer:
    """Face box and 68 landmarks through face-alignment's FAN, built on first use.

    `device=None` picks CUDA when available. `compile=None` turns `torch.compile` on for CUDA only:
    on CPU it costs ~25 s of warm-up, and ZeroGPU does not support it (pass `compile=False` there).
    `flip_input` is off: it doubles the cost for a small gain.
    """

    def __init__(self, device: str | None = None, detector: str = "sfd", compile: bool | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.detector = detector
        self.compile = self.device.startswith("cuda") if compile is None else compile
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The `face_alignment.FaceAlignment` instance (weights checked first, see `ensure_weights`)."""
        if self._model is None:
            ensure_weights(self.detector)
            import face_alignment

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

    def detect(self, image_rgb: np.ndarray) -> FaceBox | None:
        """The largest face in the image, or None. Largest, because a portrait's subject is the main face."""
        image = as_rgb_uint8(image_rgb)
        boxes = self.model.face_detector.detect_from_image(image.copy())
        faces = [FaceBox(*(float(v) for v in np.asarray(b)[:5])) for b in boxes]
        return max(faces, key=lambda f: f.area, default=None)

    def landmarks(self, image_rgb: np.ndarray, box: FaceBox | None = None) -> np.ndarray | None:
        """(68, 2) float landmarks (x, y) of the face in `box`, or of the largest face; None if no face."""
        image = as_rgb_uint8(image_rgb)
        if box is None:
            box = self.detect(image)
            if box is None:
                return None
        found = self.model.get_landmarks_from_image(image, detected_faces=[box.as_array()])
        if not found:
            return None
        return np.asarray(found[0], dtype=np.float64)[:, :2]

    def require_face(self, image_rgb: np.ndarray) -> FaceBox:
        """The portrait's face box, or a `NoFaceFound` the user can act on."""
        box = self.detect(image_rgb)
        if box is None:
            raise NoFaceFound(
                "No face found in the portrait: use a photo where one face is clearly visible, "
                "frontal or three-quarter, not too small, and not covered by hands, masks or heavy shadow."
            )
        return box


@functools.cache
def shared_analyzer() -> FaceAnalyzer:
    """One FAN model per process (building it costs seconds): for training data and identity crops."""
    return FaceAnalyzer()


def square_face_crop(image_rgb: np.ndarray, box: FaceBox, expand: float = 1.4) -> np.ndarray:
    """Square crop around `box`, side `expand * max(w, h)`, for face encoders that want a square face.

    The square is shifted to stay inside the image when it fits (so no border appears); when it is
    larger than the image along an axis, that axis is centred and padded with black.
    """
    image = np.asarray(image_rgb)
    h, w = image.shape[:2]
    side = max(1, int(round(max(box.width, box.height) * expand)))
    cx, cy = box.center

    def _axis(center: float, length: int) -> tuple[int, int, int]:
        """(source start, source stop, destination offset) along one axis."""
        if side >= length:
            return 0, length, (side - length) // 2
        start = int(round(center - side / 2.0))
        start = min(max(start, 0), length - side)
        return start, start + side, 0

    x0, x1, dx = _axis(cx, w)
    y0, y1, dy = _axis(cy, h)
    out = np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    out[dy : dy + (y1 - y0), dx : dx + (x1 - x0)] = image[y0:y1, x0:x1]
    return out


def lip_mask(landmarks: np.ndarray, height: int, width: int, dilate_px: int = 0) -> np.ndarray:
    """Boolean (H, W) mouth mask: the filled convex hull of the lip points 48-67, grown by `dilate_px`.

    The outer lip contour (48-59) bounds the hull; the inner points only matter if a detector puts
    them outside it. Dilation (a disc of radius `dilate_px`) keeps the teeth/chin edge that moves
    with speech inside the weighted region of the paper's lip-tracing loss.
    """
    import cv2

    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape[0] < 68 or pts.shape[1] < 2:
        raise ValueError(f"Expected (68, 2) landmarks, got {pts.shape}")
    mask = np.zeros((height, width), dtype=np.uint8)
    lips = np.round(pts[LIPS, :2]).astype(np.int32)
    hull = cv2.convexHull(lips)
    cv2.fillConvexPoly(mask, hull, 1)
    if dilate_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


def lip_mask_to_latent_grid(
    masks: np.ndarray | torch.Tensor,
    vae_temporal: int = 4,
    vae_spatial: int = 8,
    patch: tuple[int, int, int] = (1, 2, 2),
) -> torch.Tensor:
    """Map per-frame pixel masks (F, H, W) onto the DiT token grid (T_lat, H/16, W/16), as float 0/1.

    Rule (Wan's causal VAE, then the transformer's patchify): latent frame 0 encodes video frame 0
    alone; latent frame i >= 1 encodes video frames 4i-3 .. 4i, so it takes the max (logical OR) of
    those 4 masks. F must therefore be 4k+1. Spatially each token covers `vae_spatial * patch` pixels
    (16x16 for Wan2.1), and a token is in the mask if any of its pixels is (max pooling). A temporal
    patch > 1 would OR consecutive latent frames the same way. A token touching the lips gets the
    loss weight, so no lip pixel is ever dropped by the downsampling.
    """
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks)
    if m.ndim != 3:
        raise ValueError(f"Expected masks of shape (F, H, W), got {tuple(m.shape)}")
    m = m.to(torch.float32)
    frames, height, width = m.shape
    if frames < 1 or (frames - 1) % vae_temporal != 0:
        raise ValueError(f"Frame count must be {vae_temporal}k+1 for the causal VAE, got {frames}")
    pt, ph, pw = patch
    sh, sw = vae_spatial * ph, vae_spatial * pw
    if height % sh or width % sw:
        raise ValueError(f"Mask size {height}x{width} must be divisible by {sh}x{sw}")
    rest = m[1:].reshape(-1, vae_temporal, height, width).amax(dim=1)
    latent = torch.cat([m[:1], rest], dim=0)
    if pt > 1:
        if latent.shape[0] % pt:
            raise ValueError(f"{latent.shape[0]} latent frames do not split into temporal patches of {pt}")
        latent = latent.reshape(-1, pt, height, width).amax(dim=1)
    return torch.nn.functional.max_pool2d(latent.unsqueeze(1), kernel_size=(sh, sw), stride=(sh, sw)).squeeze(1)
