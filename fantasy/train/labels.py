"""Motion-intensity labels and the lip-tracing mask, computed from a training sample.

Raw scores (per clip, at the training frame rate and size):
- expression: mean frame-to-frame displacement of the inner-face landmarks (17-67: brows, nose, eyes,
  mouth) after removing the head's rigid motion (each frame is aligned onto the previous one by the
  best similarity transform: shift, rotation, scale), in face sizes per frame;
- body: mean Farneback flow magnitude outside the face box (the landmark box of both frames of a
  pair, grown by `FACE_MARGIN` on every side), in face sizes per frame. Head sway moves the hair,
  neck and shoulders outside that box, so it counts as body motion; so does a moving background.

Labels: each raw score is rank-normalised over all clips of the dataset, label = rank / (n - 1) with
rank 0 for the smallest score and tied scores sharing their mean rank; a single clip gets 0.5. Ranks
ignore the scales of the two scores, which are not comparable across datasets anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from fantasy.face import FaceBox, lip_mask, lip_mask_to_latent_grid
from fantasy.metrics.dynamics import ANALYSIS_SIDE, farneback

INNER_FACE = slice(17, 68)
FACE_MARGIN = 0.15  # face box grown by this fraction of its size on each side (jaw drop stays inside)
LIP_DILATE = 0.05  # lip mask grown by this fraction of the face size (teeth, lip edges, chin line)


def face_size(landmarks: np.ndarray) -> float:
    """Mean over frames of the landmark box's longer side, in pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    extent = points.max(axis=1) - points.min(axis=1)
    return float(extent.max(axis=1).mean())


def _align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`source` points moved by the similarity transform that best fits them onto `target` (Umeyama)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    u, sigma, vt = np.linalg.svd(t.T @ s)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    variance = (s * s).sum()
    scale = float((sigma * np.diag(d)).sum() / variance) if variance > 0 else 1.0
    return scale * s @ rotation.T + mu_t


def expression_score(landmarks: np.ndarray) -> float:
    """Non-rigid inner-face landmark motion, in face sizes per frame (0 for a still or rigidly moving face)."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[0] < 2 or points.shape[1] < 68:
        raise ValueError(f"Expected landmarks [F >= 2, 68, 2], got {points.shape}")
    inner = points[:, INNER_FACE, :2]
    steps = [np.linalg.norm(_align(inner[t + 1], inner[t]) - inner[t], axis=1).mean() for t in range(len(inner) - 1)]
    return float(np.mean(steps)) / max(face_size(points), 1e-6)


def _face_region(a: np.ndarray, b: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel box around both frames' landmarks, grown by `FACE_MARGIN`, clamped."""
    box = FaceBox.from_landmarks(np.concatenate([a, b]))
    mx, my = FACE_MARGIN * box.width, FACE_MARGIN * box.height
    x1, y1 = int(np.floor(box.x1 - mx)), int(np.floor(box.y1 - my))
    x2, y2 = int(np.ceil(box.x2 + mx)), int(np.ceil(box.y2 + my))
    return max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)


def body_score(frames: np.ndarray, landmarks: np.ndarray, analysis_side: int = ANALYSIS_SIDE) -> float:
    """Mean optical-flow magnitude outside the (grown) face box, in face sizes per frame.

    Flow runs on a copy scaled to `analysis_side` (as `fantasy.metrics.dynamics` does) and is rescaled
    to sample pixels. A pair whose face box covers the whole frame contributes 0: nothing is outside.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"Expected frames [F >= 2, H, W, 3], got {frames.shape}")
    height, width = frames.shape[1:3]
    scale = min(1.0, analysis_side / max(height, width))

    def gray(frame: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        return g if scale == 1.0 else cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    steps = []
    prev = gray(frames[0])
    for t in range(len(frames) - 1):
        nxt = gray(frames[t + 1])
        magnitude = np.linalg.norm(farneback(prev, nxt), axis=2) / scale
        outside = np.ones(magnitude.shape, dtype=bool)
        x1, y1, x2, y2 = (int(round(v * scale)) for v in _face_region(landmarks[t], landmarks[t + 1], width, height))
        outside[y1:y2, x1:x2] = False
        steps.append(float(magnitude[outside].mean()) if outside.any() else 0.0)
        prev = nxt
    return float(np.mean(steps)) / max(face_size(landmarks), 1e-6)


def rank_normalise(scores: Sequence[float]) -> np.ndarray:
    """Scores -> labels in [0, 1]: rank / (n - 1), ties share their mean rank, one score -> 0.5."""
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("No scores to normalise.")
    if not np.isfinite(values).all():
        raise ValueError(f"Motion scores must be finite, got {values.tolist()}")
    if values.size == 1:
        return np.array([0.5])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks / (values.size - 1)


def motion_labels(scores: np.ndarray) -> np.ndarray:
    """[N, 2] raw (expression, body) scores of a dataset -> [N, 2] labels, each column rank-normalised."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != 2:
        raise ValueError(f"Expected scores [N, 2] (expression, body), got {scores.shape}")
    return np.stack([rank_normalise(scores[:, 0]), rank_normalise(scores[:, 1])], axis=1)


def lip_token_mask(
    landmarks: np.ndarray,
    height: int,
    width: int,
    vae_temporal: int = 4,
    vae_spatial: int = 8,
    patch: tuple[int, int, int] = (1, 2, 2),
) -> torch.Tensor:
    """Lip-tracing mask on the DiT token grid, [T_lat, H/16, W/16] float 0/1 (see `lip_mask_to_latent_grid`).

    Per frame the lip hull is dilated by `LIP_DILATE` face sizes (at least 1 px) before pooling.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    dilate = max(1, int(round(LIP_DILATE * face_size(points))))
    masks = np.stack([lip_mask(p, height, width, dilate_px=dilate) for p in points])
    return lip_mask_to_latent_grid(masks, vae_temporal=vae_temporal, vae_spatial=vae_spatial, patch=patch)
