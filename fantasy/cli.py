"""`python -m fantasy ...`: generate, convert adapter weights, download weights, eval, train, bench.

User errors (`FantasyError`) print one clear line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fantasy.app.flags import (
    add_parallel_flags,
    add_real_flags,
    add_speed_flags,
    parallel_option,
    speed_options,
)
from fantasy.errors import FantasyError, InputFileNotFound, InvalidSetting


def _add_generate(sub) -> None:
    from fantasy.generation import DEFAULT_PROMPT, DEFAULT_SEED
    from fantasy.release import RELEASE_PROMPT

    p = sub.add_parser("generate", help="portrait + speech -> talking-video mp4")
    p.add_argument("--image", required=True, help="portrait (png/jpg/webp)")
    p.add_argument("--audio", required=True, help="speech (wav/mp3/flac/ogg/m4a/aac, or a video's audio track)")
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--preset", default="tiny", choices=["tiny", "real"], help="tiny: random demo models (CPU)")
    p.add_argument("--preview", default=None, metavar="PATH",
                   help="keep PATH (.webp or .gif) holding a looping clip of the video forming while denoising "
                        "(a fast estimate without the VAE, updated every few steps; see README, Live preview)")
    p.add_argument("--prompt", default=None, help=f"default: '{DEFAULT_PROMPT}' ('{RELEASE_PROMPT}' with --release)")
    p.add_argument("--negative-prompt", default=None, help="default: Wan's negative prompt + 'motionless'")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (preset default: 30; --fast: 4)")
    p.add_argument("--text-guidance", type=float, default=None, help="default 5 (--fast: 1)")
    p.add_argument("--audio-guidance", type=float, default=None, help="default 5 (--fast: 1; 2 adds a pass per step)")
    p.add_argument("--audio-weight", type=float, default=1.0)
    p.add_argument("--fps", type=int, default=23)
    p.add_argument("--max-frames", type=int, default=81, help="frames per window (the release's clip: 81)")
    p.add_argument("--max-duration", type=float, default=10.0,
                   help="seconds of speech to animate; longer speech is cut (default 10)")
    p.add_argument("--size", type=int, default=None, help="longest edge in px, multiple of 16 (tiny: 128, real: 512)")
    p.add_argument("--adapter", default=None,
                   help="adapter weights (.safetensors or the released .ckpt), or a training checkpoint "
                        "(`python -m fantasy train`: also loads its motion / identity modules)")
    p.add_argument("--expression", type=float, default=None,
                   help="expression intensity 0-1 (the app's slider; trained motion module or training-free mapping)")
    p.add_argument("--body", type=float, default=None, help="body-motion intensity 0-1 (the app's slider)")
    p.add_argument("--face", default=None,
                   help="identity module: the portrait's square face crop (default: found with the face backend, dlib)")
    p.add_argument("--device", default=None)
    add_real_flags(p)
    p.add_argument("--weights", default=None, help="real preset: weights dir (default weights/ or $FANTASY_WEIGHTS)")
    p.add_argument("--release", action="store_true",
                   help="exactly the official infer.py's clip: at most 81 frames from the start of the speech, the "
                        "bf16 DiT, its prompt, its tiled decode and uint8 truncation (see README, Numerics)")
    add_speed_flags(p)
    add_parallel_flags(p)
    p.set_defaults(run=_run_generate)


def _guidance_defaults(args) -> tuple[int | None, float, float]:
    """(steps, text guidance, audio guidance): the user's values, else the release's or the few-step mode's."""
    from fantasy.generation import Settings
    from fantasy.speed.distill import FEW_STEP_AUDIO_GUIDANCE, FEW_STEP_TEXT_GUIDANCE, FEW_STEPS

    plain = Settings()
    steps = FEW_STEPS if args.fast else plain.steps
    text = FEW_STEP_TEXT_GUIDANCE if args.fast else plain.text_guidance
    audio = FEW_STEP_AUDIO_GUIDANCE if args.fast else plain.audio_guidance
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return pick(args.steps, steps), pick(args.text_guidance, text), pick(args.audio_guidance, audio)


