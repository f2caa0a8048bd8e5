"""`python -m fantasy bench --cpu`: the tiny preset end to end, timed, to catch speed regressions anywhere.

It runs `fantasy.generation.generate` on examples/portrait.png + examples/speech.wav (the README's tiny
run: 30 steps x 3 passes, 128 px, 2 windows) with the chosen speed switches, and splits the time by
the progress reports generate already makes: each denoising step ends with a report, so step
intervals give s/step; the gap before a window's first step is its conditioning (text, CLIP, audio,
VAE encode) plus one step; decoding and writing follow a window's last step.
Tiny models are noise, so only the timings mean anything, and only against each other on one machine.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fantasy.bench.report import environment, table
from fantasy.examples import example_file
from fantasy.speed.switches import SpeedOptions


@dataclass
class CpuBenchConfig:
    steps: int | None = None  # None: the preset's (30)
    size: int | None = None  # longest edge; None: the preset's (128)
    max_duration: float = 10.0
    text_guidance: float = 5.0
    audio_guidance: float = 5.0
    image: Path = field(default_factory=lambda: example_file("portrait.png"))
    audio: Path = field(default_factory=lambda: example_file("speech.wav"))
    speed: SpeedOptions = field(default_factory=SpeedOptions)


@dataclass
class StageClock:
    """Timestamps of generate's progress reports, turned into per-stage seconds."""

    started: float = field(default_factory=time.perf_counter)
    events: list[tuple[str, float]] = field(default_factory=list)

    def __call__(self, stage: str, fraction: float) -> None:
        self.events.append((stage, time.perf_counter()))

    def split(self, finished: float) -> dict:
        step_gaps, first_steps, decode = [], [], 0.0
        previous_stage, previous_time = None, self.started
        for stage, at in self.events:
            gap = at - previous_time
            if stage == "denoise":
                (step_gaps if previous_stage == "denoise" else first_steps).append(gap)
            else:
                decode += gap
            previous_stage, previous_time = stage, at
        decode += finished - previous_time
        per_step = sum(step_gaps) / len(step_gaps) if step_gaps else None
        conditioning = sum(first_steps) - len(first_steps) * (per_step or 0.0)
        return {"s_per_step": per_step, "conditioning_s": conditioning, "decode_write_s": decode,
                "steps_timed": len(step_gaps) + len(first_steps)}


def run_cpu_bench(config: CpuBenchConfig) -> dict:
    from fantasy.bench.preview_cost import LastPreview, run_figures, time_preview
    from fantasy.generation import Settings, generate
    from fantasy.model.preview import LivePreview
    from fantasy.speed.switches import apply_speed
    from fantasy.weights.presets import get_preset, load_pipeline

    preset = get_preset("tiny")
    settings = Settings(steps=config.steps, longest_edge=config.size, max_duration=config.max_duration,
                        text_guidance=config.text_guidance, audio_guidance=config.audio_guidance)
    settings.resolved(preset)
    started = time.perf_counter()
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    applied = apply_speed(pipe, config.speed)
    load_s = time.perf_counter() - started
    clock = StageClock()
    latest = LastPreview()  # the live preview as the app runs it: frames handed off, encoded elsewhere
    live = LivePreview(latest)
    with tempfile.TemporaryDirectory() as tmp:
        result = generate(pipe, config.image, config.audio, Path(tmp) / "bench.mp4", settings, preset,
                          progress=clock, preview=live)
    stages = clock.split(time.perf_counter())
    steps = settings.resolved(preset).steps
    per_pass = stages["s_per_step"] / result.passes_per_step if stages["s_per_step"] else None
    return {
        "mode": "cpu", **environment(torch.device("cpu")), "switches": config.speed.describe(), "applied": applied,
        "run": {"frames": result.num_frames, "size": f"{result.width}x{result.height}", "windows": result.windows,
                "steps": steps, "passes_per_step": result.passes_per_step},
        "load_s": load_s, "total_s": result.seconds_taken, "s_per_pass": per_pass, **stages,
        "preview": run_figures(live.figures(), stages["s_per_step"], latest.last),
        "preview_512x512x81": time_preview(torch.device("cpu")),
    }


def format_cpu_report(report: dict) -> str:
    run = report["run"]
    header = (f"tiny preset end to end ({run['frames']} frames, {run['size']}, {run['windows']} window(s), "
              f"{run['steps']} steps x {run['passes_per_step']} passes); {report['device']}, {report['threads']} "
              f"threads, torch {report['torch']}, {report['date']}; switches: {report['switches']}")
    rows = [[report["load_s"], report["total_s"], report["s_per_step"], report["s_per_pass"],
             report["conditioning_s"], report["decode_write_s"]]]
    preview, real = report["preview"], report["preview_512x512x81"]
    previews = table(["clip", "previews / steps", "every k steps", "ms (denoising thread)", "vs one step",
                      "added to denoising", "clip file ms (256 px WebP)"],
                     [[run["size"], f"{preview['previews']} / {preview['steps']}", preview["every_k_steps"],
                       preview["preview_ms"], _percent(preview["cost_vs_step"]), _percent(preview["overhead"]),
                       preview["encode_ms"]],
                      [f"{real['latent']} latent (512x512x81)", "", "", real["map_ms"], "", "", real["encode_ms"]]])
    return "\n".join([header, "", table(["load s", "generate s", "s/step", "s/pass", "conditioning s",
                                         "decode + write s"], rows), "", "live preview (budget 2 % of the step time):",
                      previews])


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"
