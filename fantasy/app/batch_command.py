"""`python -m fantasy batch jobs.csv|jobs.jsonl`: many videos, one model load, a summary at the end.

The jobs file's rows are checked first (every row: settings, inputs, output folder); the models load only
when at least one row can run. Bad rows are reported and skipped, finished outputs are skipped, and the exit
status is 0 only when every row ended with its video (made now or earlier). See `fantasy.app.batch` and
docs/batch.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fantasy.app.flags import (
    add_lora_flags,
    add_model_flags,
    add_setting_flags,
    add_speed_flags,
    comfy_option,
    guidance_defaults,
    lora_option,
    speed_options,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="a jobs file (CSV or JSON Lines: portrait, speech, prompt, seed, settings per row) -> one mp4 "
                      "per row, one model load",
        description="Each row names a portrait and a speech file (paths relative to the jobs file) and may set "
                    "out, prompt, negative_prompt, seed, steps, text_guidance, audio_guidance, audio_weight, fps, "
                    "max_frames, max_duration, size, expression, body. The flags below are the defaults for what a "
                    "row leaves empty. Rows whose output exists are skipped (--overwrite redoes them). See "
                    "docs/batch.md.")
    p.add_argument("jobs", help="jobs file: .csv (a header line naming the columns) or .jsonl (one JSON object a line)")
    p.add_argument("--out-dir", default=None,
                   help="where outputs go (default: the jobs file's folder); a row's 'out' is relative to it")
    p.add_argument("--overwrite", action="store_true", help="redo rows whose output already exists")
    add_setting_flags(p, note="; a row's value wins")
    add_model_flags(p)
    add_lora_flags(p)
    add_speed_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """Check every row, load the models once, run the rows, print the summary; status 1 when a row failed."""
    from fantasy.app.batch import check_job, plan_jobs, read_rows, run_jobs, summary_table
    from fantasy.model.pipeline import DEFAULT_NEGATIVE_PROMPT
    from fantasy.settings import Settings
    from fantasy.stop import StopRequested
    from fantasy.weights.loras import load_loras
    from fantasy.weights.presets import get_preset, load_pipeline

    started = time.perf_counter()
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    jobs_file = Path(args.jobs)
    out_dir = Path(args.out_dir) if args.out_dir is not None else jobs_file.parent
    preset = get_preset(args.preset)
    speed = speed_options(args)
    steps, text_guidance, audio_guidance = guidance_defaults(args)
    defaults = Settings(
        prompt=args.prompt, negative_prompt=args.negative_prompt or DEFAULT_NEGATIVE_PROMPT, seed=args.seed,
        steps=steps, text_guidance=text_guidance, audio_guidance=audio_guidance, audio_weight=args.audio_weight,
        fps=args.fps, max_frames=args.max_frames, max_duration=args.max_duration, longest_edge=args.size,
    )
    defaults.resolved(preset)  # a bad flag is the whole batch's problem: refused now, not once per row
    comfy = comfy_option(args, preset.name)
    loras, lora_states = lora_option(args)
    jobs = plan_jobs(read_rows(jobs_file), jobs_file, out_dir, defaults, (args.expression, args.body))
    say(f"checking {len(jobs)} row{'s' * (len(jobs) != 1)} of {jobs_file.name} ...")
    for job in jobs:
        if args.overwrite or job.problem is not None or not job.out.exists():
            check_job(job, preset)
        if job.problem is not None:
            say(f"  row {job.row}: {job.problem} (skipped)")
    runnable = [j for j in jobs if j.problem is None and (args.overwrite or not j.out.exists())]
    if not runnable:
        print(summary_table([_unrun(job) for job in jobs], time.perf_counter() - started))
        return 1 if any(job.problem for job in jobs) else 0
    if preset.demo:
        say(f"[{preset.name}] {preset.summary}")
    real = {"dit": args.dit, "vram": args.vram, "weights": args.weights, "comfy_models": comfy,
            "fit_size": max(job.settings.resolved(preset).longest_edge for job in runnable),
            "fit_frames": max(job.settings.max_frames for job in runnable), "fit_batch": 3 if speed.batch_guidance else 1}
    pipe = load_pipeline(preset.name, device=args.device, adapter=args.adapter,
                         **(real if preset.name == "real" else {}))
    pipe.set_progress_bar_config(disable=True)
    from fantasy.speed.switches import apply_speed

    for applied in load_loras(pipe, loras, fuse=speed.fuse_lora, states=lora_states):
        say(f"  {applied}")
    for line in apply_speed(pipe, speed):
        say(f"  speed: {line}")
    say(f"models loaded in {time.perf_counter() - started:.1f} s; {len(runnable)} to make")
    try:
        outcomes = run_jobs(pipe, jobs, preset, say, overwrite=args.overwrite)
    except StopRequested as stop:
        print(summary_table(stop.outcomes, time.perf_counter() - started))
        raise
    print(summary_table(outcomes, time.perf_counter() - started))
    return 1 if any(outcome.status == "failed" for outcome in outcomes) else 0


def _unrun(job):
    from fantasy.app.batch import Outcome

    if job.problem is not None:
        return Outcome(job, "failed", job.problem)
    return Outcome(job, "skipped", "output already there")
