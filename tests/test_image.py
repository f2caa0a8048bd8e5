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


# ---- decoding no more than is needed (the app's checks: `keep_edge`) -----------------------------------------


def _gradient(width: int, height: int) -> Image.Image:
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = np.linspace(0, 255, width).astype(np.uint8)
    pixels[..., 1] = np.linspace(0, 255, height).astype(np.uint8)[:, None]
    pixels[..., 2] = 128
    return Image.fromarray(pixels)


def test_a_photo_under_twice_the_kept_edge_is_decoded_whole_exactly_as_without(tmp_path):
    path = tmp_path / "photo.png"
    _gradient(1023, 700).save(path)
    whole, kept = load_portrait(path), load_portrait(path, keep_edge=512)
    assert kept.size == whole.size == (1023, 700) and np.array_equal(np.asarray(kept), np.asarray(whole))


@pytest.mark.parametrize("name, mode", [("big.png", "RGB"), ("big.jpg", "RGB"), ("big-alpha.png", "RGBA"),
                                        ("big-palette.png", "P"), ("big-16bit.png", "I;16")])
def test_a_large_photo_is_decoded_reduced_keeping_at_least_the_edge(tmp_path, name, mode):
    path = tmp_path / name
    image = _gradient(2100, 1250)
    if mode == "RGBA":
        image.putalpha(Image.new("L", image.size, 255))
    elif mode == "P":
        image = image.convert("P")
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image)[..., 0].astype(np.uint16) * 257)
    image.save(path, quality=95) if name.endswith(".jpg") else image.save(path)
    kept = load_portrait(path, keep_edge=512)
    assert kept.mode == "RGB" and kept.size == (525, 313)  # 2100 // 512 = 4 (a JPEG: its decoder's 1/4 scale)
    whole = load_portrait(path).resize(kept.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(kept, np.int16) - np.asarray(whole, np.int16)).mean() < 2  # the same picture


def test_a_reduced_decode_keeps_the_exif_orientation(tmp_path):
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    _gradient(2100, 1250).save(path, exif=exif)
    assert load_portrait(path, keep_edge=512).size == (313, 525)  # upright: the long side is the height


@pytest.mark.parametrize("values, expected", [
    (np.array([-1.0, 3.0, 1.8, 0.2]), [0, 255, 178, 76]),  # outside every known range: stretched, 255 not 256
    (np.array([-0.5, -0.25, -0.375]), [0, 255, 128]),  # a range under 1 is stretched too
    (np.array([10, 255], np.int32), [10, 255]),  # integers up to 255 taken as they are, 255 included
])
def test_grey_values_of_an_unknown_range_are_stretched_and_8_bit_values_kept(values, expected):
    from fantasy.media.image import _grey_to_8bit

    assert _grey_to_8bit(values, sixteen_bit=False).tolist() == expected


def test_clip_normalisation_subtracts_the_mean_and_divides_by_the_std_per_channel():
    """With CLIP's own mean and std (a mean of 0 and std of 1 would hide a swapped sign or a product)."""
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    colour = (200, 30, 120)
    pixels = clip_pixel_values(Image.new("RGB", (40, 24), colour), 16, mean, std)
    assert pixels.dtype == torch.float32 and pixels.shape == (1, 3, 16, 16)
    expected = torch.tensor([(c / 255 - m) / s for c, m, s in zip(colour, mean, std, strict=True)])
    assert torch.allclose(pixels, expected.view(1, 3, 1, 1).expand(1, 3, 16, 16), atol=1e-6, rtol=0)
