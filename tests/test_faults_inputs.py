"""Fault injection on the inputs: a 2-hour upload cut to 1 s (peak RSS bound), pixel bombs, elongated strips,
and every PIL mode converted faithfully (16-bit greys not clipped, transparency on white).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageCms

from fantasy.cli import main
from fantasy.errors import ImageShapeUnsupported, ImageTooLarge
from fantasy.generation import Settings, prepare_inputs
from fantasy.media.audio import load_speech
from fantasy.media.image import load_portrait
from tests import faults
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT, speech_like


@pytest.fixture(scope="module")
def long_opus(tmp_path_factory) -> Path:
    return faults.long_opus(tmp_path_factory.mktemp("uploads"))


def test_a_two_hour_file_is_decoded_only_up_to_the_limit(long_opus, tmp_path):
    # libsndfile streams Opus; ffmpeg decodes AAC (m4a) with `-t`. Both stop at the limit plus 1 s.
    long_m4a = faults.long_upload(tmp_path, ".m4a", ["-c:a", "aac", "-b:a", "24k"])
    for path in (long_opus, long_m4a):
        speech = load_speech(path, 1.0)
        assert len(speech.samples) == 2 * 16_000
        assert speech.duration_s > faults.HOURS_2 - 1  # the whole file's length, from its header
    # and what is decoded is exactly the start of the whole decode
    full = load_speech(EXAMPLE_SPEECH).samples
    assert np.array_equal(load_speech(EXAMPLE_SPEECH, 2.0).samples, full[: 3 * 16_000])


@pytest.mark.parametrize("suffix", [".wav", ".m4a"])  # libsndfile streams the wav; ffmpeg `-t` decodes the m4a
def test_cut_decoding_resamples_exactly_as_the_whole_file(tmp_path, suffix):
    """44.1 kHz speech, resampled: the samples a video uses (limit + the frame rule's 5/8 s) and release mode's
    one clip are those of the whole decode (`resample_like_librosa`), though only limit + 1 s is decoded."""
    from fantasy.media.audio import clip_samples, ffmpeg_executable, load_audio
    from fantasy.weights.presets import PRESETS

    wav = tmp_path / "speech.wav"
    soundfile.write(wav, speech_like(8.0, 44_100), 44_100)
    path = tmp_path / f"speech{suffix}"
    if suffix != ".wav":
        subprocess.run([ffmpeg_executable(), "-v", "error", "-i", str(wav), "-c:a", "aac", str(path)], check=True)
    whole = load_audio(path)
    for limit in (1.0, 2.3):
        used = int((limit + 5 / 8) * 16_000)
        cut = load_speech(path, limit).samples
        assert len(cut) < len(whole) and np.array_equal(cut[:used], whole[:used])
    release = prepare_inputs(EXAMPLE_IMAGE, path, Settings(release=True, longest_edge=64).resolved(PRESETS["tiny"]))
    assert (release.num_frames, release.speech_cut) == (81, True) and len(release.speech) < len(whole)
    assert np.array_equal(clip_samples(release.speech, 81, 23), clip_samples(whole, 81, 23))


@pytest.mark.parametrize("room_kb", [400, 800])
def test_a_nearly_full_temp_folder_does_not_shorten_the_speech(tmp_path, monkeypatch, room_kb):
    """ffmpeg decoded m4a into a temporary WAV: with room for 800 KB of its 1 MB the speech came back 2.32 s long
    of 2.90 (exit 0, a shorter video), with 400 KB 'Could not read as audio (Conversion failed!)'. It decodes
    into a pipe now: the temp folder plays no part."""
    import tempfile

    from fantasy.media.audio import ffmpeg_executable

    wav, m4a = tmp_path / "speech.wav", tmp_path / "speech.m4a"
    soundfile.write(wav, np.stack([speech_like(2.9, 44_100, 1), speech_like(2.9, 44_100, 2)], 1), 44_100)
    subprocess.run([ffmpeg_executable(), "-v", "error", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    whole = load_speech(m4a)
    assert whole.duration_s == 2.9025
    with faults.tmpfs(tmp_path / "tmp", room_kb) as tmp:
        monkeypatch.setenv("TMPDIR", str(tmp))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        speech = load_speech(m4a)
        assert list(tmp.iterdir()) == []
    assert speech.duration_s == whole.duration_s and np.array_equal(speech.samples, whole.samples)


def run_measured(cmd: list[str], folder: Path) -> tuple[int, str, float]:
    """(exit status, stderr, peak RSS in MB) of one process: its own rusage, not the other children's."""
    with (folder / "stdout").open("w") as out, (folder / "stderr").open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, (folder / "stderr").read_text(), usage.ru_maxrss / 1024


@pytest.mark.slow
def test_a_two_hour_upload_costs_the_cli_what_one_second_does(long_opus, tmp_path):
    short = tmp_path / "speech-1s.wav"
    soundfile.write(short, speech_like(1.0), 16_000)
    peaks, errors = {}, {}
    for name, audio in (("1 s", short), ("2 h", long_opus)):
        cmd = [sys.executable, "-m", "fantasy", "generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(audio),
               "--out", str(tmp_path / f"{name[-1]}.mp4"), "--preset", "tiny", "--steps", "1", "--size", "64",
               "--max-duration", "1"]
        code, errors[name], peaks[name] = run_measured(cmd, tmp_path)
        assert code == 0, errors[name]
    assert "note: the speech (7200.0 s) was cut at the maximum duration (1 s)" in errors["2 h"]
    # Decoded whole, this file took 5.3 GB; cut at 1 s it costs what a 1-second file does.
    assert peaks["2 h"] - peaks["1 s"] < 48, peaks


@pytest.mark.parametrize("size, message", [
    ((10_000, 8_000), "'bomb.png' is 10000x8000 px (80 megapixels); the limit is 64 megapixels: "
                      "use a smaller photo (2 megapixels are plenty)."),
    # over 179 Mpx PIL itself refuses to open it; the message stays ours
    ((20_000, 20_000), "'bomb.png' is 400 megapixels; the limit is 64 megapixels: "
                       "use a smaller photo (2 megapixels are plenty)."),
])
def test_pixel_bombs_are_refused_from_the_header(tmp_path, size, message):
    bomb = faults.png_header(tmp_path / "bomb.png", *size)
    with pytest.raises(ImageTooLarge, match=f"^{re.escape(message)}$"):
        load_portrait(bomb)


def test_the_cli_refuses_a_pixel_bomb_in_one_line(tmp_path, capsys):
    bomb = faults.png_header(tmp_path / "bomb.png", 20_000, 20_000)
    code = main(["generate", "--image", str(bomb), "--audio", str(EXAMPLE_SPEECH), "--out", str(tmp_path / "o.mp4")])
    assert (code, capsys.readouterr().err) == (
        2, "error: 'bomb.png' is 400 megapixels; the limit is 64 megapixels: use a smaller photo (2 megapixels "
           "are plenty).\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]


def test_the_cli_refuses_a_huge_resolution_before_reading_anything(tmp_path, capsys, monkeypatch):
    """`--size 65536` resized the portrait first: a MemoryError traceback (issue 25). Now the settings refuse it,
    before the portrait or the speech is opened."""
    import fantasy.generation

    def no_reading(*_args):
        raise AssertionError("an input was read")

    monkeypatch.setattr(fantasy.generation, "prepare_inputs", no_reading)
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out",
                 str(tmp_path / "o.mp4"), "--preset", "real", "--size", "65536"])
    assert (code, capsys.readouterr().err) == (
        2, "error: resolution (longest edge) must be at most 1280 px with the real preset, got 65536\n")
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out",
                 str(tmp_path / "o.mp4"), "--preset", "real", "--size", "1024", "--max-duration", "600", "--fps", "60"])
    assert code == 2 and capsys.readouterr().err.startswith(
        "error: these settings ask for up to 36,005 frames of 1024x1024 px (37.75 gigapixels); the real preset "
        "makes at most 12.72 gigapixels")
    assert list(tmp_path.iterdir()) == []