def _run_generate(args) -> int:
    """Every check first (settings, inputs, the output path and its free space), then the models, then the video."""
    from fantasy.generation import Settings, generate, prepare_inputs
    from fantasy.media.output import check_target
    from fantasy.model.pipeline import DEFAULT_NEGATIVE_PROMPT
    from fantasy.release import RELEASE_DIT
    from fantasy.speed.parallel import is_leader, leader_check  # now: errors are said by rank 0 only (main)
    from fantasy.weights.presets import get_preset, load_pipeline

    if Path(args.out).suffix.lower() != ".mp4":
        raise FantasyError(f"--out must end in .mp4, got {args.out}")
    preview = _preview_file(args.preview, args.fps)
    preset = get_preset(args.preset)
    speed = speed_options(args)
    if speed.distilled_lora and not Path(speed.distilled_lora).is_file():
        raise InputFileNotFound(f"LoRA file not found: {speed.distilled_lora}")
    steps, text_guidance, audio_guidance = _guidance_defaults(args)
    if args.release:
        _check_release_flags(args, speed)
    settings = Settings(
        prompt=args.prompt, negative_prompt=args.negative_prompt or DEFAULT_NEGATIVE_PROMPT, seed=args.seed,
        steps=steps, text_guidance=text_guidance, audio_guidance=audio_guidance,
        audio_weight=args.audio_weight, fps=args.fps, max_frames=args.max_frames,
        max_duration=args.max_duration, longest_edge=args.size, release=args.release,
    )
    settings = settings.resolved(preset)  # reject bad settings before reading anything
    parallel = parallel_option(args, vram=args.vram if preset.name == "real" else "resident")
    inputs = prepare_inputs(args.image, args.audio, settings)  # the speech is decoded once, up to the limit
    face = None
    if args.face is not None:
        from fantasy.media.image import load_portrait

        face = load_portrait(args.face)
    device = args.device
    if parallel is not None:
        from fantasy.speed.parallel import init_processes

        device = init_processes(args.device)
    leader = is_leader()  # under context parallelism only rank 0 prints and writes
    say = (lambda text: print(text, file=sys.stderr)) if leader else (lambda text: None)
    # only rank 0 writes: it checks the target, and every process stops alike when that fails
    leader_check(lambda: check_target(args.out, 2 * inputs.output_bytes(settings.fps)))
    for notice in inputs.notices:
        say(f"note: {notice}")
    if preset.demo:
        say(f"[{preset.name}] {preset.summary}")
    started = time.perf_counter()
    dit = args.dit or (RELEASE_DIT if args.release else None)  # None: picked from free VRAM (README, Weights)
    real = {"dit": dit, "vram": args.vram, "weights": args.weights, "fit_size": settings.resolved(preset).longest_edge,
            "fit_frames": settings.max_frames, "fit_batch": 3 if speed.batch_guidance else 1}
    pipe = load_pipeline(preset.name, device=device, adapter=args.adapter, **(real if preset.name == "real" else {}))
    pipe.set_progress_bar_config(disable=True)  # our own progress lines below
    from fantasy.speed.switches import apply_speed

    for line in apply_speed(pipe, speed, parallel):
        say(f"  speed: {line}")
    if args.expression is not None or args.body is not None:
        from fantasy.app.sliders import motion_controls

        expression = 0.5 if args.expression is None else args.expression
        body = 0.5 if args.body is None else args.body
        settings, _ = motion_controls(expression, body, settings, trained=pipe.motion_context is not None)
    loaded = time.perf_counter() - started
    last = {"stage": None}

    def progress(stage: str, fraction: float) -> None:
        if stage != last["stage"] or fraction >= 1.0:
            say(f"  {stage}: {fraction:.0%}")
            last["stage"] = stage

    out = args.out if leader else None
    result = generate(pipe, args.image, args.audio, out, settings, preset, progress=progress, face_image=face,
                      inputs=inputs, preview=preview if leader else None)
    if not leader:
        return 0
    if result.speech_cut and result.release:
        print(f"note: --release animates one clip, the first {result.num_frames / result.fps:.2f} s of the speech "
              f"({result.speech_seconds:.1f} s), as the release does", file=sys.stderr)
    elif result.speech_cut:
        print(f"note: the speech ({result.speech_seconds:.1f} s) was cut at the maximum duration "
              f"({settings.max_duration:g} s); raise --max-duration to animate more", file=sys.stderr)
    print(
        f"wrote {result.path} ({result.num_frames} frames, {result.width}x{result.height} @ {result.fps} fps, "
        f"{result.num_frames / result.fps:.2f} s, {result.windows} window{'s' * (result.windows > 1)}) "
        f"in {result.seconds_taken:.1f} s (+{loaded:.1f} s loading), "
        f"{settings.resolved(preset).steps} steps x {result.passes_per_step} passes; motion: {result.motion_mode}"
        + (f"; DiT: {pipe.dit_choice.describe()}" if getattr(pipe, "dit_choice", None) is not None else "")
        + ("; release mode" if result.release else "")
    )
    return 0


