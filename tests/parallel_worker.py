"""Two or three CPU processes (gloo) under context parallelism, for `tests/test_parallel.py`.

Run as `torchrun --nproc_per_node N -m tests.parallel_worker OUT` from the repository root, with OUT/inputs
holding portrait.png, the speech files and dit.gguf (`gguf_config`). Each rank writes the section it is in to
OUT/stages/rankR (the watchdog in `tests.process_watch` reports them when the group hangs or fails), and joins
with the collective timeout in $FANTASY_TEST_COLLECTIVE_TIMEOUT. What each section leaves in OUT (rank 0 unless
said; with 3 processes only the latents, blocks, ratios and GGUF sections run, on `CASES3`):
  latents-NAME.pt        final latents of every `tests.parallel_cases.CASES` entry
  blocks-NAME-rankR.json blocks that ran on each rank (the step-cache cases)
  ratios-NAME-rankR.json the step cache's ratios on each rank (`fantasy.speed.cache_decision`)
  bytes-NAME-rankR.json  parameter bytes each rank holds of the DiT and umT5 (the sharded cases)
  gguf.pt, gguf-rankR.json  a GGUF Q8_0 DiT's output, its weights sharded (and each rank's bytes, types)
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
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

from fantasy.app.parallel_jobs import JobChannel
from fantasy.app.streaming import Finished, StageProgress
from fantasy.app.studio import Controls, Studio
from fantasy.app.validation import FaceChecker
from fantasy.errors import FantasyError, GenerationCancelled, InvalidSetting
from fantasy.generation import Settings, generate
from fantasy.media.output import check_target
from fantasy.speed.group import control_group, init_processes, leader_check
from fantasy.speed.layout import ContextParallel
from fantasy.speed.sharding import parameter_bytes
from fantasy.weights.presets import get_preset
from tests.parallel_cases import CASES, CASES3, BlockCounter, build, call

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


def stage(out: Path, rank: int, name: str) -> None:
    """Where this rank is, for the watchdog (`tests.process_watch`)."""
    folder = out / "stages"
    folder.mkdir(exist_ok=True)
    partial = folder / f".rank{rank}"
    partial.write_text(name)
    partial.replace(folder / f"rank{rank}")


def latents(out: Path, rank: int, parallel: ContextParallel, cases: dict[str, dict]) -> None:
    for name, case in cases.items():
        stage(out, rank, f"latents {name}")
        pipe = build(case, parallel)
        counter = BlockCounter(pipe)
        result = call(pipe, case)
        if rank == 0:
            torch.save(result, out / f"latents-{name}.pt")
        if case["speed"].get("step_cache"):
            (out / f"blocks-{name}-rank{rank}.json").write_text(json.dumps(counter.count))
            ratios = list(pipe.transformer._fantasy_cache_decision.ratios)
            (out / f"ratios-{name}-rank{rank}.json").write_text(json.dumps(ratios))
        if case.get("sharded"):
            held = {"transformer": parameter_bytes(pipe.transformer), "text_encoder": parameter_bytes(pipe.text_encoder)}
            (out / f"bytes-{name}-rank{rank}.json").write_text(json.dumps(held))


def cache_at_a_ratio(out: Path, rank: int, parallel: ContextParallel, cases: dict[str, dict]) -> None:
    """The step cache with its threshold exactly at a ratio one process computes (each rank computes it alone
    first): the decision there depends on the last bit of the ratio, which must not depend on the split."""
    from dataclasses import replace

    stage(out, rank, "cache at a ratio")
    case = cases["sharded+cache"]
    alone = build(case)
    call(alone, case)
    ratios = sorted(alone.transformer._fantasy_cache_decision.ratios)
    case = dict(case, speed=dict(case["speed"], cache_threshold=ratios[len(ratios) // 2]))
    pipe = build(case, replace(parallel, shard_weights=False))
    counter = BlockCounter(pipe)
    result = call(pipe, case)
    if rank == 0:
        torch.save(result, out / "latents-cache-at-ratio.pt")
    (out / f"blocks-cache-at-ratio-rank{rank}.json").write_text(json.dumps(
        {"threshold": case["speed"]["cache_threshold"], "blocks": counter.count}))


GGUF_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=6, attention_head_dim=16, in_channels=36, out_channels=16,
                   text_dim=64, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True,
                   qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=64, added_kv_proj_dim=96, rope_max_seq_len=1024)


def gguf_inputs() -> dict:
    """One DiT call's inputs: 2 latent frames x 4 x 4 = 32 tokens (16 + 16; 11 + 11 + 10)."""
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 36, 2, 8, 8, generator=g).bfloat16(), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 8, 64, generator=g).bfloat16(),
                encoder_hidden_states_image=torch.randn(1, 5, 64, generator=g).bfloat16(), return_dict=False)