def test_the_app_and_serve_refuse_a_huge_resolution_before_decoding(monkeypatch):
    """`fantasy serve` and the page check requests through `Studio.check` (`check_inputs`): the settings are
    refused before the portrait is decoded (one request grew a serve replica past 10 GB, issue 25)."""
    import fantasy.app.validation
    from fantasy.app.validation import check_inputs
    from fantasy.errors import InvalidSetting
    from fantasy.weights.presets import PRESETS

    monkeypatch.setattr(fantasy.app.validation, "load_portrait", lambda *_: pytest.fail("the portrait was decoded"))
    with pytest.raises(InvalidSetting, match="^resolution \\(longest edge\\) must be at most 256 px with the tiny "
                                             "preset, got 65536$"):
        check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(longest_edge=65536), PRESETS["tiny"])


def test_the_python_api_refuses_a_huge_resize_before_allocating(monkeypatch):
    """`prepare_inputs` with settings that were never resolved (the Python API): the resize refuses a portrait
    larger than an upload may be, before PIL allocates it."""
    from fantasy.errors import InvalidSetting
    from fantasy.media.image import resize_portrait

    class Resized(Exception):
        pass

    def resize(*_args, **_kwargs):
        raise Resized("PIL's resize was reached")

    monkeypatch.setattr(Image.Image, "resize", resize)
    with pytest.raises(InvalidSetting, match="^resolution \\(longest edge\\) 65536 px would make the portrait "
                                             "65536x65536 px; the limit is 64 megapixels$"):
        prepare_inputs(Image.new("RGB", (512, 512)), EXAMPLE_SPEECH, Settings(longest_edge=65536))
    with pytest.raises(InvalidSetting, match="would make the portrait 8016x8016 px"):
        resize_portrait(Image.new("RGB", (512, 512)), 8016)
    with pytest.raises(Resized, match="^PIL's resize was reached$"):  # 8000 x 8000: exactly the limit
        resize_portrait(Image.new("RGB", (512, 512)), 8000)


