"""The real faces synthetic clips are made from, and the honest ways to multiply them.

Photos (both public domain, both in `examples/`): scikit-image's astronaut (Eileen Collins, NASA;
`portrait.png`) and matplotlib's sample `grace_hopper.jpg` (US Navy official photo). New identities come
from landmark morphs between them (a piecewise-affine warp of both to the blended shape, then a
cross-dissolve) and from mirror images; `frame_face` then crops a square around the face at a random
framing. Landmarks come from the project's face backend (dlib), measured once per photo.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image

from fantasy.errors import InputFileNotFound, NoFaceFound
from fantasy.examples import example_file

# name -> (file in examples/, mouth shift in mouth widths: where dlib's lip line sits off the real one)
PHOTOS: dict[str, tuple[str, float]] = {
    "collins": ("portrait.png", 0.0),
    "hopper": ("grace_hopper.jpg", 0.0),
}
CANVAS = 384  # morphs are built on a square canvas of this side, eyes level, face about half of it
# iBUG 68-point indices of the mirrored face: point i of a flipped image is point FLIP[i] of the original.
FLIP = (list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
        + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
        + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65])


@dataclass(frozen=True)
class Face:
    """A photo (uint8 RGB), its 68 landmarks (x, y) and its lip-line correction (mouth widths)."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray
    mouth_shift: float = 0.0


def measure_landmarks(image: np.ndarray, name: str) -> np.ndarray:
    from fantasy.face import shared_analyzer

    analyzer = shared_analyzer()
    box = analyzer.detect(image)
    points = analyzer.landmarks(image, box) if box is not None else None
    if points is None:
        raise NoFaceFound(f"No face found in the training photo '{name}'.")
    return np.asarray(points, dtype=np.float64)


@cache
def photo(name: str) -> Face:
    """One of `PHOTOS`, with its landmarks."""
    if name not in PHOTOS:
        raise ValueError(f"unknown training photo '{name}'; choose one of {', '.join(PHOTOS)}")
    file, shift = PHOTOS[name]
    try:
        path = example_file(file)
    except FileNotFoundError as exc:
        raise InputFileNotFound(f"Training photo missing: {exc}") from None
    image = np.asarray(Image.open(path).convert("RGB"))
    return Face(name, image, measure_landmarks(image, name), shift)


def flipped(face: Face) -> Face:
    width = face.image.shape[1]
    points = face.landmarks[FLIP].copy()
    points[:, 0] = width - 1 - points[:, 0]
    return Face(face.name + "-flip", np.ascontiguousarray(face.image[:, ::-1]), points, face.mouth_shift)


def _canonical(face: Face) -> Face:
    """The face on a CANVAS-sized square: eyes level, eye centres at fixed places (a similarity transform)."""
    left, right = face.landmarks[36:42].mean(axis=0), face.landmarks[42:48].mean(axis=0)
    target_left = np.array([0.39 * CANVAS, 0.42 * CANVAS])
    target_right = np.array([0.61 * CANVAS, 0.42 * CANVAS])
    source, target = right - left, target_right - target_left
    scale = np.linalg.norm(target) / np.linalg.norm(source)
    angle = np.arctan2(target[1], target[0]) - np.arctan2(source[1], source[0])
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    linear = np.array([[c, -s], [s, c]])
    offset = target_left - linear @ left
    matrix = np.hstack([linear, offset[:, None]])
    image = cv2.warpAffine(face.image, matrix, (CANVAS, CANVAS), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT_101)
    return Face(face.name, image, face.landmarks @ linear.T + offset, face.mouth_shift)


def _warp_to(image: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp of `image` so that points `source` move to `target` (Delaunay on the target)."""
    from scipy.spatial import Delaunay

    out = np.zeros_like(image)
    for tri in Delaunay(target).simplices:
        src, dst = source[tri].astype(np.float32), target[tri].astype(np.float32)
        x, y, w, h = cv2.boundingRect(dst)
        if w <= 0 or h <= 0:
            continue
        matrix = cv2.getAffineTransform(src, (dst - [x, y]).astype(np.float32))
        patch = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.round(dst - [x, y]).astype(np.int32), 1)
        region = out[y:y + h, x:x + w]
        keep = mask[: region.shape[0], : region.shape[1]].astype(bool)
        region[keep] = patch[: region.shape[0], : region.shape[1]][keep]
    return out


def morph(a: Face, b: Face, alpha: float) -> Face:
    """A new face `alpha` of the way from `a` to `b`: both warped to the blended landmarks, then cross-dissolved."""
    ca, cb = _canonical(a), _canonical(b)
    edge = np.linspace(0, CANVAS - 1, 5)
    border = np.array([(x, y) for x in edge for y in edge if x in (0, CANVAS - 1) or y in (0, CANVAS - 1)])
    target = (1 - alpha) * ca.landmarks + alpha * cb.landmarks
    wa = _warp_to(ca.image, np.vstack([ca.landmarks, border]), np.vstack([target, border]))
    wb = _warp_to(cb.image, np.vstack([cb.landmarks, border]), np.vstack([target, border]))
    image = ((1 - alpha) * wa.astype(np.float32) + alpha * wb.astype(np.float32)).round().astype(np.uint8)
    name = f"{a.name}~{b.name}@{alpha:.2f}"
    return Face(name, image, target, (1 - alpha) * a.mouth_shift + alpha * b.mouth_shift)


def frame_face(face: Face, size: int, face_fraction: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
    """A `size`-px square crop in which the face (its landmarks' extent) spans `face_fraction` of the side.

    `offset` moves the face from the centre by that fraction of the side. Outside the photo: mirrored.
    """
    points = face.landmarks
    low, high = points.min(axis=0), points.max(axis=0)
    extent = float(max(high - low)) * 1.15  # landmarks stop at the brows: leave room for the forehead
    side = extent / face_fraction
    centre = (low + high) / 2 - [0.0, 0.06 * extent] - np.asarray(offset) * side
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - scale * centre[0]], [0, scale, size / 2 - scale * centre[1]]])
    image = cv2.warpAffine(face.image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT_101)
    return Face(face.name, image, points * scale + matrix[:, 2], face.mouth_shift)
