"""`generate.Settings.resolved`: every limit at its edges, with its exact message; preset defaults filled in."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from fantasy.errors import InvalidSetting
from fantasy.generation import Settings
from fantasy.weights.presets import get_preset

TINY, REAL = get_preset("tiny"), get_preset("real")

# (setting, the values just inside its range, a value just outside, the message for that value)
LIMITS = [
    ("steps", [1, 100], 0, "steps must be between 1 and 100, got 0"),
    ("steps", [1, 100], 101, "steps must be between 1 and 100, got 101"),
    ("text_guidance", [1.0, 20.0], 0.99, "text guidance must be between 1 and 20, got 0.99"),
    ("text_guidance", [1.0, 20.0], 20.01, "text guidance must be between 1 and 20, got 20.01"),
    ("audio_guidance", [1.0, 20.0], 0.99, "audio guidance must be between 1 and 20, got 0.99"),
    ("audio_guidance", [1.0, 20.0], 20.01, "audio guidance must be between 1 and 20, got 20.01"),
    ("audio_weight", [0.0, 5.0], -0.01, "audio weight must be between 0 and 5, got -0.01"),
    ("audio_weight", [0.0, 5.0], 5.01, "audio weight must be between 0 and 5, got 5.01"),
    ("fps", [8, 60], 7, "fps must be between 8 and 60, got 7"),
    ("fps", [8, 60], 61, "fps must be between 8 and 60, got 61"),
    ("max_frames", [9, 161], 80, "max frames must be 4k+1 and at least 5 (e.g. 81), got 80"),
    ("max_frames", [9, 161], 1, "max frames must be 4k+1 and at least 5 (e.g. 81), got 1"),
    ("max_frames", [9, 161], 5, "max frames (per window) must be between 9 and 161, got 5"),
    ("max_frames", [9, 161], 165, "max frames (per window) must be between 9 and 161, got 165"),
    ("max_duration", [0.2, 600.0], 0.19, "maximum duration must be between 0.2 and 600 s, got 0.19"),
    ("max_duration", [0.2, 600.0], 600.5, "maximum duration must be between 0.2 and 600 s, got 600.5"),
    ("longest_edge", [64, 256], 48, "resolution (longest edge) must be a multiple of 16 and at least 64, got 48"),
    ("longest_edge", [64, 256], 72, "resolution (longest edge) must be a multiple of 16 and at least 64, got 72"),
    ("longest_edge", [64, 256], 272, "resolution (longest edge) must be at most 256 px with the tiny preset, got 272"),
    ("seed", [0, 2**63 - 1], -1, "seed must be a non-negative integer, got -1"),
    ("seed", [0, 2**63 - 1], 2**63, f"seed must be a non-negative integer, got {2**63}"),
    ("motion", [None, (0.0, 1.0), (1.0, 0.0)], (1.01, 0.5),
     "motion coefficients must be two values between 0 and 1 (expression, body), got (1.01, 0.5)"),
    ("motion", [None, (0.0, 1.0)], (0.5, -0.01),
     "motion coefficients must be two values between 0 and 1 (expression, body), got (0.5, -0.01)"),
    ("motion", [None, (0.0, 1.0)], (0.5,),
     "motion coefficients must be two values between 0 and 1 (expression, body), got (0.5,)"),
    ("identity_scale", [0.0, 3.0], -0.01, "identity scale must be between 0 and 3, got -0.01"),
    ("identity_scale", [0.0, 3.0], 3.01, "identity scale must be between 0 and 3, got 3.01"),
]


@pytest.mark.parametrize("name, inside, outside, message", LIMITS, ids=[f"{x[0]}={x[2]}" for x in LIMITS])
def test_each_limit_at_its_edges(name, inside, outside, message):
    for value in inside:
        assert getattr(Settings(**{name: value}).resolved(TINY), name) == value
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$"):
        Settings(**{name: outside}).resolved(TINY)


def test_preset_defaults_fill_only_what_is_unset():
    settings = Settings()
    assert (settings.resolved(TINY).steps, settings.resolved(TINY).longest_edge) == (30, 128)
    assert settings.resolved(REAL).longest_edge == 512
    chosen = replace(settings, steps=4, longest_edge=256).resolved(TINY)
    assert (chosen.steps, chosen.longest_edge) == (4, 256)
    assert (settings.steps, settings.longest_edge) == (None, None)  # resolving returns a copy


def test_the_real_preset_takes_up_to_its_720p_edge():
    assert Settings(longest_edge=1280).resolved(REAL).longest_edge == 1280
    for edge in (1296, 65536):  # `--size 65536` was resized first: a MemoryError traceback (issue 25)
        with pytest.raises(InvalidSetting, match=f"^resolution \\(longest edge\\) must be at most 1280 px with the "
                                                 f"real preset, got {edge}$"):
            Settings(longest_edge=edge).resolved(REAL)


# A preset whose video bound is easy to meet exactly: 64x64 px x 25 frames.
SMALL = replace(TINY, name="small", max_video_pixels=64 * 64 * 25)


def test_the_video_size_bound_holds_at_its_edge():
    """The most frames the settings can make (1 s at 20 fps: 25), times the largest frame (64x64): exactly the bound."""
    assert Settings(longest_edge=64, fps=20, max_duration=1.0).resolved(SMALL).fps == 20
    message = ("these settings ask for up to 29 frames of 64x64 px (0.12 megapixels); the small preset makes at most "
               "0.10 megapixels: lower the maximum duration, the frame rate or the resolution")
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$"):
        Settings(longest_edge=64, fps=24, max_duration=1.0).resolved(SMALL)  # 24 fps: 29 frames
    with pytest.raises(InvalidSetting, match="^these settings ask for up to 29 frames of 64x64 px"):
        Settings(longest_edge=64, fps=20, max_duration=1.2).resolved(SMALL)  # 1.2 s: 29 frames
    with pytest.raises(InvalidSetting, match="^these settings ask for up to 25 frames of 80x80 px"):
        Settings(longest_edge=80, fps=20, max_duration=1.0).resolved(SMALL)


def test_release_mode_counts_its_one_clip():
    """--release makes one clip of at most max_frames: the maximum duration does not count."""
    clip = Settings(release=True, longest_edge=64, max_frames=25, max_duration=600.0).resolved(SMALL)
    assert clip.max_frames == 25
    with pytest.raises(InvalidSetting, match="up to 29 frames of 64x64 px"):
        Settings(release=True, longest_edge=64, max_frames=29, max_duration=1.0).resolved(SMALL)


def test_each_preset_bounds_ten_minutes_of_its_largest_video():
    """real: the pixels of ten minutes of 1280x720 at 23 fps (the check counts a square frame); tiny: of 256x256."""
    assert Settings(longest_edge=1280, max_duration=326.0).resolved(REAL).max_duration == 326.0
    with pytest.raises(InvalidSetting, match="^these settings ask for up to 7,825 frames of 1280x1280 px "
                                             "\\(12.82 gigapixels\\); the real preset makes at most 12.72 gigapixels"):
        Settings(longest_edge=1280, max_duration=340.0).resolved(REAL)
    assert Settings(longest_edge=512, max_duration=600.0).resolved(REAL).longest_edge == 512
    assert Settings(longest_edge=256, max_duration=600.0).resolved(TINY).longest_edge == 256
    with pytest.raises(InvalidSetting, match="up to 36,005 frames of 256x256 px"):
        Settings(longest_edge=256, max_duration=600.0, fps=60).resolved(TINY)
