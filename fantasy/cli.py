"""`python -m fantasy ...`: generate, convert adapter weights, download weights, eval, train.

User errors (`FantasyError`) print one clear line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fantasy.errors import FantasyError


def _add_generate(sub) -> None:
    from fantasy.generate import DEFAULT_PROMPT, DEFAULT_SEED
    from fantasy.offload import VRAM_MODES
    from fantasy.quantize import DIT_MODES

    p = sub.add_parser("generate", help="portrait + speech -> talking-video mp4")
    p.add_argument("--image", required=True, help="portrait (png/jpg/webp)")
    p.add_argument("--audio", required=True, help="speech (wav/mp3/flac/ogg/m4a/aac, or a video's audio track)")
    p.add_argument("--out", required=True, help="output .mp4 path")
    p.add_argument("--preset", default="tiny", choices=["tiny", "real"], help="tiny: random demo models (CPU)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--negative-prompt", default=None, help="default: Wan's negative prompt + 'motionless'")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (preset default: 30)")
    p.add_argument("--text-guidance", type=float, default=5.0)
    p.add_argument("--audio-guidance", type=float, default=5.0)
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
                   help="identity module: the portrait's square face crop (default: found with face-alignment)")
    p.add_argument("--device", default=None)
    p.add_argument("--dit", default="q8_0", choices=list(DIT_MODES), help="real preset: how the 14B DiT is stored")
    p.add_argument("--vram", default="resident", choices=list(VRAM_MODES), help="real preset: offloading")
    p.add_argument("--weights", default=None, help="real preset: weights dir (default weights/ or $FANTASY_WEIGHTS)")
    p.add_argument("--batch-guidance", action="store_true",
                   help="run the 3 guidance passes as one batch (same result, faster on a GPU with memory to spare)")
    p.set_defaults(run=_run_generate)


def _run_generate(args) -> int:
    from fantasy.generate import Settings, generate
    from fantasy.pipeline import DEFAULT_NEGATIVE_PROMPT
    from fantasy.presets import get_preset, load_pipeline

    if Path(args.out).suffix.lower() != ".mp4":
        raise FantasyError(f"--out must end in .mp4, got {args.out}")
    preset = get_preset(args.preset)
    settings = Settings(
        prompt=args.prompt, negative_prompt=args.negative_prompt or DEFAULT_NEGATIVE_PROMPT, seed=args.seed,
        steps=args.steps, text_guidance=args.text_guidance, audio_guidance=args.audio_guidance,
        audio_weight=args.audio_weight, fps=args.fps, max_frames=args.max_frames,
        max_duration=args.max_duration, longest_edge=args.size,
    )
    settings.resolved(preset)  # reject bad settings before loading any model
    if preset.demo:
        print(f"[{preset.name}] {preset.summary}", file=sys.stderr)
    started = time.perf_counter()
    real = {"dit": args.dit, "vram": args.vram, "weights": args.weights} if preset.name == "real" else {}
    pipe = load_pipeline(preset.name, device=args.device, adapter=args.adapter, **real)
    pipe.batch_guidance = args.batch_guidance
    if args.expression is not None or args.body is not None:
        from fantasy.motion import motion_controls

        expression = 0.5 if args.expression is None else args.expression
        body = 0.5 if args.body is None else args.body
        settings, _ = motion_controls(expression, body, settings, trained=pipe.motion_context is not None)
    loaded = time.perf_counter() - started
    last = {"stage": None}

    def progress(stage: str, fraction: float) -> None:
        if stage != last["stage"] or fraction >= 1.0:
            print(f"  {stage}: {fraction:.0%}", file=sys.stderr)
            last["stage"] = stage

    face = None
    if args.face is not None:
        from fantasy.image import load_portrait

        face = load_portrait(args.face)
    result = generate(pipe, args.image, args.audio, args.out, settings, preset, progress=progress, face_image=face)
    if result.speech_cut:
        print(f"note: the speech ({result.speech_seconds:.1f} s) was cut at the maximum duration "
              f"({settings.max_duration:g} s); raise --max-duration to animate more", file=sys.stderr)
    print(
        f"wrote {result.path} ({result.num_frames} frames, {result.width}x{result.height} @ {result.fps} fps, "
        f"{result.num_frames / result.fps:.2f} s, {result.windows} window{'s' * (result.windows > 1)}) "
        f"in {result.seconds_taken:.1f} s (+{loaded:.1f} s loading), "
        f"{settings.resolved(preset).steps} steps x {result.passes_per_step} passes; motion: {result.motion_mode}"
    )
    return 0


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="released fantasytalking_model.ckpt -> safetensors (bf16)")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(run=_run_convert)


def _run_convert(args) -> int:
    from fantasy.adapter_weights import convert_checkpoint

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
    p.add_argument("--face", action="store_true", help="also the face-alignment weights used by `eval`")
    p.set_defaults(run=_run_download)


def _run_download(args) -> int:
    from fantasy.download import download

    download(args.dit, args.dir, dry_run=args.dry_run, keep_ckpt=args.keep_ckpt, face=args.face)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fantasy", description="FantasyTalking Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_convert(sub)
    _add_download(sub)
    from fantasy.metrics.command import add_parser as add_eval
    from fantasy.train.command import add_parser as add_train

    add_eval(sub)
    add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FantasyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
