"""Training-free slider mapping: exact values at 0, 0.5 and 1, linearity, clamping, prompt wording."""

from __future__ import annotations

import pytest

from fantasy.app.sliders import TRAINING_FREE_MODE, body_level, expression_scale, training_free_controls
from fantasy.errors import InvalidSetting
from fantasy.generation import DEFAULT_PROMPT, Settings
from fantasy.model.prompts import DEFAULT_NEGATIVE_PROMPT, MOTIONLESS_PREFIX, WAN_NEGATIVE_PROMPT
from fantasy.weights.presets import get_preset


@pytest.mark.parametrize(
    "expression, weight, guidance", [(0.0, 0.6, 3.0), (0.5, 1.0, 5.0), (1.0, 1.4, 7.0), (0.25, 0.8, 4.0)]
)
def test_expression_scales_audio_weight_and_guidance(expression, weight, guidance):
    settings, mode = training_free_controls(expression, 0.5, Settings())
    assert mode == TRAINING_FREE_MODE
    assert settings.audio_weight == pytest.approx(weight, abs=3e-16)  # float rounding: measured 1.1e-16
    assert settings.audio_guidance == pytest.approx(guidance, abs=1e-15)  # measured 4.4e-16
    assert settings.text_guidance == 5.0  # untouched


def test_midpoint_is_the_release_exactly():
    settings, _ = training_free_controls(0.5, 0.5, Settings())
    assert settings.audio_weight == 1.0 and settings.audio_guidance == 5.0  # bit-exact, not approx
    assert settings.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert expression_scale(0.5) == 1.0


def test_expression_scales_the_users_values_and_clamps_to_safe_ranges():
    settings, _ = training_free_controls(0.0, 0.5, Settings(audio_weight=2.0, audio_guidance=8.0))
    assert settings.audio_weight == pytest.approx(1.2)
    assert settings.audio_guidance == pytest.approx(4.8)
    settings, _ = training_free_controls(1.0, 0.5, Settings(audio_weight=2.0, audio_guidance=9.0))
    assert settings.audio_weight == 2.0  # 2.8 clamped
    assert settings.audio_guidance == 10.0  # 12.6 clamped
    settings, _ = training_free_controls(0.0, 0.5, Settings(audio_guidance=1.2))
    assert settings.audio_guidance == 1.0  # never below 1 (Settings rejects that)
    settings.resolved(get_preset("tiny"))  # still a valid Settings: raises otherwise


def test_body_motion_table():
    still, _ = training_free_controls(0.5, 0.0, Settings())
    natural, _ = training_free_controls(0.5, 0.5, Settings())
    lively, _ = training_free_controls(0.5, 1.0, Settings())
    assert still.prompt == DEFAULT_PROMPT
    assert natural.prompt == "A person is talking, with natural head movements."
    assert lively.prompt == "A person is talking, with lively head and upper-body movements and hand gestures."
    assert still.negative_prompt == WAN_NEGATIVE_PROMPT  # stillness no longer penalised
    assert natural.negative_prompt == DEFAULT_NEGATIVE_PROMPT  # the release's, prefix once
    assert lively.negative_prompt == MOTIONLESS_PREFIX * 2 + WAN_NEGATIVE_PROMPT
    # the sliders never touch what they do not map
    for s in (still, natural, lively):
        assert (s.seed, s.steps, s.text_guidance) == (Settings().seed, None, 5.0)


def test_body_levels_thresholds_and_prompt_punctuation():
    assert body_level(0.24)[0] == ""
    assert body_level(0.25)[0] == ", with natural head movements"
    assert body_level(0.74)[1] == 1
    assert body_level(0.75)[1] == 2
    settings, _ = training_free_controls(0.5, 0.5, Settings(prompt="A woman speaks to the camera"))
    assert settings.prompt == "A woman speaks to the camera, with natural head movements."
    settings, _ = training_free_controls(0.5, 1.0, Settings(prompt="He laughs!"))
    assert settings.prompt == "He laughs, with lively head and upper-body movements and hand gestures!"


def test_repeated_application_does_not_pile_up_motionless_words():
    once, _ = training_free_controls(0.5, 1.0, Settings())
    twice, _ = training_free_controls(0.5, 1.0, once)
    assert twice.negative_prompt == once.negative_prompt


@pytest.mark.parametrize("expression, body", [(-0.1, 0.5), (1.01, 0.5), (0.5, 2.0)])
def test_out_of_range_sliders_are_rejected(expression, body):
    with pytest.raises(InvalidSetting, match="between 0 and 1"):
        training_free_controls(expression, body, Settings())
