"""The app's controls: each one's range, label and help (with the recommended range), in one table.

The page builds its sliders from `CONTROLS`, and `check_controls` refuses a value outside them with a message that
names the control, whatever sent it (the page, `gradio_client`, raw HTTP): the error's `concerns` is the API
parameter's name, so an API client reads it against that parameter. The recommended ranges are the release's
(its README: text and audio guidance 3-7; its tips: audio guidance 4.5 at every step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fantasy.errors import InvalidSetting
from fantasy.media.image import MIN_SIDE, SIDE_MULTIPLE

MAX_EDGE = 1024  # the resolution slider's top: the automatic DiT choice is sized for it (app.real_options)
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**63 - 1  # what `Settings` takes; the page's dice roll below 2**31


@dataclass(frozen=True)
class Control:
    """One numeric control: API parameter `name`, the page's label, range, step and help."""

    name: str
    label: str
    minimum: float
    maximum: float
    step: float
    help: str
    integer: bool = False

    def check(self, value) -> float | int:
        """The value as a number within the range, or `InvalidSetting` (concerning this control)."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self._error(f"{self.label} needs a number, got {value!r}")
        try:
            number = value if isinstance(value, int) else float(value)
        except ValueError:
            raise self._error(f"{self.label} needs a number, got {value!r}") from None
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            low, high = (f"{int(b)}" if self.integer else f"{b:g}" for b in (self.minimum, self.maximum))
            raise self._error(f"{self.label} must be between {low} and {high}, got {value!r}")
        if not self.integer:
            return float(number)
        if number != int(number):
            raise self._error(f"{self.label} must be a whole number, got {value!r}")
        if self.name == "resolution" and int(number) % SIDE_MULTIPLE:
            raise self._error(f"{self.label} must be a multiple of {SIDE_MULTIPLE}, got {value!r}")
        return int(number)

    def _error(self, message: str) -> InvalidSetting:
        error = InvalidSetting(message + ".")
        error.concerns = self.name
        return error


CONTROLS: dict[str, Control] = {c.name: c for c in (
    Control("expression", "Expression intensity", 0.0, 1.0, 0.05,
            "How much the face moves with the speech; 0.3–0.7 suits most portraits."),
    Control("body", "Body-motion intensity", 0.0, 1.0, 0.05,
            "Under 0.25 still; 0.25–0.75 head movements; from 0.75 gestures too."),
    Control("text_guidance", "Text guidance", 1.0, 10.0, 0.5,
            "How closely the video follows the prompt. Recommended 3–7 (release: 5). 1 skips the negative-prompt "
            "pass (a third faster); higher adds motion, and artefacts."),
    Control("audio_guidance", "Audio guidance", 1.0, 10.0, 0.5,
            "How strongly the lips follow the speech. Recommended 3–7 (release: 5, its tips: 4.5); raise it when "
            "the lip-sync is weak."),
    Control("audio_weight", "Audio weight", 0.0, 2.0, 0.05,
            "Strength of the speech's attention in every block. Recommended 0.8–1.2 (release: 1)."),
    Control("steps", "Denoising steps", 1, 50, 1,
            "Recommended 20–40 (release: 30): fewer is faster and blurrier. Few-step mode: 4.", integer=True),
    Control("resolution", "Resolution (longest edge, px)", MIN_SIDE, MAX_EDGE, SIDE_MULTIPLE,
            "The model's own size is 512; 480–720 recommended. Time grows with the square of the size.",
            integer=True),
    Control("max_duration", "Maximum duration (s)", 1.0, 30.0, 0.1,
            "Longer speech is cut. One clip is 3.4 s; longer videos chain clips, each costing a clip's time."),
    Control("seed", "Seed", 0, MAX_SEED, 1, "The same seed and inputs give the same video.", integer=True),
)}


def check_controls(max_edge: int = MAX_EDGE, **values) -> dict[str, float | int | str]:
    """Every given control's value checked (numbers as numbers); the prompt is text of at most
    `MAX_PROMPT_CHARS`; `max_edge`: the resolution's top for this preset. Raises `InvalidSetting` concerning the
    first control that is out of range."""
    controls = {**CONTROLS, "resolution": replace(CONTROLS["resolution"], maximum=min(MAX_EDGE, max_edge))}
    checked: dict[str, float | int | str] = {}
    for name, value in values.items():
        if name == "prompt":
            if value is not None and not isinstance(value, str):
                raise _prompt_error(f"The prompt must be text, got {value!r}.")
            if value is not None and len(value) > MAX_PROMPT_CHARS:
                raise _prompt_error(f"The prompt is {len(value)} characters long; the limit is {MAX_PROMPT_CHARS}.")
            checked[name] = value or ""
        else:
            checked[name] = controls[name].check(value)
    return checked


def _prompt_error(message: str) -> InvalidSetting:
    error = InvalidSetting(message)
    error.concerns = "prompt"
    return error
