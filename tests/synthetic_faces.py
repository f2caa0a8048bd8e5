"""Drawn faces with exactly known 68-point landmarks, for face and metric tests (no detector needed).

The template follows the iBUG 300-W layout: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
outer lips 48-59 (corners 48/54, top 51, bottom 57), inner lips 60-67 (corners 60/64, 62 top, 66 bottom).
Coordinates are in face units (face width 1, centre at 0, y down), then scaled to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MOUTH_HALF_WIDTH = 0.18
MOUTH_Y = 0.3
LIP_THICKNESS = 0.04
MAX_OPENING = 0.16  # inner-lip gap at opening 1.0, in face units
SKIN = (224, 172, 140)
LIP = (170, 60, 70)
CAVITY = (40, 5, 10)


def template_landmarks(opening: float, center: tuple[float, float], size: float) -> np.ndarray:
    """(68, 2) pixel landmarks of a frontal face of width `size`; `opening` in [0, 1] parts the lips."""
    pts = np.zeros((68, 2))
    t = np.linspace(0.0, 1.0, 17)
    angle = np.pi * (1.0 - t)
    pts[0:17] = np.stack([0.5 * np.cos(angle), -0.1 + 0.6 * np.sin(angle)], axis=1)
    pts[17:22] = np.stack([np.linspace(-0.4, -0.1, 5), np.full(5, -0.35)], axis=1)
    pts[22:27] = np.stack([np.linspace(0.1, 0.4, 5), np.full(5, -0.35)], axis=1)
    pts[27:31] = np.stack([np.zeros(4), np.linspace(-0.25, 0.05, 4)], axis=1)
    pts[31:36] = np.stack([np.linspace(-0.1, 0.1, 5), np.full(5, 0.1)], axis=1)
    eye = np.linspace(np.pi, 3 * np.pi, 6, endpoint=False)
    pts[36:42] = np.stack([-0.22 + 0.08 * np.cos(eye), -0.2 + 0.03 * np.sin(eye)], axis=1)
    pts[42:48] = np.stack([0.22 + 0.08 * np.cos(eye), -0.2 + 0.03 * np.sin(eye)], axis=1)
    gap = MAX_OPENING * float(np.clip(opening, 0.0, 1.0))
    outer = np.pi + np.arange(12) * 2 * np.pi / 12
    pts[48:60] = np.stack(
        [MOUTH_HALF_WIDTH * np.cos(outer), MOUTH_Y + (LIP_THICKNESS + gap / 2) * np.sin(outer)], axis=1
    )
    inner = np.pi + np.arange(8) * 2 * np.pi / 8
    pts[60:68] = np.stack([0.8 * MOUTH_HALF_WIDTH * np.cos(inner), MOUTH_Y + (gap / 2) * np.sin(inner)], axis=1)
    return pts * size + np.asarray(center, dtype=np.float64)


def opening_ratio(opening: float) -> float:
    """Mouth opening |p62-p66| / |p48-p54| that `template_landmarks(opening)` produces."""
    return MAX_OPENING * opening / (2 * MOUTH_HALF_WIDTH)


@dataclass(frozen=True)
class FaceStyle:
    """What makes one drawn person look unlike another: colours, proportions, texture seed."""

    skin: tuple[int, int, int] = SKIN
    hair: tuple[int, int, int] = (60, 40, 30)
    eye: tuple[int, int, int] = (50, 80, 120)
    background: tuple[int, int, int] = (90, 120, 160)
    face_aspect: float = 1.25  # face height / width
    texture_seed: int = 0


def draw_face(
    height: int,
    width: int,
    opening: float,
    center: tuple[float, float] | None = None,
    size: float | None = None,
    style: FaceStyle = FaceStyle(),
) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 frame with one drawn face, and its exact (68, 2) landmarks."""
    center = center or (width / 2.0, height / 2.0)
    size = size or 0.45 * min(height, width)
    lm = template_landmarks(opening, center, size)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = style.background
    rng = np.random.default_rng(style.texture_seed)
    cx, cy = center
    axes = (int(size * 0.55), int(size * 0.55 * style.face_aspect))
    cv2.ellipse(img, (int(cx), int(cy - size * 0.15)), (axes[0] + 6, axes[1] + 8), 0, 180, 360, style.hair, -1)
    cv2.ellipse(img, (int(cx), int(cy)), axes, 0, 0, 360, style.skin, -1)
    # Freckles/pores: a fixed per-person texture, so descriptors see more than flat colour.
    for _ in range(40):
        dx, dy = rng.uniform(-0.35, 0.35) * size, rng.uniform(-0.3, 0.45) * size
        shade = tuple(int(c * 0.85) for c in style.skin)
        cv2.circle(img, (int(cx + dx), int(cy + dy)), max(1, int(size * 0.012)), shade, -1)
    for eye in (lm[36:42], lm[42:48]):
        cv2.fillPoly(img, [np.round(eye).astype(np.int32)], (250, 250, 250))
        c = eye.mean(axis=0)
        cv2.circle(img, (int(c[0]), int(c[1])), max(2, int(size * 0.03)), style.eye, -1)
    for brow in (lm[17:22], lm[22:27]):
        cv2.polylines(img, [np.round(brow).astype(np.int32)], False, style.hair, max(2, int(size * 0.025)))
    cv2.polylines(img, [np.round(lm[27:31]).astype(np.int32)], False, tuple(int(c * 0.8) for c in style.skin), 2)
    cv2.fillPoly(img, [np.round(lm[48:60]).astype(np.int32)], LIP)
    if opening > 0:
        cv2.fillPoly(img, [np.round(lm[60:68]).astype(np.int32)], CAVITY)
    return img, lm


def measured_landmarks(frame: np.ndarray) -> np.ndarray | None:
    """A pixel-based stand-in for FAN on drawn faces: find the face and the mouth cavity, return landmarks.

    Works on decoded (lossy) video frames: the face is where the skin colour is, the opening is the
    cavity's height measured on the central mouth column, scaled into template units.
    """
    f = frame.astype(np.int32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    skin = (r > 120) & (r > g) & (g > b) & (r - b > 40)  # any drawn skin tone; not hair, lips or sky
    if skin.sum() < 200:
        return None
    ys, xs = np.nonzero(skin)
    cx, width_px = (xs.min() + xs.max()) / 2.0, xs.max() - xs.min() + 1
    size = width_px / 1.1  # the face ellipse is 1.1 face units wide
    cy = (ys.min() + ys.max()) / 2.0
    mouth_x, mouth_y = int(round(cx)), cy + MOUTH_Y * size
    half = int(0.05 * size) + 1
    cavity = f.sum(axis=2) < 120
    rows = cavity[:, max(mouth_x - half, 0) : mouth_x + half + 1]
    band = rows[int(mouth_y - 0.15 * size) : int(mouth_y + 0.15 * size)]
    gap_px = float(band.any(axis=1).sum())
    opening = gap_px / (MAX_OPENING * size)
    return template_landmarks(min(opening, 1.0), (cx, cy), size)
