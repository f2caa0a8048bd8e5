"""`python -m fantasy generate`: the flags -> checked settings and inputs -> the models -> one video, with progress lines.

Every check runs first (settings, inputs, the output path and its free space), then the models load, then the
video is written; `fantasy/cli.py` mounts this with `add_parser(subparsers)`. Under `torchrun` with
`--context-parallel N` every process runs it and rank 0 alone prints and writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fantasy.app.flags import (
    add_lora_flags,
    add_model_flags,
    add_parallel_flags,
    add_setting_flags,
    add_speed_flags,
    comfy_option,
    guidance_defaults,
    lora_option,
    parallel_option,
    speed_options,
)
from fantasy.errors import FantasyError, InputFileNotFound, InvalidSetting


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="portrait + speech -> talking-video mp4")
    p.add_argument("--image", required=True, help="portrait (png/jpg/webp)")
    p.add_argument("--audio", required=True, help="speech (wav/mp3/flac/ogg/m4a/aac, or a video's audio track)")
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--preview", default=None, metavar="PATH",
                   help="keep PATH (.webp or .gif) holding a looping clip of the video forming while denoising "
                        "(a fast estimate without the VAE, updated every few steps; see docs/architecture.md, Live preview)")
    add_setting_flags(p)
    p.add_argument("--face", default=None,
                   help="identity module: the portrait's square face crop (default: found with the face backend, dlib)")
    add_model_flags(p)
    p.add_argument("--release", action="store_true",
                   help="exactly the official infer.py's clip: at most 81 frames from the start of the speech, the "
                        "bf16 DiT, its prompt, its tiled decode and uint8 truncation (see docs/numerics.md)")
    add_lora_flags(p)
    add_speed_flags(p)
    add_parallel_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """Every check first (settings, inputs, the output path and its free space), then the models, then the video."""
    from fantasy.generation import generate, prepare_inputs
    from fantasy.media.output import check_target
    from fantasy.model.pipeline import DEFAULT_NEGATIVE_PROMPT
    from fantasy.release import RELEASE_DIT
    from fantasy.settings import Settings
    from fantasy.speed.parallel import is_leader, leader_check  # now: errors are said by rank 0 only (main)
    from fantasy.weights.presets import get_preset, load_pipeline

    if Path(args.out).suffix.lower() != ".mp4":
        raise FantasyError(f"--out must end in .mp4, got {args.out}")
    preview = _preview_file(args.preview, args.fps)
    preset = get_preset(args.preset)
    speed = speed_options(args)
    if speed.distilled_lora and not Path(speed.distilled_lora).is_file():
        raise InputFileNotFound(f"LoRA file not found: {speed.distilled_lora}")
    steps, text_guidance, audio_guidance = guidance_defaults(args)
    if args.release:
        _check_release_flags(args, speed)
    comfy = comfy_option(args, preset.name)
    loras, lora_states = lora_option(args)  # every LoRA file read and checked before any model loads
    if args.release and loras:
        raise InvalidSetting("--release runs the released model only; drop --lora (and unset FANTASY_LORA)")
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
    dit = args.dit or (RELEASE_DIT if args.release else None)  # None: picked from free VRAM (docs/weights.md)
    real = {"dit": dit, "vram": args.vram, "weights": args.weights, "fit_size": settings.resolved(preset).longest_edge,
            "fit_frames": settings.max_frames, "fit_batch": 3 if speed.batch_guidance else 1, "comfy_models": comfy}
    pipe = load_pipeline(preset.name, device=device, adapter=args.adapter, **(real if preset.name == "real" else {}))
    pipe.set_progress_bar_config(disable=True)  # our own progress lines below
    from fantasy.speed.switches import apply_speed
    from fantasy.weights.loras import load_loras

    for applied in load_loras(pipe, loras, fuse=speed.fuse_lora, states=lora_states):
        say(f"  {applied}")
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