@pytest.mark.parametrize("size, ratio", [((10_000, 64), "156:1"), ((64, 2_560), "40:1")])
def test_strips_are_refused_not_squashed(tmp_path, size, ratio):
    path = tmp_path / "strip.png"
    Image.new("RGB", size, (120, 90, 60)).save(path)
    message = (f"'strip.png' is {size[0]}x{size[1]} px, {ratio}; portraits up to 4:1 (either way) are supported: "
               "crop it around the face.")
    with pytest.raises(ImageShapeUnsupported, match=f"^{re.escape(message)}$"):
        load_portrait(path)


def test_a_shape_bent_by_the_release_sizing_is_said(speech_wav):
    # 300x100 at 64 px: 64x21 rounds up to 64x32 (sides are multiples of 16): 2:1 instead of 3:1
    wide = Image.new("RGB", (300, 100), (120, 90, 60))
    inputs = prepare_inputs(wide, speech_wav, Settings(longest_edge=64))
    assert inputs.portrait.size == (64, 32)
    assert inputs.notices == [
        "At 64 px the 300x100 portrait becomes 64x32 (sides are multiples of 16), 33% taller than the photo: "
        "raise the resolution or crop the photo closer to square to keep its shape."]
    square = prepare_inputs(Image.new("RGB", (300, 300)), speech_wav, Settings(longest_edge=64))
    assert square.notices == []


GRADIENT = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)  # every 16th 16-bit level


def lab_of(rgb: tuple[int, int, int]) -> Image.Image:
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(Image.new("RGB", (64, 64), rgb), to_lab)


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 200, 40, 40] + [0] * 762)
    image.paste(0, (0, 0, 32, 64))
    image.info["transparency"] = 0  # palette entry 0 is transparent: the left half
    return image


@pytest.mark.parametrize("make, expected", [
    # 16-bit grey: scaled (v / 257), where PIL's own conversion clips everything above 255 to white
    (lambda: Image.fromarray(GRADIENT), np.round(GRADIENT / 257)),
    (lambda: Image.fromarray(GRADIENT.astype(np.int32), mode="I"), np.round(GRADIENT / 257)),
    (lambda: Image.fromarray((GRADIENT / 65535).astype(np.float32), mode="F"),
     np.round((GRADIENT / 65535).astype(np.float32).astype(np.float64) * 255)),
    (lambda: Image.new("LA", (64, 64), (100, 0)), np.full((64, 64), 255)),  # fully transparent: white
    (lambda: Image.new("LA", (64, 64), (100, 255)), np.full((64, 64), 100)),
])
def test_grey_modes_keep_their_tones(make, expected):
    pixels = np.asarray(load_portrait(make()))
    assert np.array_equal(pixels, np.repeat(expected.astype(np.uint8)[..., None], 3, axis=2))


@pytest.mark.parametrize("make, left, right", [
    (palette_with_transparency, (255, 255, 255), (200, 40, 40)),  # P with a transparent entry: white
    (lambda: Image.new("RGBA", (64, 64), (10, 20, 30, 0)), (255, 255, 255), (255, 255, 255)),
    (lambda: Image.new("RGBA", (64, 64), (10, 20, 30, 255)), (10, 20, 30), (10, 20, 30)),
    (lambda: Image.new("CMYK", (64, 64), (255, 0, 0, 0)), (0, 255, 255), (0, 255, 255)),  # pure cyan
    (lambda: lab_of((200, 60, 30)), (199, 60, 30), (199, 60, 30)),  # LAB back to sRGB, within a level
])
def test_colour_modes_and_transparency(make, left, right, tmp_path):
    image = make()
    path = tmp_path / ("portrait.tif" if image.mode == "CMYK" else "portrait.png")
    if image.mode != "LAB":  # PNG and TIFF keep the mode; LAB is given as an image
        image.save(path)
        image = path  # through the file, as a user gives it
    pixels = load_portrait(image)
    assert pixels.getpixel((0, 0)) == left and pixels.getpixel((63, 0)) == right


def test_a_16_bit_png_file_is_not_mostly_white(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(GRADIENT).save(path)
    assert Image.open(path).mode == "I;16"
    pixels = np.asarray(load_portrait(path))[..., 0]
    assert np.array_equal(pixels, np.round(GRADIENT / 257).astype(np.uint8))
    assert (pixels == 255).mean() < 0.01  # PIL's convert("L") made 99.6 % of it white
