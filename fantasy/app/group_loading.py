"""Loading the pipeline in every process of a context-parallel group (the CLI, the app and a serve replica).

Every process must run the same weights, or the video is silently wrong (bf16 on one GPU, Q8_0 on another):
what a process would decide from its own machine is decided once for the group. The DiT storage (`--dit`
unset) comes from the smallest free memory of all the GPUs and from the bf16 file being on every node;
loading and the speed switches' checks run in every process, and a failure in any of them (weights missing
on the second node, a GPU that cannot do fp8) stops all of them with that process's message, said once.
Alone (no group) this is a plain load.
"""

from __future__ import annotations

import torch

from fantasy.speed.group import agree_all, agree_min, agreed, in_group
from fantasy.speed.layout import ContextParallel
from fantasy.speed.switches import SpeedOptions, apply_speed, check_options
from fantasy.weights.presets import Preset, load_pipeline


def agreed_dit_choice(real: dict, device: torch.device | None, parallel: ContextParallel | None):
    """The DiT storage for the whole group when `--dit` is not given (None when it is, or alone)."""
    from fantasy.weights.dit_choice import choose_dit, free_vram_bytes
    from fantasy.weights.real import bf16_on_disk

    if real.get("dit") is not None or not in_group():
        return None

    def here() -> tuple[int, bool]:  # what this process sees: its GPU's free memory, the bf16 file on its node
        free = free_vram_bytes(torch.device(device)) if device is not None else None
        return -1 if free is None else free, bf16_on_disk(real.get("weights"))

    free, on_disk = agreed(here, "choosing the DiT")
    smallest = agree_min(free)  # a process without a GPU makes it "no GPU" for all
    shards = parallel.degree if parallel is not None and parallel.shard_weights else 1
    return choose_dit(None if smallest < 0 else smallest, real.get("vram", "resident"), real.get("fit_size", 512),
                      real.get("fit_frames", 81), real.get("fit_batch", 1), agree_all(on_disk), shards)


def load_in_group(preset: Preset, device, adapter, real: dict | None, speed: SpeedOptions,
                  parallel: ContextParallel | None) -> tuple[object, list[str]]:
    """(the loaded pipeline with its speed switches applied, one log line per switch), the same in every process.

    `real`: the real preset's `load_pipeline` options (None for tiny)."""
    real = dict(real or {})
    if preset.name == "real":
        choice = agreed_dit_choice(real, device, parallel)
        if choice is not None:
            real["dit_choice"] = choice
    pipe = agreed(lambda: load_pipeline(preset.name, device=device, adapter=adapter, **real), "loading the models")
    pipe.set_progress_bar_config(disable=True)
    agreed(lambda: check_options(pipe, speed, parallel), "checking the speed switches")
    return pipe, apply_speed(pipe, speed, parallel)
