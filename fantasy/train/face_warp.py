"""One synthetic talking frame: a real photo whose jaw, lips, eyelids and head move by known amounts.

Everything is one backward warp (`cv2.remap`) driven by the photo's 68 iBUG landmarks, so the skin
stays the photo's own:
- jaw drop: below the inner upper lip every pixel comes from `gap` pixels higher (largest mid-mouth,
  zero at the corners, fading out below the chin); the gap is the mouth's dark inside, with a band of
  upper teeth when it is wide open;
- lip spread / rounding: a horizontal scale around the mouth centre under a smooth bump;
- blinks: the skin between brow and upper lid stretched down over the eye;
- head motion: a similarity transform of the whole frame about the face centre.
The same mapping moves the landmarks forward, so each frame comes with its exact 68 points.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_GAP = 0.36  # lip gap at opening 1, in mouth widths
SPREAD_GAIN = 0.13  # horizontal mouth scale at spread ±1
MOUTH_COLOUR = np.array([64, 20, 26], np.float32)
TEETH_COLOUR = np.array([222, 214, 200], np.float32)
LEFT_EYE, RIGHT_EYE = (36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47)
LEFT_BROW, RIGHT_BROW = (17, 18, 19, 20, 21), (22, 23, 24, 25, 26)
UPPER_LIDS = {LEFT_EYE: (37, 38), RIGHT_EYE: (43, 44)}
LOWER_LIDS = {LEFT_EYE: (41, 40), RIGHT_EYE: (47, 46)}


@dataclass(frozen=True)
class Pose:
    """What one frame shows: mouth (opening >= 0, spread in [-1, 1]), eyelids (0 open .. 1 closed), head."""

    opening: float = 0.0
    spread: float = 0.0
    blink: float = 0.0
    angle: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)  # pixels


@dataclass(frozen=True)
class FaceGeometry:
    """The neutral face's measurements the warps need (pixels of the image being warped)."""

    landmarks: np.ndarray  # [68, 2]
    mouth_shift: float = 0.0  # move the lip line by this many mouth widths (dlib puts some thin lips low)

    @property
    def mouth_width(self) -> float:
        return float(np.linalg.norm(self.landmarks[54] - self.landmarks[48]))

    @property
    def mouth_centre(self) -> np.ndarray:
        return (self.landmarks[48] + self.landmarks[54]) / 2 + [0.0, self.mouth_shift * self.mouth_width]

    @property
    def face_centre(self) -> np.ndarray:
        return self.landmarks.mean(axis=0)

    def upper_lip_line(self, xs: np.ndarray) -> np.ndarray:
        """y of the inner upper lip (points 60-64) at each x, extended flat past the corners."""
        pts = self.landmarks[[60, 61, 62, 63, 64]]
        order = np.argsort(pts[:, 0])
        left, right = self.landmarks[48], self.landmarks[54]
        ys = np.interp(xs, pts[order, 0], pts[order, 1], left=left[1], right=right[1])
        return ys + self.mouth_shift * self.mouth_width


def _head_matrix(geometry: FaceGeometry, pose: Pose) -> np.ndarray:
    """2x3 forward similarity: neutral-frame pixels -> moved-frame pixels."""
    cx, cy = geometry.face_centre
    matrix = cv2.getRotationMatrix2D((float(cx), float(cy)), pose.angle, pose.scale)
    matrix[:, 2] += pose.shift
    return matrix


def _gap(geometry: FaceGeometry, pose: Pose, xs: np.ndarray) -> np.ndarray:
    width = geometry.mouth_width * (1 + SPREAD_GAIN * pose.spread)
    profile = np.sqrt(np.clip(1 - ((xs - geometry.mouth_centre[0]) / (width / 2)) ** 2, 0, 1))
    return max(pose.opening, 0.0) * MAX_GAP * geometry.mouth_width * profile


def _fade(geometry: FaceGeometry, ys: np.ndarray) -> np.ndarray:
    """1 down to the chin, then falling to 0 over 0.6 mouth widths: the neck does not move."""
    chin = geometry.landmarks[8, 1]
    return np.clip(1 - (ys - chin) / (0.6 * geometry.mouth_width), 0, 1)


