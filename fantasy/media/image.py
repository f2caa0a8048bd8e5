"""Portrait in: read and validate the image, size it like the release, make Wan's CLIP image tokens."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from fantasy.errors import (
    ImageShapeUnsupported,
    ImageTooLarge,
    ImageTooSmall,
    InputFileNotFound,
    InvalidSetting,
    UnsupportedImage,
)

MIN_SIDE = 64
SIDE_MULTIPLE = 16  # VAE stride 8 x patch 2
# Checked from the file's header, before decoding: 64 Mpx (a 48 MP phone photo passes) decodes to 192 MB of RGB.
# PIL's own bomb check (a warning at 89 Mpx, an error at 179 Mpx) comes later and with a traceback.
MAX_PIXELS = 64_000_000
MAX_ASPECT = 4.0  # longest side / shortest side; the video keeps the portrait's shape, so strips are refused
SQUASH_NOTICE = 0.10  # tell the user when the release's sizing (sides up to multiples of 16) bends the shape more

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # MAX_PIXELS is the stricter limit


def load_portrait(source: str | Path | Image.Image, keep_edge: int | None = None) -> Image.Image:
    """RGB portrait, upright (EXIF orientation applied), within the pixel and aspect limits, >= 64 px a side.

    Every PIL mode is converted faithfully (`to_rgb`): 16-bit and float images are scaled, not clipped;
    transparency is flattened on white; LAB goes through a colour transform. `keep_edge`: decode no more than
    a result of that longest edge needs (`decode_reduced`); None decodes the whole photo.
    """
    if isinstance(source, Image.Image):
        name = "the portrait"
        check_dimensions(source.size, name)
        image = source
    else:
        path = Path(source)
        name = f"'{path.name}'"
        if not path.is_file():
            raise InputFileNotFound(f"Portrait file not found: {path}")
        try:
            with Image.open(path) as opened:  # reads the header only
                check_dimensions(opened.size, name)
                decoded = decode_reduced(opened, keep_edge) if keep_edge is not None else opened
                image = ImageOps.exif_transpose(decoded)  # a loaded, upright copy
                if decoded is not opened:
                    decoded.close()
                opened.close()  # frees the decoded pixels now, not when the garbage collector gets to them
        except Image.DecompressionBombError as exc:  # PIL refuses over 179 Mpx at open; its message has the count
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{int(pixels[1]) / 1e6:.0f} megapixels" if pixels else "over 179 megapixels"
            raise ImageTooLarge(_too_large(name, size)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UnsupportedImage(
                f"Could not read {name} as an image ({type(exc).__name__}). Use a PNG, JPEG or WebP photo."
            ) from exc
    image = to_rgb(image)
    if min(image.size) < MIN_SIDE:
        raise ImageTooSmall(
            f"{name} is {image.width}x{image.height} px; each side must be at least {MIN_SIDE} px "
            "(512 px or more gives the best results)."
        )
    return image


def decode_reduced(opened: Image.Image, keep_edge: int) -> Image.Image:
    """The opened (not yet decoded) image, decoded at a reduced size when its longest edge is at least twice
    `keep_edge`: a JPEG at the decoder's own 1/2, 1/4 or 1/8 scale, any other format reduced right after decoding
    (a box filter by a whole factor), so the result keeps a longest edge of at least `keep_edge`. Smaller photos
    come back untouched (decoded later, exactly as without this). Transparency, 16-bit and EXIF orientation
    survive (`to_rgb` and `ImageOps.exif_transpose` still apply)."""
    factor = max(opened.size) // keep_edge
    if factor < 2:
        return opened
    if opened.format == "JPEG":
        width, height = opened.size
        opened.draft(None, (-(-width // factor), -(-height // factor)))  # the largest scale at least that size
    opened.load()
    factor = max(opened.size) // keep_edge
    if factor < 2:
        return opened
    try:
        return opened.reduce(factor)
    except ValueError:  # a mode `reduce` does not take (P, 1, I;16...): reduce its RGB form
        rgb = to_rgb(opened)
        try:
            return rgb.reduce(factor)
        finally:
            if rgb is not opened:
                rgb.close()


def check_dimensions(size: tuple[int, int], name: str = "the portrait") -> None:
    """The pixel limit and the aspect limit, from the size alone (before any decoding)."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(_too_large(name, f"{width}x{height} px ({width * height / 1e6:.0f} megapixels)"))
    if min(width, height) > 0 and max(width, height) / min(width, height) > MAX_ASPECT:
        raise ImageShapeUnsupported(
            f"{name} is {width}x{height} px, {max(width, height) / min(width, height):.0f}:1; portraits up to "
            f"{MAX_ASPECT:g}:1 (either way) are supported: crop it around the face."
        )