def _check_release_flags(args, speed) -> None:
    """Options `--release` cannot honour, refused before any model loads (`fantasy.release`)."""
    from fantasy.release import RELEASE_DIT

    refused = [
        (args.dit not in (None, RELEASE_DIT), f"--release runs the release's bf16 DiT; drop --dit {args.dit}"),
        (speed.precision != "mixed", "--release computes the DiT in the release's mixed precision; drop --precision"),
        (speed.step_cache is not None, "--release computes every block at every step; drop --step-cache"),
        (speed.distilled_lora is not None, "--release runs the release's 30-step sampler; drop --fast"),
        (speed.fp8_linears, "--release runs the DiT's matmuls in bf16; drop --fp8-linears"),
        (args.expression is not None or args.body is not None,
         "--release runs the released adapter only; drop --expression/--body"),
        (args.face is not None, "--release runs the released adapter only (no identity module); drop --face"),
    ]
    for bad, message in refused:
        if bad:
            raise InvalidSetting(message)


def _preview_file(path: str | None, fps: int):
    """`--preview PATH` -> a `LivePreview` writing the latest estimate there; checked before any model loads."""
    if path is None:
        return None
    from fantasy.model.preview import PREVIEW_SUFFIXES, LivePreview, PreviewFile

    target = Path(path)
    if target.suffix.lower() not in PREVIEW_SUFFIXES:
        raise InvalidSetting(f"--preview must end in .webp or .gif, got {path}")
    if not target.parent.is_dir():
        raise InvalidSetting(f"--preview: folder {target.parent} does not exist")
    return LivePreview(PreviewFile(target, fps))


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="released fantasytalking_model.ckpt -> safetensors (bf16)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from fantasy.weights.adapter_weights import convert_checkpoint

    count = convert_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst} ({count} tensors)")
    return 0


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="fetch the real preset's weights from the Hugging Face Hub")
    p.add_argument("--dit", default="q8_0", choices=["q8_0", "q4_k_m", "bf16"],
                   help="DiT file: GGUF Q8_0 (default), GGUF Q4_K_M, or bf16 safetensors (for bf16/-int8/-fp8 modes)")
    p.add_argument("--dir", default=None, help="weights dir (default weights/ or $FANTASY_WEIGHTS)")
    p.add_argument("--dry-run", action="store_true", help="print the files and sizes, download nothing")
    p.add_argument("--keep-ckpt", action="store_true", help="keep the adapter's .ckpt after converting it")
    p.add_argument("--face", action="store_true", help="also the weights of the optional face-alignment backend (--face-backend face-alignment)")
    p.set_defaults(run=_run_download)


