"""Real faces available offline, their augmentations, and a real-face talking clip made from the portrait.

Sources (all in scikit-image's wheel, or in this repository): the example portrait (= skimage's
`astronaut()`, NASA, public domain), skimage's `camera()` (a real photo of a cameraman, small face),
`lfw_subset()` (100 faces and 100 non-face patches from Labeled Faces in the Wild, 25×25 grey) and
photos without faces (`coffee`, `chelsea`, `rocket`, ...).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import soundfile
from PIL import Image
from skimage import data

from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

LFW_SIDE = 100  # LFW patches (25 px) upscaled to this, then padded: faces ~80 px, where dlib's HOG works
LFW_PAD = 30
# Photos without a face, from skimage (grey ones as RGB).
NON_FACE_PHOTOS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "brick", "coins", "horse", "moon",
                   "clock", "immunohistochemistry", "retina", "colorwheel", "grass", "gravel", "page", "text")

# iBUG 68-point indices of the mirrored face: point i of a flipped image is point FLIP[i] of the original.
FLIP = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
        + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
        + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])


def rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])


def portrait() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))


def _lfw(index: slice) -> list[np.ndarray]:
    patches = (data.lfw_subset()[index] * 255).round().astype(np.uint8)
    return [cv2.copyMakeBorder(rgb(cv2.resize(p, (LFW_SIDE, LFW_SIDE), interpolation=cv2.INTER_CUBIC)),
                               LFW_PAD, LFW_PAD, LFW_PAD, LFW_PAD, cv2.BORDER_REFLECT) for p in patches]


def lfw_faces() -> list[np.ndarray]:
    """skimage's 100 LFW faces (the first half of `lfw_subset`), 160×160 RGB."""
    return _lfw(slice(0, 100))


def lfw_non_faces() -> list[np.ndarray]:
    """skimage's 100 LFW non-face patches (the second half), prepared like the faces."""
    return _lfw(slice(100, 200))


def non_face_photos() -> dict[str, np.ndarray]:
    return {name: rgb(getattr(data, name)()) for name in NON_FACE_PHOTOS}


# ---------------------------------------------------------------- augmentations
# Each: image -> (augmented image, function mapping points of the augmented image back to the original).

Augmentation = Callable[[np.ndarray], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]]


def flip(image: np.ndarray):
    width = image.shape[1]

    def back(points: np.ndarray) -> np.ndarray:
        out = np.asarray(points, dtype=np.float64)[FLIP].copy()
        out[:, 0] = width - 1 - out[:, 0]  # pixel centres: x -> W - 1 - x
        return out

    return np.ascontiguousarray(image[:, ::-1]), back


def rotate(degrees: float):
    def apply(image: np.ndarray):
        h, w = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
        inverse = cv2.invertAffineTransform(matrix)
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return out, lambda p: np.asarray(p, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]

    return apply


def scale(factor: float):
    def apply(image: np.ndarray):
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        out = cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)
        sx, sy = out.shape[1] / image.shape[1], out.shape[0] / image.shape[0]
        return out, lambda p: (np.asarray(p, dtype=np.float64) + 0.5) / [sx, sy] - 0.5

    return apply


def darken(factor: float):
    def apply(image: np.ndarray):
        return np.clip(image.astype(np.float32) * factor, 0, 255).round().astype(np.uint8), lambda p: p

    return apply


def jpeg(quality: int):
    def apply(image: np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB")), lambda p: p

    return apply


AUGMENTATIONS: dict[str, Augmentation] = {
    "flip": flip, "rotate +20°": rotate(20), "rotate -20°": rotate(-20), "scale 0.6": scale(0.6),
    "scale 1.5": scale(1.5), "darken 0.35": darken(0.35), "JPEG q20": jpeg(20),
}


# ---------------------------------------------------------------- a real-face talking clip

CLIP_FPS = 23
MAX_GAP = 0.45  # lip gap at full opening, in mouth widths


def speech_segment(start_s: float, seconds: float) -> np.ndarray:
    """A piece of the example speech (espeak-ng, 16 kHz), zero-padded to exactly `seconds`."""
    samples, rate = soundfile.read(str(EXAMPLE_SPEECH), dtype="float32")
    assert rate == 16_000
    piece = samples[int(round(start_s * rate)) : int(round((start_s + seconds) * rate))]
    return np.pad(piece, (0, int(round(seconds * rate)) - piece.size))


def openings_from_speech(samples: np.ndarray, num_frames: int, fps: float = CLIP_FPS) -> np.ndarray:
    """Mouth opening per frame in [0, 1]: the speech's loudness while the frame is shown, compressed."""
    from fantasy.metrics.sync import speech_envelope

    envelope = speech_envelope(samples, 16_000, fps, num_frames)
    return np.clip(envelope / np.quantile(envelope, 0.95), 0, 1) ** 0.7


def open_mouth(image: np.ndarray, landmarks: np.ndarray, opening: float) -> np.ndarray:
    """The face with its jaw dropped by `opening` × `MAX_GAP` mouth widths and a dark gap between the lips.

    A backward warp: below the inner upper lip (points 60-64) every pixel comes from `gap` pixels higher,
    `gap` largest mid-mouth and zero at the corners, fading out below the chin; the gap itself is the
    mouth's dark inside. Everything above the upper lip is untouched.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    h, w = image.shape[:2]
    left, right = pts[48], pts[54]
    width = float(np.linalg.norm(right - left))
    centre_x = (left[0] + right[0]) / 2
    upper = pts[[60, 61, 62, 63, 64]]
    order = np.argsort(upper[:, 0])
    xs = np.arange(w, dtype=np.float64)
    upper_y = np.interp(xs, upper[order, 0], upper[order, 1], left=left[1], right=right[1])
    profile = np.sqrt(np.clip(1 - ((xs - centre_x) / (width / 2)) ** 2, 0, 1))
    gap = opening * MAX_GAP * width * profile  # per column
    chin = pts[8, 1]
    ys = np.arange(h, dtype=np.float64)[:, None]
    fade = np.clip(1 - (ys - chin) / (0.6 * width), 0, 1)  # the neck below the chin stays
    below = ys > upper_y[None, :]
    shift = np.where(below, gap[None, :] * fade, 0.0)
    map_x = np.broadcast_to(xs[None, :], (h, w)).astype(np.float32)
    map_y = (ys - shift).astype(np.float32)
    out = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = np.clip(np.minimum(ys - upper_y[None, :], upper_y[None, :] + gap[None, :] - ys) + 0.5, 0, 1)
    inside[:, gap < 0.5] = 0
    mouth = np.array([70, 22, 28], np.float32)
    blended = out.astype(np.float32) * (1 - inside[..., None]) + mouth * inside[..., None]
    return blended.round().astype(np.uint8)


def talking_portrait(openings: np.ndarray, landmarks: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) frames of the portrait whose mouth opens by `openings[i]` in frame i."""
    base = portrait() if image is None else image
    return np.stack([open_mouth(base, landmarks, float(o)) for o in openings])


def write_clip(path: Path, frames: np.ndarray, samples: np.ndarray | None, fps: float = CLIP_FPS) -> Path:
    """An H.264 mp4 of `frames`, with `samples` (16 kHz) as its audio track when given."""
    from fantasy.media.video import Mp4Writer

    audio = None
    if samples is not None:
        audio = path.with_suffix(".wav")
        soundfile.write(str(audio), samples, 16_000)
    with Mp4Writer(path, fps, frames.shape[2], frames.shape[1], audio_path=audio) as writer:
        writer.write(frames)
    return path