def _too_large(name: str, size: str) -> str:
    return (f"{name} is {size}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels: "
            "use a smaller photo (2 megapixels are plenty).")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, keeping what the picture shows.

    - transparency (RGBA, LA, La, RGBa, PA, P or L/RGB with a transparent colour): flattened on white,
      which is what people expect from a cut-out;
    - 16-bit greys (I;16*): scaled by 255/65535 (PIL's own conversion clips everything above 255 to white);
    - 32-bit integer (I) and float (F) greys: floats within 0-1 are scaled by 255, values within 0-255 kept,
      values within 0-65535 scaled like 16 bit, anything else stretched from its minimum to its maximum;
    - LAB through a LAB -> sRGB colour transform; CMYK, YCbCr, HSV, 1, L and P through PIL's conversions.
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        grey = _grey_to_8bit(np.asarray(image), sixteen_bit=mode.startswith("I;16"))
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        return ImageCms.applyTransform(image, lab_to_srgb)
    return image.convert("RGB")


def _grey_to_8bit(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    floating = values.dtype.kind == "f"
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if sixteen_bit or (not floating and low >= 0 and 255 < high <= 65535):
        scaled = values / 257  # 65535 -> 255, 257 k -> k
    elif floating and low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) / max(high - low, 1e-12) * 255
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def resize_note(size: tuple[int, int], longest_edge: int) -> str | None:
    """A notice when the release's sizing (sides rounded up to multiples of 16) changes the shape noticeably."""
    width, height = size
    new_w, new_h = target_size(width, height, longest_edge)
    change = (new_w / new_h) / (width / height) - 1
    if abs(change) <= SQUASH_NOTICE:
        return None
    return (f"At {longest_edge} px the {width}x{height} portrait becomes {new_w}x{new_h} (sides are multiples of "
            f"{SIDE_MULTIPLE}), {abs(change):.0%} {'wider' if change > 0 else 'taller'} than the photo: "
            "raise the resolution or crop the photo closer to square to keep its shape.")


def target_size(width: int, height: int, longest_edge: int) -> tuple[int, int]:
    """Release sizing: scale the longest edge to `longest_edge` (int truncation), then round each
    side *up* to a multiple of 16. Returns (width, height)."""
    scale = longest_edge / max(width, height)
    w, h = int(width * scale), int(height * scale)
    return (math.ceil(w / SIDE_MULTIPLE) * SIDE_MULTIPLE, math.ceil(h / SIDE_MULTIPLE) * SIDE_MULTIPLE)


def resize_portrait(image: Image.Image, longest_edge: int) -> Image.Image:
    """Resize as the release does: LANCZOS to the longest edge, then bicubic to the 16-multiple size.

    The size is checked before anything is allocated: a resized portrait is never larger than an upload may be
    (`MAX_PIXELS`). This is the last line; `Settings.resolved` holds every entry point to its preset's bound.
    """
    if longest_edge < MIN_SIDE or longest_edge % SIDE_MULTIPLE:
        raise ValueError(f"longest edge must be a multiple of {SIDE_MULTIPLE} and >= {MIN_SIDE}, got {longest_edge}")
    final = target_size(image.width, image.height, longest_edge)
    if final[0] * final[1] > MAX_PIXELS:
        raise InvalidSetting(f"resolution (longest edge) {longest_edge} px would make the portrait {final[0]}x{final[1]} "
                             f"px; the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
    scale = longest_edge / max(image.size)
    first = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    return first if first.size == final else first.resize(final, Image.Resampling.BICUBIC)


def clip_pixel_values(image: Image.Image, image_size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """CLIP input as the original Wan builds it: bicubic *squash* to image_size^2 (no centre crop,
    unlike diffusers' `CLIPImageProcessor`), then CLIP normalisation. Returns [1, 3, S, S] float32."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bicubic", align_corners=False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t
