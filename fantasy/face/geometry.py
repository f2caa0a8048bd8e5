"""Pixel geometry around a face: the square crop the identity encoders see, the lip-tracing mask.

Backend-free: these take a `FaceBox` or 68 landmarks, whichever backend produced them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fantasy.face.types import LIPS, FaceBox

if TYPE_CHECKING:
    import torch


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
    import torch  # here, so that the face check and `eval` do not load torch for it

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
