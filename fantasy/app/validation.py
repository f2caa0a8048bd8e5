"""Checks a person's inputs before any model work: sizes, formats, speech length, a face in the portrait.

Every failure is a `FantasyError` whose message says what is wrong and what to do, so a UI can show it
as is. The face check is pluggable: `default_face_check()` runs the default face backend (dlib, whose
models ship with `requirements.txt`), so the app always checks; a test may plug in its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from fantasy.errors import FantasyError, FileTooLarge, MissingInput
from fantasy.generation import PreparedInputs, Settings, prepare_inputs
from fantasy.media.image import load_portrait
from fantasy.weights.presets import Preset

MAX_UPLOAD_MB = 20
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
# The longest video the app makes (its duration slider's top). Past 81 frames the core chains windows
# (fantasy.long_video) and accepts up to 600 s; this cap bounds one request's GPU time. Raise it here and
# the slider, the checks and the GPU-time request follow.
MAX_DURATION_S = 30.0
DEFAULT_DURATION_S = Settings().max_duration  # the core's default (10 s)
MIN_DURATION_S = 1.0
FACE_CHECK_EDGE = 1024  # detect on a copy at most this big: faster, and detectors are trained on such sizes
# Photos with a longest edge of at least twice this are decoded reduced (JPEG: by its decoder), keeping at least this
# much: twice what the app makes (its resolution slider stops at 1024) and what the face check looks at. Smaller
# photos are decoded whole, exactly as the CLI does.
DECODE_EDGE = 2048

# image (H, W, 3) RGB uint8 -> the status line's words for this image (None: the checker's note), or
# raises NoFaceFound with a message for the user
FaceCheck = Callable[[np.ndarray], str | None]


def duration_limit(requested_s: float | None) -> float:
    """The maximum duration a request gets: what it asked for, within [MIN_DURATION_S, MAX_DURATION_S]."""
    if requested_s is None:
        return min(DEFAULT_DURATION_S, MAX_DURATION_S)
    return min(max(float(requested_s), MIN_DURATION_S), MAX_DURATION_S)


def human_size(num_bytes: float) -> str:
    """'20 MB', '300 KB', '1.5 MB': sizes as people read them."""
    if num_bytes >= 1024 * 1024:
        value, unit = num_bytes / 1024 / 1024, "MB"
    else:
        value, unit = num_bytes / 1024, "KB"
    return f"{value:.1f} {unit}".replace(".0 ", " ")


def check_file_size(path: str | Path, what: str, limit_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Reject uploads over the limit with their size and the limit in the message."""
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size > limit_bytes:
        raise FileTooLarge(
            f"The {what} file '{Path(path).name}' is {human_size(size)}; the limit is {human_size(limit_bytes)}. "
            "Use a smaller file (a shorter clip, or a compressed photo)."
        )


def _about(concerns: str, error: FantasyError) -> FantasyError:
    error.concerns = concerns
    return error


@dataclass(frozen=True)
class FaceChecker:
    """A face check and the words the status line uses for it before any image is checked."""

    check: FaceCheck | None
    note: str


def default_face_check(device: str | None = None, allow_download: bool | None = False,
                       backend: str | None = None) -> FaceChecker:
    """The face check of the app: the default backend (dlib), or `backend` when named; always on.

    Built now, so a broken install fails at start-up (a `WeightsMissing` naming the package), not on the
    first click. No face: `NoFaceFound`. Several: the most confident is the subject, and the status line
    says so. `device` and `allow_download` (None: fetch unless HF_HUB_OFFLINE) only matter to face-alignment.
    """
    from fantasy.face import FaceAnalyzer, make_backend

    analyzer = FaceAnalyzer(make_backend(backend, device=device, allow_download=allow_download))
    lock = threading.Lock()  # one check at a time: the backend's models are shared by concurrent requests

    def check(image_rgb: np.ndarray) -> str:
        with lock:
            return f"face check: {analyzer.find(image_rgb).note()}"

    return FaceChecker(check, f"face check: on ({analyzer.name})")


def check_face(portrait: Image.Image, checker: FaceChecker) -> str:
    """The face check on a loaded portrait (the app's and the CLI's): the status line's words, or `NoFaceFound`."""
    if checker.check is None:
        return checker.note
    return checker.check(_face_input(portrait)) or checker.note


def _face_input(image: Image.Image) -> np.ndarray:
    if max(image.size) > FACE_CHECK_EDGE:
        image = image.copy()
        image.thumbnail((FACE_CHECK_EDGE, FACE_CHECK_EDGE), Image.Resampling.LANCZOS)
    return np.asarray(image.convert("RGB"))


@dataclass
class CheckedInputs:
    """What passed the checks: final settings, prepared model inputs, and notices to show the user."""

    settings: Settings  # resolved (preset defaults filled), max_duration from the duration limit
    inputs: PreparedInputs
    notices: list[str] = field(default_factory=list)
    face_note: str = ""

    @property
    def num_frames(self) -> int:
        return self.inputs.num_frames

    @property
    def seconds(self) -> float:
        return self.inputs.num_frames / self.settings.fps


def check_inputs(
    image: str | Path | None,
    audio: str | Path | None,
    settings: Settings,
    preset: Preset,
    *,
    max_duration_s: float | None = None,
    face_checker: FaceChecker | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
) -> CheckedInputs:
    """All checks, cheapest first; raises a `FantasyError` or returns what the generation will use.

    Speech longer than the duration limit (`max_duration_s`, within `MIN_DURATION_S`..`MAX_DURATION_S`) is not
    an error: only its start is animated, and a notice says so.
    """
    if image is None or str(image) == "":
        raise _about("image", MissingInput("Add a portrait: upload a photo or take one with the webcam."))
    if audio is None or str(audio) == "":
        raise _about("audio", MissingInput("Add speech: upload an audio file or record one with the microphone."))
    for name, path, what in (("image", image, "portrait"), ("audio", audio, "speech")):
        try:
            check_file_size(path, what, max_upload_bytes)
        except FantasyError as exc:
            raise _about(name, exc) from None
    limit_s = duration_limit(max_duration_s)
    settings = replace(settings, max_duration=limit_s).resolved(preset)
    portrait = load_portrait(image, keep_edge=DECODE_EDGE)
    face_note = check_face(portrait, face_checker or FaceChecker(None, "face check skipped"))
    inputs = prepare_inputs(portrait, audio, settings)
    notices = list(inputs.notices)
    if inputs.speech_cut:
        notices.append(
            f"The speech is {inputs.speech_seconds:.1f} s long; it was cut to the maximum duration of {limit_s:.1f} s."
        )
    return CheckedInputs(settings, inputs, notices, face_note)
