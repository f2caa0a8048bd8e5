"""Portrait in: read and validate the image, size it like the release, make Wan's CLIP image tokens."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from fantasy.errors import ImageTooSmall, InputFileNotFound, UnsupportedImage

MIN_SIDE = 64
SIDE_MULTIPLE = 16  # VAE stride 8 x patch 2


def load_portrait(source: str | Path | Image.Image) -> Image.Image:
    """RGB portrait, upright (EXIF orientation applied), at least 64 px on each side."""
    if isinstance(source, Image.Image):
        image = source
        name = "the portrait"
    else:
        path = Path(source)
        name = f"'{path.name}'"
        if not path.is_file():
            raise InputFileNotFound(f"Portrait file not found: {path}")
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)  # a loaded, upright copy
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UnsupportedImage(
                f"Could not read {name} as an image ({type(exc).__name__}). Use a PNG, JPEG or WebP photo."
            ) from exc
    if image.mode != "RGB":
        image = _flatten_to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise ImageTooSmall(
            f"{name} is {image.width}x{image.height} px; each side must be at least {MIN_SIDE} px "
            "(512 px or more gives the best results)."
        )
    return image


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """Transparent pixels become white rather than black, which is what people expect from a cut-out."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def target_size(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """Release sizing: scale the longest edge to `longest_edge` (int truncation), then round each
    side *up* to a multiple of 16. Returns (width, height)."""
    scale = longest_edge / max(width, height)
    w, h = int(width * scale), int(height * scale)
    return (math.ceil(w / SIDE_MULTIPLE) * SIDE_MULTIPLE, math.ceil(h / SIDE_MULTIPLE) * SIDE_MULTIPLE)


def resize_portrait(image: Image.Image, longest_edge: int) -> Image.Image:
    """Resize as the release does: LANCZOS to the longest edge, then bicubic to the 16-multiple size."""
    if longest_edge < MIN_SIDE or longest_edge % SIDE_MULTIPLE:
        raise ValueError(f"longest edge must be a multiple of {SIDE_MULTIPLE} and >= {MIN_SIDE}, got {longest_edge}")
    scale = longest_edge / max(image.size)
    first = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    final = target_size(image.width, image.height, longest_edge)
    return first if first.size == final else first.resize(final, Image.Resampling.BICUBIC)


def clip_pixel_values(image: Image.Image, image_size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """CLIP input as the original Wan builds it: bicubic *squash* to image_size^2 (no centre crop,
    unlike diffusers' `CLIPImageProcessor`), then CLIP normalisation. Returns [1, 3, S, S] float32."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bicubic", align_corners=False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t
