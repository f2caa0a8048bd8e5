"""Input checks before any model work: limits, messages, the duration cut, and the face check (pluggable, dlib by default)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import soundfile
from PIL import Image

from fantasy.app.validation import (
    DEFAULT_DURATION_S,
    MAX_DURATION_S,
    FaceChecker,
    check_file_size,
    check_inputs,
    default_face_check,
    duration_limit,
    human_size,
)
from fantasy.errors import (
    AudioTooShort,
    FileTooLarge,
    ImageTooSmall,
    MissingInput,
    NoFaceFound,
    SilentAudio,
    UnsupportedAudio,
    UnsupportedImage,
    WeightsMissing,
)
from fantasy.generation import Settings
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, bad_speech_files, speech_like

TINY = get_preset("tiny")


def no_face_on_flat_images(image_rgb: np.ndarray) -> None:
    """Stand-in detector: a flat image has no face; the shipped portrait has one."""
    if image_rgb.std() < 5:
        raise NoFaceFound("No face found in the portrait: use a photo where one face is clearly visible.")


FAKE_FACES = FaceChecker(no_face_on_flat_images, "face check: passed (test detector)")


@pytest.mark.parametrize("requested, limit", [(None, 10.0), (5.0, 5.0), (0.1, 1.0), (100.0, 30.0)])
def test_duration_limit_comes_from_one_constant(requested, limit):
    assert (DEFAULT_DURATION_S, MAX_DURATION_S) == (10.0, 30.0)
    assert duration_limit(requested) == limit


def test_sizes_read_like_people_write_them():
    assert human_size(20 * 1024 * 1024) == "20 MB"
    assert human_size(300 * 1024) == "300 KB"
    assert human_size(1.5 * 1024 * 1024) == "1.5 MB"
    # binary units, exactly: one MiB is "1 MB" (a byte less is still KB), and 100 MiB is not 99.9
    assert (human_size(1024 * 1024), human_size(1024 * 1024 - 1)) == ("1 MB", "1024 KB")
    assert (human_size(100 * 1024 * 1024), human_size(100 * 1024)) == ("100 MB", "100 KB")


def test_file_over_the_limit(tmp_path):
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 3000)
    check_file_size(big, "speech", 3000)  # at the limit: fine
    with pytest.raises(FileTooLarge, match=r"^The speech file 'big.wav' is 2.9 KB; the limit is 2 KB\. "
                                           r"Use a smaller file \(a shorter clip, or a compressed photo\)\.$"):
        check_file_size(big, "speech", 2048)


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_inputs(missing):
    """Each named, and tied to its input (`concerns`: the app shows the message on that field)."""
    with pytest.raises(MissingInput, match=r"^Add a portrait: upload a photo or take one with the webcam\.$") as image:
        check_inputs(missing, EXAMPLE_SPEECH, Settings(), TINY)
    assert image.value.concerns == "image"
    with pytest.raises(MissingInput,
                       match=r"^Add speech: upload an audio file or record one with the microphone\.$") as audio:
        check_inputs(EXAMPLE_IMAGE, missing, Settings(), TINY)
    assert audio.value.concerns == "audio"


def test_a_path_that_is_not_a_file_is_left_to_its_own_check(tmp_path):
    check_file_size(tmp_path / "missing.wav", "speech", 0)  # not found: said by the speech loader, not as a size
    check_file_size(tmp_path, "speech", 0)


def test_without_a_face_checker_the_status_says_the_check_was_skipped(speech_wav):
    assert check_inputs(EXAMPLE_IMAGE, speech_wav, Settings(), TINY).face_note == "face check skipped"


def test_portrait_over_the_limit_is_refused():
    with pytest.raises(FileTooLarge, match="portrait file 'portrait.png'") as info:
        check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY, max_upload_bytes=100_000)
    assert info.value.concerns == "image"  # the app shows it on the portrait


def test_speech_over_the_limit_is_refused_on_its_own(tmp_path):
    """The portrait is well under the limit, so only the speech check can refuse this pair."""
    portrait = tmp_path / "face.jpg"
    Image.open(EXAMPLE_IMAGE).convert("RGB").resize((256, 256)).save(portrait, quality=90)
    speech = tmp_path / "long.wav"
    soundfile.write(speech, speech_like(10.0), 16_000)  # 16-bit PCM: 320,044 bytes
    limit = 200 * 1024
    assert portrait.stat().st_size < limit // 4 and speech.stat().st_size == 320_044
    with pytest.raises(FileTooLarge, match=r"^The speech file 'long.wav' is 312.5 KB; the limit is 200 KB\. ") as info:
        check_inputs(portrait, speech, Settings(), TINY, max_upload_bytes=limit)
    assert info.value.concerns == "audio"
    assert check_inputs(portrait, speech, Settings(), TINY, max_upload_bytes=320_044).num_frames == 233


def test_bad_speech_is_refused_with_its_reason(tmp_path):
    speech = bad_speech_files(tmp_path)
    silent, short, text = speech["silent"], speech["short"], speech["not_audio"]
    with pytest.raises(SilentAudio, match="is silent"):
        check_inputs(EXAMPLE_IMAGE, silent, Settings(), TINY)
    with pytest.raises(AudioTooShort, match="at least 0.2 s"):
        check_inputs(EXAMPLE_IMAGE, short, Settings(), TINY)
    with pytest.raises(UnsupportedAudio, match="Could not read 'notes.mp3' as audio"):
        check_inputs(EXAMPLE_IMAGE, text, Settings(), TINY)


def test_bad_portraits_are_refused(tmp_path):
    text = tmp_path / "photo.png"
    text.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (40, 40), "white").save(tiny)
    with pytest.raises(UnsupportedImage, match="Use a PNG, JPEG or WebP photo"):
        check_inputs(text, EXAMPLE_SPEECH, Settings(), TINY)
    with pytest.raises(ImageTooSmall, match="at least 64 px"):
        check_inputs(tiny, EXAMPLE_SPEECH, Settings(), TINY)


def test_face_check_is_pluggable(tmp_path):
    flat = tmp_path / "wall.png"
    Image.new("RGB", (256, 256), (120, 120, 120)).save(flat)
    with pytest.raises(NoFaceFound, match="No face found"):
        check_inputs(flat, EXAMPLE_SPEECH, Settings(), TINY, face_checker=FAKE_FACES)
    checked = check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY, face_checker=FAKE_FACES)
    assert checked.face_note == "face check: passed (test detector)"
    skipped = check_inputs(flat, EXAMPLE_SPEECH, Settings(), TINY, face_checker=FaceChecker(None, "face check skipped: x"))
    assert skipped.face_note == "face check skipped: x"  # no detector: generation goes on, and it is said


def test_face_check_sees_the_full_photo_not_the_model_input(tmp_path):
    seen = []
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1000, 2000, 3), dtype=np.uint8)).save(big)
    checker = FaceChecker(lambda rgb: seen.append(rgb), "recorded")
    check_inputs(big, EXAMPLE_SPEECH, Settings(longest_edge=64), TINY, face_checker=checker)
    check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(longest_edge=64), TINY, face_checker=checker)
    assert [rgb.shape for rgb in seen] == [(512, 1024, 3), (512, 512, 3)]  # capped at 1024 px, never the 64 px
    # The big photo is seen as a LANCZOS thumbnail (the detector's input is the sharp photo, not a blur of it).
    thumbnail = Image.open(big)
    thumbnail.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    assert np.array_equal(seen[0], np.asarray(thumbnail))
    assert np.array_equal(seen[1], np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB")))


def test_default_face_check_hands_its_device_and_download_choice_to_the_backend(monkeypatch):
    """They matter to face-alignment only (dlib runs on the CPU, with its models in the wheel)."""
    made = []

    class Backend:
        name = "recorded"

    monkeypatch.setattr("fantasy.face.make_backend", lambda name, **kw: made.append((name, kw)) or Backend())
    assert default_face_check().note == "face check: on (recorded)"
    default_face_check(device="cuda:1", allow_download=None, backend="face-alignment")
    assert made == [(None, {"device": None, "allow_download": False}),
                    ("face-alignment", {"device": "cuda:1", "allow_download": None})]


def test_long_speech_is_cut_with_a_notice(tmp_path):
    from fantasy.long_video import total_frame_count

    checked = check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY, max_duration_s=1.5)
    assert checked.settings.max_duration == 1.5
    assert checked.num_frames == total_frame_count(1.5, 23, 1.5)[0] == 37
    assert checked.settings.steps == TINY.steps and checked.settings.longest_edge == TINY.longest_edge
    assert checked.notices == ["The speech is 6.4 s long; it was cut to the maximum duration of 1.5 s."]
    # by default the core's 10 s apply: the 6.4 s example is animated whole (several windows)
    whole = check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY)
    assert whole.notices == [] and whole.num_frames == 149
    # a request over the app's cap gets the cap
    long_speech = tmp_path / "long.wav"
    soundfile.write(long_speech, speech_like(40.0), 16_000)
    capped = check_inputs(EXAMPLE_IMAGE, long_speech, Settings(), TINY, max_duration_s=600)
    assert capped.settings.max_duration == MAX_DURATION_S and capped.num_frames == 693
    assert capped.notices == ["The speech is 40.0 s long; it was cut to the maximum duration of 30.0 s."]


def test_short_speech_needs_no_notice(speech_wav):
    checked = check_inputs(EXAMPLE_IMAGE, speech_wav, Settings(), TINY)
    assert checked.notices == [] and checked.num_frames == 49


def test_default_face_check_runs_dlib_on_real_photos_before_any_model_work(tmp_path, monkeypatch):
    import fantasy.app.validation as validation
    from tests.real_faces import non_face_photos

    prepared = []
    real_prepare = validation.prepare_inputs
    monkeypatch.setattr(validation, "prepare_inputs", lambda *a, **k: prepared.append(a) or real_prepare(*a, **k))
    checker = default_face_check()
    assert checker.check is not None and checker.note == "face check: on (dlib)"
    checked = check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY, face_checker=checker)
    assert checked.face_note == "face check: 1 face (dlib HOG)" and len(prepared) == 1
    landscape = tmp_path / "coffee.jpg"
    Image.fromarray(non_face_photos()["coffee"]).save(landscape)
    with pytest.raises(NoFaceFound, match=r"^No face found in the portrait: use a photo where one face is clearly"):
        check_inputs(landscape, EXAMPLE_SPEECH, Settings(), TINY, face_checker=checker)
    assert len(prepared) == 1, "refused before the speech is even read"


def test_default_face_check_takes_the_most_confident_of_several_faces(tmp_path):
    two = tmp_path / "two.png"
    photo = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    Image.fromarray(np.hstack([photo, photo[:, ::-1]])).save(two)  # 1024 x 512: the check sees it whole
    checked = check_inputs(two, EXAMPLE_SPEECH, Settings(), TINY, face_checker=default_face_check())
    assert checked.face_note == "face check: 2 faces found; using the most confident, top left (dlib HOG score 1.46)"


@pytest.mark.skipif(importlib.util.find_spec("face_alignment") is None,
                    reason="face-alignment (optional backend) not installed; CI installs it")
def test_default_face_check_with_face_alignment_chosen_needs_its_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checker = default_face_check(device="cpu", backend="face-alignment")
    assert checker.note == "face check: on (face-alignment)"
    with pytest.raises(WeightsMissing, match=r"2DFAN4-11f355bf06\.pth\.tar' is missing"):
        check_inputs(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Settings(), TINY, face_checker=checker)
