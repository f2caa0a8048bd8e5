"""What the app decides before it builds the page: the preset, and the sliders' defaults and limits.

The page (`fantasy.app.ui`) uses this module, the rest of the app layer and the public API (`fantasy`) only (tests/test_layers.py).
"""

from __future__ import annotations

from fantasy.errors import WeightsMissing
from fantasy.media.image import MIN_SIDE, SIDE_MULTIPLE
from fantasy.model.preview import BUDGET as PREVIEW_BUDGET
from fantasy.model.prompts import DEFAULT_PROMPT
from fantasy.settings import DEFAULT_SEED
from fantasy.speed.distill import FEW_STEP_AUDIO_GUIDANCE, FEW_STEP_TEXT_GUIDANCE, FEW_STEPS
from fantasy.weights.presets import Preset

__all__ = [  # the page's defaults and limits: the prompt, the seed, the resolution slider, the preview budget
    "DEFAULT_PROMPT", "DEFAULT_SEED", "MIN_SIDE", "PREVIEW_BUDGET", "SIDE_MULTIPLE", "default_preset", "slider_defaults",
]


def default_preset(adapter: str | None = None, comfy_models: str | None = None) -> str:
    """`real` when a CUDA GPU, the base weights (under `weights/` or in the Hub cache) and the adapter are there.

    A ComfyUI folder (`comfy_models`, else $FANTASY_COMFY_MODELS) supplies the files it holds.
    The adapter is `adapter` (--adapter / FANTASY_ADAPTER) when given, else the released one; a given
    adapter that does not exist is an error (`InputFileNotFound`), never a silent switch to `tiny`.
    """
    import torch

    from fantasy.weights.comfy_folder import comfy_models_dir
    from fantasy.weights.real import check_real_weights, given_adapter, weights_dir

    if adapter is not None:
        given_adapter(adapter)
    if not torch.cuda.is_available():
        return "tiny"
    comfy = comfy_models_dir(comfy_models)  # --comfy-models or $FANTASY_COMFY_MODELS: its files count as on disk
    for dit in ("q8_0", "bf16"):  # either DiT file will do: `--dit` auto picks among what is on disk
        try:
            check_real_weights(weights_dir(), dit, adapter, comfy)
            return "real"
        except WeightsMissing:
            continue
    return "tiny"


def slider_defaults(pipe, preset: Preset) -> dict[str, float]:
    """The release's steps and guidance, or the few-step mode's (4 steps, guidance 1) after `--fast`."""
    if getattr(pipe, "few_step_mode", False):
        return {"steps": FEW_STEPS, "text_guidance": FEW_STEP_TEXT_GUIDANCE, "audio_guidance": FEW_STEP_AUDIO_GUIDANCE}
    return {"steps": preset.steps, "text_guidance": 5.0, "audio_guidance": 5.0}
