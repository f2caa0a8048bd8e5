"""The app's two sliders (expression, body) -> generation settings, in whichever mode the pipeline supports.

With trained motion weights loaded, the sliders are the motion module's coefficients (`MOTION_MODULE_MODE`,
`fantasy.model.motion`). Without them they act through inputs the released model already responds
to (`TRAINING_FREE_MODE`). Everything is relative to the settings passed in, and the midpoint
(0.5, 0.5) changes nothing but the prompt wording:

| slider      | 0                          | 0.5                              | 1                                         |
|-------------|----------------------------|----------------------------------|-------------------------------------------|
| expression  | audio weight ×0.6,         | ×1.0 (release: weight 1.0,       | ×1.4 (weight 1.4, audio guidance 7.0)     |
|             | audio guidance ×0.6 (3.0)  | audio guidance 5.0)              |                                           |
| body        | no motion words; "person   | ", with natural head movements"; | ", with lively head and upper-body        |
|             | motionless, still" removed | release negative prompt          | movements and hand gestures"; "motionless"|
|             | from the negative prompt   | (motionless words once)          | words twice in the negative prompt        |

Expression is linear in between and clamped to safe ranges (audio weight 0–2, audio guidance 1–10).
Body picks the nearest of the three levels (below 0.25, 0.25–0.75, from 0.75). Why the negative
prompt: the release puts "人物静止不动，静止，" (person motionless, still) there to push the video away
from stillness; removing it lets a calm portrait stay calm, repeating it pushes harder toward motion.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fantasy.errors import InvalidSetting
from fantasy.model.motion import MOTION_MODULE_MODE, TRAINING_FREE_MODE, check_unit
from fantasy.model.prompts import MOTIONLESS_PREFIX, default_prompt

if TYPE_CHECKING:
    from fantasy.settings import Settings

EXPRESSION_MIN_SCALE = 0.6  # at expression 0
EXPRESSION_MAX_SCALE = 1.4  # at expression 1 (0.5 -> exactly 1.0)
AUDIO_WEIGHT_RANGE = (0.0, 2.0)
AUDIO_GUIDANCE_RANGE = (1.0, 10.0)

BODY_LEVELS: tuple[tuple[float, str, int], ...] = (
    # (from this slider value, prompt suffix, times the motionless words appear in the negative prompt)
    (0.0, "", 0),
    (0.25, ", with natural head movements", 1),
    (0.75, ", with lively head and upper-body movements and hand gestures", 2),
)


def expression_scale(expression: float) -> float:
    """Linear 0 -> 0.6, 0.5 -> 1.0, 1 -> 1.4 (exactly 1.0 at the midpoint so defaults pass through)."""
    expression = check_unit("expression intensity", expression)
    if expression == 0.5:
        return 1.0
    return EXPRESSION_MIN_SCALE + (EXPRESSION_MAX_SCALE - EXPRESSION_MIN_SCALE) * expression


def body_level(body: float) -> tuple[str, int]:
    """(prompt suffix, motionless-word repeats) for a body-motion slider value."""
    body = check_unit("body-motion intensity", body)
    suffix, repeats = BODY_LEVELS[0][1:]
    for start, level_suffix, level_repeats in BODY_LEVELS:
        if body >= start:
            suffix, repeats = level_suffix, level_repeats
    return suffix, repeats


def _with_suffix(prompt: str, suffix: str) -> str:
    """'A person is talking.' + ', with x' -> 'A person is talking, with x.' (keeps the sentence whole)."""
    if not suffix:
        return prompt
    text = prompt.rstrip()
    end = ""
    if text.endswith((".", "!", "。")):
        text, end = text[:-1], text[-1]
    return f"{text}{suffix}{end or '.'}"


def _negative_with_motionless(negative: str, repeats: int) -> str:
    """Strip every leading copy of the motionless words, then put back `repeats` copies."""
    core = negative
    while core.startswith(MOTIONLESS_PREFIX):
        core = core[len(MOTIONLESS_PREFIX):]
    return MOTIONLESS_PREFIX * repeats + core


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def training_free_controls(expression: float, body: float, base: Settings) -> tuple[Settings, str]:
    """Apply the two sliders to `base` (see the module table); returns the new settings and the mode name."""
    scale = expression_scale(expression)
    suffix, repeats = body_level(body)
    settings = replace(
        base,
        audio_weight=_clamp(base.audio_weight * scale, AUDIO_WEIGHT_RANGE),
        audio_guidance=_clamp(base.audio_guidance * scale, AUDIO_GUIDANCE_RANGE),
        prompt=_with_suffix(base.prompt if base.prompt is not None else default_prompt(base.release), suffix),
        negative_prompt=_negative_with_motionless(base.negative_prompt, repeats),
    )
    return settings, TRAINING_FREE_MODE


def motion_controls(expression: float, body: float, base: Settings, trained: bool) -> tuple[Settings, str]:
    """The sliders in the mode the pipeline supports: trained coefficients, or the training-free mapping."""
    if trained:
        coefficients = (check_unit("expression intensity", expression), check_unit("body-motion intensity", body))
        return replace(base, motion=coefficients), MOTION_MODULE_MODE
    return training_free_controls(expression, body, base)


def effective_values(expression: float, audio_guidance: float, audio_weight: float, trained: bool) -> str:
    """The page's line under the motion sliders: the audio guidance and weight the run will use, so that no slider
    silently changes what another one shows (in the training-free mode Expression scales the Advanced values)."""
    if trained:
        return (f"Expression and body motion drive the trained motion module; audio guidance {audio_guidance:g} and "
                f"audio weight {audio_weight:g} are used as set.")
    try:
        scale = expression_scale(expression)
    except (InvalidSetting, TypeError, ValueError):  # a value being typed
        return ""
    guidance = _clamp(audio_guidance * scale, AUDIO_GUIDANCE_RANGE)
    weight = _clamp(audio_weight * scale, AUDIO_WEIGHT_RANGE)
    if scale == 1.0:
        return f"Used for the run: audio guidance **{guidance:.1f}**, audio weight **{weight:.2f}** (as set in Advanced)."
    return (f"Used for the run: audio guidance **{guidance:.1f}**, audio weight **{weight:.2f}** "
            f"(Expression {expression:g} scales the Advanced values ×{scale:.2f}).")