def gguf_transformer(folder: Path):
    """The GGUF Q8_0 DiT of `write_gguf`, as the real preset loads it (quantized, computing in bf16), with the
    audio adapter (random weights) and its context: (transformer, audio context)."""
    from fantasy.model.adapter import audio_processors, install_audio_adapter
    from fantasy.weights.quantize import load_single_file_transformer

    transformer = load_single_file_transformer(folder / "dit.gguf", folder, torch.bfloat16, gguf=True)
    audio = install_audio_adapter(transformer, context_dim=32, num_image_tokens=5)
    g = torch.Generator().manual_seed(1)
    for processor in audio_processors(transformer):
        processor.to(torch.bfloat16)
        for linear in (processor.k_proj, processor.v_proj):
            linear.weight.data.copy_(torch.randn(linear.weight.shape, generator=g) * 0.5)
    return transformer, audio


def gguf_call(transformer, audio) -> torch.Tensor:
    """One call with speech: each of the 2 latent frames attends to its window (the second one padded)."""
    g = torch.Generator().manual_seed(2)
    windows = torch.randn(1, 2, 6, 32, generator=g).bfloat16()
    with torch.no_grad(), audio.use(windows, torch.tensor([6, 4]), torch.tensor([1.0])):
        return transformer(**gguf_inputs())[0]


def write_gguf(folder: Path) -> None:
    """city96's Q8_0 layout (`tools.real_layout`) at a small width: every weight in Q8_0 blocks of 32."""
    from tools import real_layout

    real_layout.write_city96_gguf(folder / "dit.gguf", GGUF_CONFIG)
    (folder / "config.json").write_text(json.dumps(dict(GGUF_CONFIG, _class_name="WanTransformer3DModel")))


def gguf_sharded(out: Path, rank: int, world: int) -> None:
    """A GGUF DiT under context parallelism with its Q8_0 weights sharded: rank 0's output, each rank's bytes."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from fantasy.speed.parallel import enable_context_parallel

    stage(out, rank, "gguf")
    transformer, audio = gguf_transformer(out / "inputs")
    whole = parameter_bytes(transformer)
    was_gguf = isinstance(transformer.blocks[0].attn1.to_q.weight, GGUFParameter)
    lines = enable_context_parallel(SimpleNamespace(transformer=transformer, text_encoder=None),
                                    ContextParallel(world, shard_weights=True))
    result = gguf_call(transformer, audio)
    if rank == 0:
        torch.save(result, out / "gguf.pt")
    (out / f"gguf-rank{rank}.json").write_text(json.dumps({
        "whole": whole, "held": parameter_bytes(transformer), "was_gguf": was_gguf, "lines": lines,
        "sharded_type": type(transformer.blocks[0].attn1.to_q.weight).__name__,
    }))


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


def local_cache_decisions() -> None:
    """Break the group on purpose: each rank's step cache decides from its own slice (the shared decision
    removed), so the ranks disagree about skipping blocks and wait for each other in different collectives."""
    import fantasy.speed.cache_decision as decisions

    alone = decisions.install_cache_decision
    decisions.install_cache_decision = lambda transformer, *_: alone(transformer)


def main(out: Path, broken: bool = False) -> None:
    torch.set_num_threads(1)
    init_processes("cpu", float(os.environ.get("FANTASY_TEST_COLLECTIVE_TIMEOUT", "120")))
    rank, world = dist.get_rank(), dist.get_world_size()
    parallel = ContextParallel(world)
    if broken:
        local_cache_decisions()
        latents(out, rank, parallel, {"batched+cache": CASES["batched+cache"]})
        return
    latents(out, rank, parallel, CASES if world == 2 else CASES3)
    cache_at_a_ratio(out, rank, parallel, CASES if world == 2 else CASES3)
    gguf_sharded(out, rank, world)
    if world == 2:
        stage(out, rank, "compile")
        compile_refusal(out, rank, parallel)
        stage(out, rank, "target")
        target_check(out, rank)
        pipe = build(CASES["even"], parallel)
        stage(out, rank, "generate")
        generations(out, rank, pipe)
        stage(out, rank, "release")
        release_generation(out, rank, parallel)
        stage(out, rank, "studio")
        studio_jobs(out, JobChannel(control_group()), pipe)
    stage(out, rank, "done")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), broken="--local-cache-decisions" in sys.argv)
