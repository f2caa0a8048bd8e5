"""The app's LoRA control: a strength per LoRA for one video, where the LoRAs were kept as separate layers.

LoRAs load once, at launch (`--lora FILE[:SCALE]` or `$FANTASY_LORA`, see docs/lora.md). Fused (the default) they
are part of the DiT's weights and their strength is fixed: the page says so, and which. Kept as separate layers
(`--no-fuse-lora`, or a GGUF DiT, where they always stay separate) each gets a slider; the strengths a request
chooses are checked with the other controls, set for its run only and restored afterwards
(`fantasy.weights.loras.lora_scales_for_run`). A LoRA is named by its file name (the page's label, the API's key);
two files of the same name are told apart by their place (`style.safetensors (2)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from fantasy.app.controls import Control
from fantasy.errors import InvalidSetting
from fantasy.weights.loras import SCALE_RANGE, AppliedLora

PARAMETER = "lora_strengths"  # the API's parameter (a JSON object: LoRA name -> strength)
STRENGTH = Control(PARAMETER, "LoRA strength", SCALE_RANGE[0], SCALE_RANGE[1], 0.05,
                   "How strongly this LoRA acts on this video: 0 turns it off, 1 is its full effect, negative "
                   "pushes away from it (the value it was loaded with is the default).")


@dataclass(frozen=True)
class PageLora:
    """One LoRA loaded at launch, as the page and the API name it."""

    label: str  # its file name (made unique): the slider's label and the API's key
    adapter: str  # its adapter name in the DiT (`lora_0`, ...)
    loaded: float  # the strength it was loaded with
    fused: bool  # folded into the weights: its strength cannot change

    def control(self) -> Control:
        return replace(STRENGTH, label=f"Strength of {self.label}")


def page_loras(applied: list[AppliedLora]) -> list[PageLora]:
    """What `load_loras` did, with a unique name for each LoRA."""
    names = [lora.spec.path.name for lora in applied]
    labels = [name if names.count(name) == 1 else f"{name} ({names[:i + 1].count(name)})"
              for i, name in enumerate(names)]
    return [PageLora(label, lora.name, lora.spec.scale, lora.fused) for label, lora in zip(labels, applied, strict=True)]


def adjustable(loras: list[PageLora]) -> list[PageLora]:
    """The LoRAs whose strength a run may set (kept as separate layers)."""
    return [lora for lora in loras if not lora.fused]


def check_strengths(loras: list[PageLora], given: Mapping | None) -> dict[str, float]:
    """Every adjustable LoRA's strength for a run (label -> strength): the given ones checked (a known name, a
    number within -4..4), the others as loaded. Raises `InvalidSetting` concerning `lora_strengths`."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise _error(f"LoRA strengths must be an object of LoRA name -> strength, got {given!r}.")
    kept = {lora.label: lora for lora in adjustable(loras)}
    for name in given:
        if name not in kept:
            fused = [lora.label for lora in loras if lora.fused]
            if name in fused:
                raise _error(f"LoRA {name} is fused into the weights; its strength is fixed (start the app with "
                             "--no-fuse-lora to set it per video).")
            raise _error(f"No LoRA named {name!r} is loaded; adjustable: {', '.join(kept) or 'none'}.")
    return {label: float(lora.control().check(given.get(label, lora.loaded))) for label, lora in kept.items()}


def describe(loras: list[PageLora], strengths: Mapping[str, float]) -> list[str]:
    """'LoRA style.safetensors ×0.80' per LoRA (the run's strength; fused ones say so)."""
    return [f"LoRA {lora.label} ×{strengths.get(lora.label, lora.loaded):.2f}" + (" (fused)" if lora.fused else "")
            for lora in loras]


def fused_note(loras: list[PageLora]) -> str:
    """The page's read-only line for LoRAs fused at launch ('' when none)."""
    fused = [lora for lora in loras if lora.fused]
    if not fused:
        return ""
    names = ", ".join(f"**{lora.label}** ×{lora.loaded:.2f}" for lora in fused)
    return (f"LoRAs fused into the model at launch: {names}. Their strength is fixed; to set it per video with a "
            "slider, start the app with `--no-fuse-lora` (on a Space: the variable `FANTASY_NO_FUSE_LORA=1`).")


def _error(message: str) -> InvalidSetting:
    error = InvalidSetting(message)
    error.concerns = PARAMETER
    return error
