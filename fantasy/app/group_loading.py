"""Loading the pipeline in every process of a context-parallel group (the CLI, the app and a serve replica).

Every process must run the same weights, or the video is silently wrong (bf16 on one GPU, Q8_0 on another):
what a process would decide from its own machine is decided once for the group. The DiT storage (`--dit`
unset) comes from the smallest free memory of all the GPUs and from each file being on every node;
loading and the speed switches' checks run in every process, and a failure in any of them (weights missing
on the second node, a GPU that cannot do fp8) stops all of them with that process's message, said once.
Alone (no group) this is a plain load.
"""

from __future__ import annotations

import torch

from fantasy.speed.group import agree_all, agree_first, agree_min, agreed, in_group
from fantasy.speed.layout import ContextParallel
from fantasy.speed.switches import SpeedOptions, apply_speed, check_options
from fantasy.weights.presets import Preset


def agreed_dit_choice(real: dict, device: torch.device | None, parallel: ContextParallel | None):
    """The DiT storage for the whole group when `--dit` is not given (None when it is, or alone)."""
    from fantasy.weights.comfy_folder import comfy_models_dir
    from fantasy.weights.real import dit_files_here, dit_rule, weights_dir

    if real.get("dit") is not None or not in_group():
        return None
    comfy = comfy_models_dir(real.get("comfy_models"))
    here = agreed(lambda: dit_files_here(weights_dir(real.get("weights")),
                                         None if device is None else torch.device(device), comfy), "choosing the DiT")
    smallest = agree_min(-1 if here["free"] is None else here["free"])  # no GPU on one process: none for all
    group = {"free": None if smallest < 0 else smallest, "bf16": agree_all(here["bf16"]),
             "q8_0": agree_all(here["q8_0"]), "comfy_dit": agree_first(here["comfy_dit"])}
    shards = parallel.degree if parallel is not None and parallel.shard_weights else 1
    return dit_rule(group, real.get("vram", "resident"), real.get("fit_size", 512), real.get("fit_frames", 81),
                    real.get("fit_batch", 1), shards)


def load_in_group(preset: Preset, device, adapter, real: dict | None, speed: SpeedOptions,
                  parallel: ContextParallel | None, before_speed=None) -> tuple[object, list[str]]:
    """(the loaded pipeline with its speed switches applied, one log line per switch), the same in every process.

    `real`: the real preset's `load_pipeline` options (None for tiny). `before_speed(pipe)`: what changes the
    weights before the switches (LoRAs), in agreement too."""
    from fantasy.weights import presets  # at call time: what is there then (tests stand a fake loader in)

    real = dict(real or {})
    if preset.name == "real":
        choice = agreed_dit_choice(real, device, parallel)
        if choice is not None:
            real["dit_choice"] = choice
    pipe = agreed(lambda: presets.load_pipeline(preset.name, device=device, adapter=adapter, **real), "loading the models")
    pipe.set_progress_bar_config(disable=True)
    if before_speed is not None:
        agreed(lambda: before_speed(pipe), "loading the LoRAs")
    agreed(lambda: check_options(pipe, speed, parallel), "checking the speed switches")
    return pipe, apply_speed(pipe, speed, parallel)
