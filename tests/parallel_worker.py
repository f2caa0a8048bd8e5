"""Two CPU processes (gloo) under context parallelism, for `tests/test_parallel.py`.

Run as `torchrun --nproc_per_node 2 -m tests.parallel_worker OUT` from the repository root, with OUT/inputs
holding portrait.png and the speech files. What each section leaves in OUT (rank 0 unless said):
  latents-NAME.pt        final latents of every `tests.parallel_cases.CASES` entry
  blocks-NAME-rankR.json blocks that ran on each rank (the step-cache case)
  gen-1.mp4, gen-2.mp4   `generate` of one window and of two windows (rank 1 passes out_path=None)
  gen-release.mp4        `generate` in release mode (`fantasy.release`) on a bf16 DiT, mixed precision
  studio.json            the app's four jobs on rank 0 (done, stopped by Stop, done, stopped by the app's
                         shutdown as on a signal) with their mp4 md5s
  follow-rank1.json      what rank 1 did for those jobs (`JobChannel.follow`)
  compile-rankR.txt      the error compiled blocks give for an uneven token split, on each rank
  target-rankR.json      whether each rank checked an unusable output path (only rank 0) and the error it raised
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from fantasy.app.parallel_jobs import JobChannel
from fantasy.app.streaming import Finished, StageProgress
from fantasy.app.studio import Controls, Studio
from fantasy.app.validation import FaceChecker
from fantasy.errors import FantasyError, GenerationCancelled, InvalidSetting
from fantasy.generation import Settings, generate
from fantasy.media.output import check_target
from fantasy.speed.parallel import ContextParallel, control_group, init_processes, leader_check
from fantasy.weights.presets import get_preset
from tests.parallel_cases import CASES, BlockCounter, build, call

GEN_SETTINGS = {1: Settings(steps=2, longest_edge=64, max_duration=10.0),
                2: Settings(steps=2, longest_edge=64, max_frames=21, max_duration=10.0)}
RELEASE_SETTINGS = Settings(release=True, longest_edge=64)  # 30 steps, its prompts and decode: 25 frames of 1 s


def release_pipe(parallel: ContextParallel | None = None):
    """The tiny pipeline with a bf16 DiT (as the release's), the default mixed precision policy."""
    from fantasy.speed.switches import SpeedOptions, apply_speed
    from fantasy.weights.presets import load_pipeline

    pipe = load_pipeline("tiny", dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    apply_speed(pipe, SpeedOptions(), parallel)
    return pipe


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def latents(out: Path, rank: int, parallel: ContextParallel) -> None:
    for name, case in CASES.items():
        pipe = build(case, parallel)
        counter = BlockCounter(pipe)
        result = call(pipe, case)
        if rank == 0:
            torch.save(result, out / f"latents-{name}.pt")
        if case["speed"].get("step_cache"):
            (out / f"blocks-{name}-rank{rank}.json").write_text(json.dumps(counter.count))


def compile_refusal(out: Path, rank: int, parallel: ContextParallel) -> None:
    case = dict(CASES["uneven"], speed={"compile": True})
    try:
        call(build(case, parallel), case)
        message = "no error"
    except InvalidSetting as exc:
        message = str(exc)
    (out / f"compile-rank{rank}.txt").write_text(message)


def generations(out: Path, rank: int, pipe) -> None:
    inputs = out / "inputs"
    for windows, speech in ((1, "speech-1s.wav"), (2, "speech-1.5s.wav")):
        target = out / f"gen-{windows}.mp4" if rank == 0 else None
        result = generate(pipe, inputs / "portrait.png", inputs / speech, target, GEN_SETTINGS[windows],
                          get_preset("tiny"))
        assert result.windows == windows, result


def target_check(out: Path, rank: int) -> None:
    """`generate`'s check of the output path under a group: a directory as the target."""
    checked = []
    (out / "inputs" / "taken.mp4").mkdir(exist_ok=True)

    def check():
        checked.append(True)
        check_target(out / "inputs" / "taken.mp4")

    try:
        leader_check(check)
        error = None
    except FantasyError as exc:
        error = str(exc)
    (out / f"target-rank{rank}.json").write_text(json.dumps({"checked": bool(checked), "error": error}))


def release_generation(out: Path, rank: int, parallel: ContextParallel) -> None:
    inputs = out / "inputs"
    target = out / "gen-release.mp4" if rank == 0 else None
    result = generate(release_pipe(parallel), inputs / "portrait.png", inputs / "speech-1s.wav", target,
                      RELEASE_SETTINGS, get_preset("tiny"))
    assert result.release and result.num_frames == 25, result


def studio_jobs(out: Path, channel: JobChannel, pipe) -> None:
    inputs = out / "inputs"
    if not channel.leader:
        log = channel.follow(pipe, get_preset("tiny"))
        (out / f"follow-rank{channel.rank}.json").write_text(json.dumps(log.jobs))
        return
    studio = Studio(pipe, get_preset("tiny"), FaceChecker(None, "skipped"), out / "studio", min_chunk_seconds=0.5,
                    channel=channel)
    controls = Controls(steps=3, longest_edge=64, max_duration_s=1.0, seed=3)
    report = []
    for stop in (None, "button", None, "shutdown"):
        job = studio.check(inputs / "portrait.png", inputs / "speech-1s.wav", controls)
        cancel = threading.Event()
        outcome, seen, stopped = "done", 0, None
        try:
            for event in studio.run(job, cancel=cancel):
                if isinstance(event, StageProgress) and event.stage == "denoise":
                    seen += 1
                    if stop == "button":  # what the Stop button does: set the job's flag
                        cancel.set()
                    elif stop == "shutdown" and stopped is None:  # what the app does on SIGTERM/SIGINT
                        stopped = studio.shutdown()
                if isinstance(event, Finished):
                    outcome = md5(event.result.path)
        except GenerationCancelled:
            outcome = "stopped"
        report.append({"outcome": outcome, "denoise_events": seen, "final_exists": job.out_path.exists(),
                       "folder_exists": job.folder.exists(), "shutdown_stopped": stopped})
    channel.shutdown()
    (out / "studio.json").write_text(json.dumps(report))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    init_processes("cpu")
    rank = dist.get_rank()
    parallel = ContextParallel(dist.get_world_size())
    latents(out, rank, parallel)
    compile_refusal(out, rank, parallel)
    target_check(out, rank)
    pipe = build(CASES["even"], parallel)
    generations(out, rank, pipe)
    release_generation(out, rank, parallel)
    studio_jobs(out, JobChannel(control_group()), pipe)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
