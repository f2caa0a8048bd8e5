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
    ("longest_edge", [64, 1024], 48, "resolution (longest edge) must be a multiple of 16 and at least 64, got 48"),
    ("longest_edge", [64, 1024], 72, "resolution (longest edge) must be a multiple of 16 and at least 64, got 72"),
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
