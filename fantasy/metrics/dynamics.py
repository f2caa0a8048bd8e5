"""Motion and flicker: how much the subject and the background move, and how much the picture pumps.

Subject and background dynamics follow the paper's SD/BD idea (motion magnitude inside and outside
the subject) with dense optical flow (OpenCV Farneback) between consecutive frames. The paper does
not publish its exact region or flow model, so our numbers are on our own scale:
mean flow magnitude in **pixels per frame, measured as if the frame's longest side were 512 px**
(flow is computed on a downscaled copy and rescaled), so clips of different sizes compare.

The subject region is a body box grown from the face: one face width to each side, 60 % of a face
height above the landmark box (hair), down to the bottom of the frame (neck, shoulders, torso).

Flicker is motion-compensated: warp frame t+1 back onto frame t with the flow and take the mean
absolute luma difference (0-255). Motion the flow explains does not count; brightness pumping,
texture boiling and popping do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fantasy.face import FaceBox

REFERENCE_SIDE = 512
ANALYSIS_SIDE = 256  # Farneback at 256 px: ~15 ms a pair on one CPU core, enough for head/body motion
SIDE_MARGIN = 1.0  # face widths added left and right for the body box
TOP_MARGIN = 0.6  # landmark-box heights added above (brows -> top of the hair)


def subject_box(face: FaceBox, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the subject's body box in a `width` x `height` frame, clamped to it."""
    x1 = int(np.floor(face.x1 - SIDE_MARGIN * face.width))
    x2 = int(np.ceil(face.x2 + SIDE_MARGIN * face.width))
    y1 = int(np.floor(face.y1 - TOP_MARGIN * face.height))
    return max(x1, 0), max(y1, 0), min(x2, width), height


def _gray(frame: np.ndarray, scale: float) -> np.ndarray:
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if scale != 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return gray


def farneback(prev_gray: np.ndarray, next_gray: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2): prev(y, x) ~ next(y + f[..., 1], x + f[..., 0])."""
    return cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def compensated_difference(prev_gray: np.ndarray, next_gray: np.ndarray, flow: np.ndarray) -> float:
    """Mean |prev - warp(next)| over pixels whose flow stays inside the frame."""
    h, w = prev_gray.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x, map_y = gx + flow[..., 0], gy + flow[..., 1]
    warped = cv2.remap(next_gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    if not inside.any():
        return float("nan")
    diff = np.abs(prev_gray.astype(np.float32) - warped.astype(np.float32))
    return float(diff[inside].mean())


@dataclass(frozen=True)
class DynamicsResult:
    subject: float | None  # px/frame at 512 px inside the body box; None without any face box
    background: float | None  # px/frame at 512 px outside it; None without a face box or background
    overall: float  # px/frame at 512 px over the whole frame
    flicker: float  # mean motion-compensated luma change, 0-255
    pairs: int  # consecutive frame pairs measured
    pairs_with_subject: int


def motion_dynamics(
    frames: Sequence[np.ndarray],
    face_boxes: Sequence[FaceBox | None],
    analysis_side: int = ANALYSIS_SIDE,
) -> DynamicsResult:
    """Subject/background flow magnitude and flicker, averaged over all consecutive frame pairs.

    A frame pair uses the face box of its first frame, else its second, else the last one seen
    (a face lost for a frame or two keeps its region); pairs before any face is seen only count
    towards `overall` and `flicker`.
    """
    if len(frames) < 2:
        raise ValueError("Motion needs at least two frames.")
    h, w = frames[0].shape[:2]
    scale = min(1.0, analysis_side / max(h, w))
    to_reference = REFERENCE_SIDE / (max(h, w) * scale)
    subject, background, overall, flicker = [], [], [], []
    last_box: FaceBox | None = None
    prev = _gray(frames[0], scale)
    for t in range(len(frames) - 1):
        nxt = _gray(frames[t + 1], scale)
        flow = farneback(prev, nxt)
        magnitude = np.linalg.norm(flow, axis=2) * to_reference
        overall.append(float(magnitude.mean()))
        flicker.append(compensated_difference(prev, nxt, flow))
        last_box = face_boxes[t] or face_boxes[t + 1] or last_box
        if last_box is not None:
            x1, y1, x2, y2 = (int(round(v * scale)) for v in subject_box(last_box, w, h))
            inside = np.zeros(magnitude.shape, dtype=bool)
            inside[y1:y2, x1:x2] = True
            if inside.any():
                subject.append(float(magnitude[inside].mean()))
            if (~inside).any():
                background.append(float(magnitude[~inside].mean()))
        prev = nxt
    return DynamicsResult(
        subject=float(np.mean(subject)) if subject else None,
        background=float(np.mean(background)) if background else None,
        overall=float(np.mean(overall)),
        flicker=float(np.nanmean(flicker)) if np.isfinite(flicker).any() else float("nan"),
        pairs=len(frames) - 1,
        pairs_with_subject=len(subject),
    )
