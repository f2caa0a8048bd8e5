"""FantasyTalking Studio: one portrait + one speech clip -> a talking-portrait video.

The public API (README, Python API) is importable from here:

    from fantasy import FantasyTalkingPipeline, Settings, generate, get_preset, load_pipeline

Each name is loaded on first use (PEP 562), so `import fantasy` itself imports none of torch, diffusers or
Gradio. The package is usable without Gradio; the page (`fantasy.app.ui`, behind `app.py` and `fantasy-studio`) is
a thin UI over this API and `fantasy.app`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module it lives in
_PUBLIC = {
    "generate": "fantasy.generation",
    "prepare_inputs": "fantasy.generation",
    "Settings": "fantasy.settings",
    "Result": "fantasy.settings",
    "load_pipeline": "fantasy.weights.presets",
    "get_preset": "fantasy.weights.presets",
    "Preset": "fantasy.weights.presets",
    "PRESETS": "fantasy.weights.presets",
    "FantasyTalkingPipeline": "fantasy.model.pipeline",
    "SpeedOptions": "fantasy.speed.switches",
    "apply_speed": "fantasy.speed.switches",
    "FantasyError": "fantasy.errors",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fantasy' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