def _spread_weight(geometry: FaceGeometry, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    cx, cy = geometry.mouth_centre
    w = geometry.mouth_width
    return np.exp(-(((xs - cx) / (0.85 * w)) ** 2) - ((ys - cy) / (0.5 * w)) ** 2)


def _eye_params(geometry: FaceGeometry, eye: tuple[int, ...], brow: tuple[int, ...]):
    pts = geometry.landmarks
    x0, x1 = pts[eye[0], 0], pts[eye[3], 0]
    top = float(pts[list(brow), 1].mean())
    upper = float(pts[list(UPPER_LIDS[eye]), 1].mean())
    lower = float(pts[list(LOWER_LIDS[eye]), 1].mean())
    return (x0 + x1) / 2, abs(x1 - x0), top, upper, lower


def _blink_factor(geometry, pose, eye, brow, xs):
    """Per x: how much of [top, lower] is squeezed (0 none; 1 - ratio at full closure mid-eye)."""
    centre, width, top, upper, lower = _eye_params(geometry, eye, brow)
    ratio = (upper - top) / max(lower - top, 1e-3)
    weight = np.clip(1 - np.abs(xs - centre) / (0.8 * width), 0, 1) ** 0.5
    return pose.blink * weight * (1 - ratio), top, lower


def backward_map(geometry: FaceGeometry, pose: Pose, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map_x, map_y) for `cv2.remap` and the mouth-inside coverage [H, W] in 0..1, for an output of that size."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    inverse = cv2.invertAffineTransform(_head_matrix(geometry, pose))
    qx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    qy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    # lips: horizontal scale about the mouth centre
    k = 1 + SPREAD_GAIN * pose.spread
    cx = geometry.mouth_centre[0]
    sx = cx + (qx - cx) / (1 + (k - 1) * _spread_weight(geometry, qx, qy))
    # jaw: below the upper lip, come from `gap` higher
    line = geometry.upper_lip_line(sx)
    gap = _gap(geometry, pose, sx)
    sy = np.where(qy > line, qy - gap * _fade(geometry, qy), qy)
    inside = np.clip(np.minimum(qy - line, line + gap - qy) + 0.5, 0, 1) * (gap >= 0.5)
    teeth = np.clip(np.minimum(qy - line, line + 0.28 * gap - qy) + 0.5, 0, 1) * (gap >= 0.5) * np.clip(
        (pose.opening - 0.45) * 4, 0, 1)
    # eyelids
    for eye, brow in ((LEFT_EYE, LEFT_BROW), (RIGHT_EYE, RIGHT_BROW)):
        squeeze, top, lower = _blink_factor(geometry, pose, eye, brow, sx)
        band = (sy >= top) & (sy <= lower)
        sy = np.where(band, top + (sy - top) * (1 - squeeze), sy)
    colour = np.stack([inside, teeth], axis=-1)
    return sx.astype(np.float32), sy.astype(np.float32), colour


def forward_points(geometry: FaceGeometry, pose: Pose, points: np.ndarray | None = None) -> np.ndarray:
    """Where the neutral landmarks (or `points`) land in the warped frame (inverts `backward_map` per point)."""
    pts = np.array(geometry.landmarks if points is None else points, dtype=np.float64)
    out = pts.copy()
    # eyelids: what lay between brow and lower lid is stretched down; what the lid now covers sits on its edge
    for eye, brow in ((LEFT_EYE, LEFT_BROW), (RIGHT_EYE, RIGHT_BROW)):
        squeeze, top, lower = _blink_factor(geometry, pose, eye, brow, pts[:, 0])
        band = (out[:, 1] >= top) & (out[:, 1] <= lower) & (squeeze > 0)
        moved = np.minimum(top + (out[:, 1] - top) / np.maximum(1 - squeeze, 1e-3), lower)
        out[:, 1] = np.where(band, moved, out[:, 1])
    # jaw: y = y' - gap(x) fade(y') for points below the upper lip (fixed-point iteration)
    line = geometry.upper_lip_line(out[:, 0])
    below = out[:, 1] > line + 1e-6
    if len(below) == 68:
        below[[60, 61, 62, 63, 64]] = False  # they are the upper lip line itself
    gap = _gap(geometry, pose, out[:, 0])
    y = out[:, 1].copy()
    for _ in range(8):
        y = out[:, 1] + gap * _fade(geometry, y)
    out[:, 1] = np.where(below, y, out[:, 1])
    # lips: x = cx + (x' - cx) / (1 + (k-1) w(x', y')), again by fixed-point iteration
    k = 1 + SPREAD_GAIN * pose.spread
    cx = geometry.mouth_centre[0]
    x = out[:, 0].copy()
    for _ in range(8):
        x = cx + (out[:, 0] - cx) * (1 + (k - 1) * _spread_weight(geometry, x, out[:, 1]))
    out[:, 0] = x
    # head
    matrix = _head_matrix(geometry, pose)
    return out @ matrix[:, :2].T + matrix[:, 2]


def render(image: np.ndarray, geometry: FaceGeometry, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """The frame (uint8, same size as `image`) and its 68 landmarks."""
    height, width = image.shape[:2]
    map_x, map_y, colour = backward_map(geometry, pose, height, width)
    frame = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    inside, teeth = colour[..., :1], colour[..., 1:]
    frame = frame * (1 - inside) + MOUTH_COLOUR * inside
    frame = frame * (1 - teeth) + TEETH_COLOUR * teeth
    return np.clip(frame, 0, 255).round().astype(np.uint8), forward_points(geometry, pose)
