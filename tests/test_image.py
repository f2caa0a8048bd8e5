"""Portrait loading, validation and release sizing."""

import numpy as np
import pytest
import torch
from PIL import Image

from fantasy.errors import ImageTooSmall, InputFileNotFound, UnsupportedImage
from fantasy.media.image import clip_pixel_values, load_portrait, resize_portrait, target_size

from .conftest import EXAMPLE_IMAGE


def test_example_portrait_loads():
    image = load_portrait(EXAMPLE_IMAGE)
    assert image.mode == "RGB" and image.size == (512, 512)


@pytest.mark.parametrize("size, edge, expected", [
    ((512, 512), 512, (512, 512)),
    ((1024, 768), 512, (512, 384)),
    ((1000, 600), 512, (512, 320)),  # 307 -> rounded up to 320
    ((600, 1000), 512, (320, 512)),
    ((1920, 1080), 512, (512, 288)),
    ((333, 500), 128, (96, 128)),  # 85 -> 96
])
def test_release_sizing(size, edge, expected):
    assert target_size(*size, edge) == expected
    assert resize_portrait(Image.new("RGB", size), edge).size == expected


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFound, match="Portrait file not found"):
        load_portrait(tmp_path / "me.png")


def test_not_an_image(tmp_path):
    path = tmp_path / "me.png"
    path.write_text("hello")
    with pytest.raises(UnsupportedImage, match="Could not read 'me.png' as an image"):
        load_portrait(path)


def test_too_small(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (200, 50)).save(path)
    with pytest.raises(ImageTooSmall, match="200x50 px; each side must be at least 64 px"):
        load_portrait(path)


def test_transparency_becomes_white_and_exif_rotation_is_applied(tmp_path):
    rgba = Image.new("RGBA", (80, 100), (0, 0, 0, 0))
    assert load_portrait(rgba).getpixel((0, 0)) == (255, 255, 255)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (120, 80), (200, 10, 10)).save(path, exif=exif)
    assert load_portrait(path).size == (80, 120)


def test_clip_input_is_a_squash_not_a_crop():
    # 3:1, black | white | black. A squash keeps all three bands; a centre crop would see only white.
    bands = [np.zeros((64, 64, 3)), np.full((64, 64, 3), 255), np.zeros((64, 64, 3))]
    image = Image.fromarray(np.concatenate(bands, 1).astype(np.uint8))
    pixels = clip_pixel_values(image, 32, [0.0] * 3, [1.0] * 3)
    assert pixels.shape == (1, 3, 32, 32)
    assert torch.all(pixels[..., :9] < 0.05) and torch.all(pixels[..., 23:] < 0.05)
    assert torch.all(pixels[..., 13:19] > 0.95)