def _run_download(args) -> int:
    from fantasy.weights.download import download

    download(args.dit, args.dir, dry_run=args.dry_run, keep_ckpt=args.keep_ckpt, face=args.face)
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="time the pipeline: --gpu the full 14B DiT + encoders + VAE (random weights), --cpu the tiny run",
        description="--gpu: a whole guidance step of the Wan2.1-I2V-14B DiT + adapter (random weights, no download) at "
                    "512x512x81 and 832x480x81 (s/step, s/pass, peak GiB, fraction of the FLOP floor), the encoders "
                    "and the VAE; --gpu --tiny runs that code on a tiny config (CPU). --cpu: the tiny preset end to "
                    "end on the examples (s/step etc.), for regressions. Default: --gpu with a GPU, else --cpu.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gpu", action="store_true", help="full-size DiT, encoders and VAE on the GPU")
    mode.add_argument("--cpu", action="store_true", help="the tiny preset end to end")
    p.add_argument("--tiny", action="store_true", help="--gpu: tiny config, runs on a CPU (a dry run for CI)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--sizes", nargs="+", default=None, metavar="WxH", help="--gpu: default 512x512 832x480")
    p.add_argument("--frames", type=int, default=None, help="--gpu: frames per clip (default 81)")
    p.add_argument("--repeat", type=int, default=3, help="--gpu: timed runs per figure (mean), after --warmup")
    p.add_argument("--warmup", type=int, default=1, help="--gpu: untimed runs first (compilation happens here)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="--gpu: the GPU's dense bf16 peak, for the floor (known: H100, H200, A100)")
    p.add_argument("--peak-fp8-tflops", type=float, default=None, help="--gpu: dense fp8 peak (default 2x bf16)")
    p.add_argument("--no-pieces", action="store_true", help="--gpu: skip the encoders and the VAE")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (--gpu: for the clip estimate, 30)")
    p.add_argument("--size", type=int, default=None, help="--cpu: longest edge (default 128)")
    p.add_argument("--max-duration", type=float, default=10.0, help="--cpu: seconds of the example speech")
    p.add_argument("--text-guidance", type=float, default=None, help="--cpu: default 5 (--fast: 1)")
    p.add_argument("--audio-guidance", type=float, default=None, help="--cpu: default 5 (--fast: 1)")
    add_speed_flags(p)
    p.set_defaults(run=_run_bench)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise InvalidSetting(f"sizes are WIDTHxHEIGHT, e.g. 832x480; got '{text}'") from None
    if min(size) < 16 or size[0] % 16 or size[1] % 16:
        raise InvalidSetting(f"size sides must be multiples of 16, got '{text}'")
    return size


def _run_bench(args) -> int:
    import torch

    speed = speed_options(args)
    gpu = args.gpu or (not args.cpu and (args.tiny or torch.cuda.is_available()))
    if args.tiny and not gpu:
        raise InvalidSetting("--tiny is the GPU benchmark's dry run; use it with --gpu (or alone)")
    try:
        if gpu:
            from bench.gpu_speed import GpuBenchConfig, format_gpu_report, run_gpu_bench

            config = GpuBenchConfig(
                tiny=args.tiny, sizes=[_size(s) for s in args.sizes] if args.sizes else None, frames=args.frames,
                steps=args.steps or 30, warmup=args.warmup, repeat=args.repeat, peak_tflops=args.peak_tflops,
                peak_fp8_tflops=args.peak_fp8_tflops, pieces=not args.no_pieces, speed=speed,
            )
            report = run_gpu_bench(config)
            text = format_gpu_report(report)
        else:
            from bench.cpu_run import CpuBenchConfig, format_cpu_report, run_cpu_bench

            steps, text_guidance, audio_guidance = _guidance_defaults(args)
            report = run_cpu_bench(CpuBenchConfig(
                steps=steps, size=args.size, max_duration=args.max_duration, text_guidance=text_guidance,
                audio_guidance=audio_guidance, speed=speed,
            ))
            text = format_cpu_report(report)
    except ModuleNotFoundError as exc:
        if exc.name != "bench" and not str(exc.name).startswith("bench."):
            raise
        raise FantasyError("the benchmarks live in bench/ of the repository: run this from the repository root") from exc
    print(text)
    if args.json:
        from bench.report import write_json

        print(f"wrote {write_json(args.json, report)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fantasy", description="FantasyTalking Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_download(sub)
    _add_bench(sub)
    from fantasy.app.serve import add_parser as add_serve
    from fantasy.metrics.command import add_parser as add_eval
    from fantasy.train.command import add_parser as add_train

    add_eval(sub)
    add_train(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error prints `error: ...` (status 2); SIGINT, SIGTERM or SIGHUP stop the command,
    remove its temporary files and print one line (status 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM)."""
    from fantasy import quiet  # noqa: F401  (drops known third-party import noise before those imports run)
    from fantasy.stop import StopRequested, stop_on_signals

    args = None
    try:
        with stop_on_signals():
            args = build_parser().parse_args(argv)  # builds the generate parser: imports torch and diffusers
            return args.run(args)
    except FantasyError as exc:
        parallel = sys.modules.get("fantasy.speed.parallel")  # imported only when a command uses processes
        if parallel is None or parallel.is_leader():  # a group's processes fail alike: one message
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except StopRequested as stop:
        parallel = sys.modules.get("fantasy.speed.parallel")
        if parallel is not None and not parallel.is_leader():  # the group stops alike: rank 0 says it
            return stop.exit_status
        if stop.written:
            print(f"stopped ({stop}), {stop.written} was already complete", file=sys.stderr)
        elif args is None or args.run is _run_generate:  # generate writes its video only once it is complete
            print(f"stopped ({stop}), nothing written", file=sys.stderr)
        else:
            print(f"stopped ({stop})", file=sys.stderr)
        return stop.exit_status
    finally:
        if "fantasy.speed.parallel" in sys.modules:
            sys.modules["fantasy.speed.parallel"].leave_processes()
