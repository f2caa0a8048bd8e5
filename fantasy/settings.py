"""The values a generation takes and gives back: `Settings` (what a user can set) and `Result`.

Their own module, below the generation and the app that both use them, and needing nothing of the
models: a preset's defaults and bounds come in as plain fields (`PresetDefaults`, which
`fantasy.weights.presets.Preset` has).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from fantasy.errors import InvalidSetting
from fantasy.long_video import MOTION_FRAMES, total_frame_count
from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT, default_prompt
from fantasy.release import release_setting_problems


class PresetDefaults(Protocol):
    """The defaults `Settings.resolved` fills in and the bounds it keeps (a `fantasy.weights.presets.Preset`)."""

    @property
    def steps(self) -> int: ...

    @property
    def longest_edge(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def max_longest_edge(self) -> int: ...

    @property
    def max_video_pixels(self) -> int: ...


DEFAULT_SEED = 1111  # the release's CLI default


@dataclass
class Settings:
    """What a user can set. Defaults are the release's (infer.py), except the prompt (see `release`)."""

    prompt: str | None = None  # None: DEFAULT_PROMPT, or with `release` the release's "A woman is talking."
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = DEFAULT_SEED
    steps: int | None = None  # None: the preset's default (30)
    text_guidance: float = 5.0
    audio_guidance: float = 5.0
    audio_weight: float = 1.0
    fps: int = 23
    max_frames: int = 81  # frames per window (the release's clip length)
    max_duration: float = 10.0  # seconds; longer speech is cut (and the result says so)
    longest_edge: int | None = None  # None: the preset's default
    motion: tuple[float, float] | None = None  # (expression, body) for a trained motion module (fantasy.model.motion)
    identity_scale: float = 1.0  # strength of a trained identity module (fantasy.model.identity)
    release: bool = False  # exactly the official infer.py's clip (fantasy.release): one clip, its decode

    def resolved(self, preset: PresetDefaults) -> Settings:
        """Fill preset defaults (a `fantasy.weights.presets.Preset`) and reject out-of-range values with a message naming
        the setting, the preset's bounds on the video's size included (every entry point calls this first)."""
        s = Settings(**asdict(self))
        s.steps = preset.steps if s.steps is None else s.steps
        s.longest_edge = preset.longest_edge if s.longest_edge is None else s.longest_edge
        if s.prompt is None:
            s.prompt = default_prompt(s.release)
        checks = [
            (1 <= s.steps <= 100, f"steps must be between 1 and 100, got {s.steps}"),
            (1.0 <= s.text_guidance <= 20.0, f"text guidance must be between 1 and 20, got {s.text_guidance}"),
            (1.0 <= s.audio_guidance <= 20.0, f"audio guidance must be between 1 and 20, got {s.audio_guidance}"),
            (0.0 <= s.audio_weight <= 5.0, f"audio weight must be between 0 and 5, got {s.audio_weight}"),
            (8 <= s.fps <= 60, f"fps must be between 8 and 60, got {s.fps}"),
            (s.max_frames >= 5 and (s.max_frames - 1) % 4 == 0,
             f"max frames must be 4k+1 and at least 5 (e.g. 81), got {s.max_frames}"),
            (MOTION_FRAMES < s.max_frames <= 161,
             f"max frames (per window) must be between {MOTION_FRAMES + 4} and 161, got {s.max_frames}"),
            (0.2 <= s.max_duration <= 600, f"maximum duration must be between 0.2 and 600 s, got {s.max_duration}"),
            (s.longest_edge >= 64 and s.longest_edge % 16 == 0,
             f"resolution (longest edge) must be a multiple of 16 and at least 64, got {s.longest_edge}"),
            (0 <= s.seed < 2**63, f"seed must be a non-negative integer, got {s.seed}"),
            (s.motion is None or (len(s.motion) == 2 and all(0.0 <= v <= 1.0 for v in s.motion)),
             f"motion coefficients must be two values between 0 and 1 (expression, body), got {s.motion}"),
            (0.0 <= s.identity_scale <= 3.0, f"identity scale must be between 0 and 3, got {s.identity_scale}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSetting(message)
        _check_size(s, preset)
        if s.release:
            for message in release_setting_problems(s.steps, s.negative_prompt, s.motion):
                raise InvalidSetting(message)
        return s


def _check_size(s: Settings, preset: PresetDefaults) -> None:
    """The preset's bounds on the video's size, from the settings alone (nothing is read or allocated yet).

    The frames are the most these settings can make (the maximum duration's, or the release's one clip), the
    frame the largest one the resolution allows (a square: the longest edge is exactly `longest_edge`).
    """
    if s.longest_edge > preset.max_longest_edge:
        raise InvalidSetting(f"resolution (longest edge) must be at most {preset.max_longest_edge} px with the "
                             f"{preset.name} preset, got {s.longest_edge}")
    frames = s.max_frames if s.release else total_frame_count(s.max_duration, s.fps, s.max_duration)[0]
    pixels = s.longest_edge**2 * frames
    if pixels > preset.max_video_pixels:
        raise InvalidSetting(
            f"these settings ask for up to {frames:,} frames of {s.longest_edge}x{s.longest_edge} px "
            f"({_pixels(pixels)}); the {preset.name} preset makes at most {_pixels(preset.max_video_pixels)}: "
            "lower the maximum duration, the frame rate or the resolution")


def _pixels(count: int) -> str:
    return f"{count / 1e9:.2f} gigapixels" if count >= 1e9 else f"{count / 1e6:.2f} megapixels"


@dataclass
class Result:
    """What one generation made (`fantasy.generation.generate`)."""

    path: Path | None  # None: this process does not write (a context-parallel process other than rank 0)
    num_frames: int
    fps: int
    width: int
    height: int
    seconds_taken: float
    speech_seconds: float
    passes_per_step: int
    windows: int
    speech_cut: bool
    motion_mode: str  # how the motion sliders acted (`FantasyTalkingPipeline.motion_mode`)
    release: bool = False  # made in release mode (`fantasy.release`)
