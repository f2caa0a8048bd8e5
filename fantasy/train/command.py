"""`python -m fantasy train --data DIR --stage 1|2 --out DIR`: cache the clips, then train the adapters;
`python -m fantasy make-clips --out DIR --count N`: synthetic talking clips to train on (`fantasy.train.synthetic`).

`fantasy/cli.py` mounts this with `add_parser(subparsers)`. Several GPUs: `accelerate launch --multi_gpu
--num_processes N -m fantasy train ...` (or torchrun); several CPU processes: `ACCELERATE_USE_CPU=true torchrun
--nproc_per_node N -m fantasy train ...` (see `fantasy.train.processes`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fantasy.train.trainer import ADAPTER_MODULES, MODULES


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train the audio adapter, motion-intensity and identity modules on talking clips",
        description="Dual-stage training (paper §3): stage 1 clip-level audio attention, stage 2 frame-level "
        "windows with a lip-weighted loss. Clips: NAME.mp4 with speech in its audio track or in NAME.wav, "
        "optional NAME.txt prompt and NAME.landmarks.npy. The base model stays frozen.",
    )
    p.add_argument("--data", required=True, help="folder of training clips")
    p.add_argument("--stage", type=int, default=None, choices=[1, 2],
                   help="1: clip-level; 2: frame-level + lip mask (needed unless --part is vae or speech)")
    p.add_argument("--out", required=True, help="run folder: step-N.safetensors, modules.safetensors, train_log.jsonl")
    p.add_argument("--preset", default="tiny", choices=["tiny", "demo", "real"])
    p.add_argument("--part", default="adapters", choices=["adapters", "vae", "speech", "dit"],
                   help="demo preset, trained part by part into one model folder (--out): vae, then speech (the "
                        "speech encoder on espeak-ng's visemes), then dit (the base DiT with the adapters); "
                        "default: the adapters on a frozen base. Every part resumes when run again with the same command")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    p.add_argument("--save-minutes", type=float, default=5.0, help="demo parts: save a resumable state this often")
    p.add_argument("--init", default=None,
                   help="start from this checkpoint (stage 2: stage 1's modules.safetensors); default: the preset's "
                        "adapter (real: the released audio adapter; tiny: random)")
    p.add_argument("--modules", default=",".join(ADAPTER_MODULES),
                   help=f"what trains, comma-separated from {','.join(MODULES)} (default: the adapters; the demo's "
                        "dit part: dit,audio,motion)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--frames", type=int, default=81, help="frames per sample, 4k+1 (default 81)")
    p.add_argument("--fps", type=float, default=23.0)
    p.add_argument("--size", default=None, help="WxH of the samples, multiples of 16 (tiny: 64x64, real: 512x512)")
    p.add_argument("--lip-weight", type=float, default=1.0, help="stage 2: lip tokens weigh 1 + this (default 1)")
    p.add_argument("--drop-audio", type=float, default=0.1, help="audio-condition dropout (for audio guidance)")
    p.add_argument("--drop-text", type=float, default=0.1, help="text-condition dropout")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--same-samples", action="store_true",
                   help="every process draws the same clips, noise and dropout, so N processes reproduce one process "
                        "exactly (a check of a multi-GPU set-up; no speed-up)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute blocks in backward (real preset)")
    p.add_argument("--cache", default=None, help="feature cache folder (default DATA/.cache)")
    p.add_argument("--device", default=None)
    p.add_argument("--weights", default=None, help="real preset: weights dir")
    p.add_argument("--dit", default="bf16", help="real preset: how the frozen DiT is stored (default bf16)")
    p.set_defaults(run=run)
    return p


def _size(text: str | None, preset: str) -> tuple[int, int]:
    from fantasy.errors import InvalidSetting

    if text is None:
        return {"tiny": (64, 64), "demo": (128, 128)}.get(preset, (512, 512))
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidSetting(f"--size must look like 512x512, got {text}") from None
    return width, height


def run(args) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.part in ("vae", "speech"):
        return _run_demo_part(args)
    if args.stage is None:
        from fantasy.errors import InvalidSetting

        raise InvalidSetting("--stage 1 or 2 is needed to train the adapters or the DiT")
    from fantasy.train.cache import CACHE_DIRNAME, cache_dataset
    from fantasy.train.clips import SampleSpec
    from fantasy.train.dataset import TrainingSet
    from fantasy.train.processes import training_processes
    from fantasy.train.trainer import TrainConfig, train
    from fantasy.weights.presets import load_pipeline

    width, height = _size(args.size, args.preset)
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
    demo = args.preset == "demo"
    if demo != (args.part == "dit"):
        from fantasy.errors import InvalidSetting

        raise InvalidSetting("the demo preset trains part by part (--part vae, speech or dit); --part dit is the "
                             "demo's" if demo else f"--part {args.part} trains a part of the demo model: use --preset demo")
    if "dit" in modules and not demo:
        from fantasy.errors import InvalidSetting

        raise InvalidSetting("--modules dit trains a whole base DiT, which only the demo preset does "
                             "(--preset demo --part dit)")
    model_dir = Path(args.out)
    out = model_dir / "dit-run" if demo else model_dir
    if demo and args.modules == ",".join(ADAPTER_MODULES):
        modules = ("dit", "audio", "motion")
    extra = {"preset": args.preset, "init": args.init}
    if demo:
        extra["publish"] = str(model_dir / "dit.safetensors")
    cache = Path(args.cache) if args.cache else (out / "cache" if demo else None)
    config = TrainConfig(
        data=Path(args.data), out=out, stage=args.stage, steps=args.steps, lr=args.lr,
        num_frames=args.frames, fps=args.fps, width=width, height=height, modules=modules,
        lip_weight=args.lip_weight, drop_audio=args.drop_audio, drop_text=args.drop_text, grad_accum=args.grad_accum,
        save_every=args.save_every, seed=args.seed, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, cache_dir=cache,
        same_samples=args.same_samples, extra=extra,
    )
    config.check()  # before loading anything
    processes = training_processes()  # a launch that would not do what was asked stops here
    main = processes.is_main_process
    say = (lambda text: print(text, file=sys.stderr)) if main else (lambda text: None)
    spec = SampleSpec(num_frames=config.num_frames, fps=config.fps, width=width, height=height)
    if args.stage == 2 and args.init is None:
        say("note: stage 2 usually starts from stage 1's checkpoint (--init RUN/modules.safetensors)")
    real = {"dit": args.dit, "weights": args.weights} if args.preset == "real" else {}
    device = args.device or (str(processes.device) if processes.num_processes > 1 else None)  # one GPU each
    if demo:
        from fantasy.weights.demo import install_demo_motion, load_demo_pipeline

        pipe = load_demo_pipeline(model_dir, device=device, need=("vae", "speech"))
        install_demo_motion(pipe)
    else:
        pipe = load_pipeline(args.preset, device=device, adapter=args.init, **real)

    def cached(done: int, total: int, name: str, status: str) -> None:
        say(f"  cache {done}/{total}: {name} ({status})")

    with processes.main_process_first():  # the main process caches; the others then read its files
        if main:
            cache_dataset(pipe, config.data, spec, config.cache_dir, progress=cached)
    dataset = TrainingSet.from_cache_dir(config.cache_dir or config.data / CACHE_DIRNAME)
    every = max(1, config.steps // 20)

    def report(step: int, total: int, loss: float) -> None:
        if step % every == 0 or step == total:
            say(f"  step {step}/{total}: loss {loss:.4f}")

    result = train(pipe, config, dataset, progress=report)
    if main and demo:
        print(f"wrote {config.extra['publish']} ({result.steps} steps on {result.clips} clips, stage {config.stage}); "
              f"the demo model in {model_dir} is complete: check it with `python -m tools.demo_go_no_go --model "
              f"{model_dir} --heldout HELD_OUT_CLIPS`")
    elif main:
        print(f"wrote {result.checkpoint} ({result.steps} steps on {result.clips} clips, stage {config.stage}"
              f"{f', {processes.num_processes} processes' if processes.num_processes > 1 else ''}); use it with "
              f"`python -m fantasy generate --adapter {result.checkpoint} ...` or the app's FANTASY_ADAPTER")
    return 0


def _run_demo_part(args) -> int:
    from fantasy.errors import InvalidSetting

    if args.preset != "demo":
        raise InvalidSetting(f"--part {args.part} trains a part of the demo model: use --preset demo")
    out = Path(args.out)
    every = max(1, args.steps // 200)

    def report(step: int, total: int, values: dict) -> None:
        if step % every == 0 or step == total:
            shown = ", ".join(f"{k} {v}" for k, v in values.items())
            print(f"  {args.part} step {step}/{total}: {shown}", file=sys.stderr)

    if args.part == "vae":
        from fantasy.train.vae_trainer import VaeConfig, train_vae
        from fantasy.weights.demo import demo_components

        pipe = _demo_parts_pipeline(demo_components())
        path = train_vae(pipe, VaeConfig(Path(args.data), out, args.steps, args.lr, args.seed, args.save_minutes), report)
    else:
        from fantasy.train.speech_trainer import SpeechConfig, train_speech
        from fantasy.weights.demo import demo_components

        pipe = _demo_parts_pipeline(demo_components())
        path = train_speech(pipe, SpeechConfig(Path(args.data), out, args.steps, args.lr, args.seed, args.save_minutes),
                            report)
    print(f"wrote {path}")
    return 0


def _demo_parts_pipeline(components: dict):
    """The parts a part trainer needs, without assembling a pipeline (no adapter, no DiT work)."""
    from types import SimpleNamespace

    return SimpleNamespace(**components, motion_context=None)


def add_clips_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "make-clips",
        help="render synthetic talking clips (espeak-ng speech + warped public-domain photos) for `train`",
        description="Clips with known ground truth, deterministic by seed, in the folder layout `train --data` "
        "reads (NAME.mp4, NAME.wav, NAME.txt, NAME.landmarks.npy, NAME.truth.json). Needs espeak-ng. Clips "
        "already in the folder are kept, so an interrupted run continues.",
    )
    p.add_argument("--out", required=True, help="folder to write the clips into")
    p.add_argument("--count", type=int, required=True, help="how many clips")
    p.add_argument("--seed", type=int, default=0, help="clip i uses seed SEED+i (default 0)")
    p.add_argument("--size", type=int, default=128, help="frame side in px, a multiple of 16 (default 128)")
    p.add_argument("--min-frames", type=int, default=33, help="at least this many frames per clip (default 33)")
    p.add_argument("--held-out-voice", action="store_true",
                   help="speak with the held-out voice (en-gb-scotland) that training sets never use")
    p.add_argument("--photos", default=None, help="comma-separated training photos (default: all: collins,hopper)")
    p.add_argument("--prefix", default="clip", help="clip names are PREFIX-SEED (default clip)")
    p.set_defaults(run=run_make_clips)
    return p


def run_make_clips(args) -> int:
    from fantasy.errors import InvalidSetting
    from fantasy.train.portraits import PHOTOS
    from fantasy.train.synthetic import HELD_OUT_VOICE, VOICES, make_clips

    if args.size < 32 or args.size % 16:
        raise InvalidSetting(f"--size must be a multiple of 16 and at least 32, got {args.size}")
    photos = tuple(PHOTOS) if args.photos is None else tuple(p.strip() for p in args.photos.split(",") if p.strip())
    unknown = [p for p in photos if p not in PHOTOS]
    if unknown or not photos:
        raise InvalidSetting(f"--photos must name some of {', '.join(PHOTOS)}, got {args.photos!r}")
    voices = (HELD_OUT_VOICE,) if args.held_out_voice else VOICES
    every = max(1, args.count // 20)

    def progress(done: int, total: int, name: str) -> None:
        if done % every == 0 or done == total:
            print(f"  clip {done}/{total}: {name}", file=sys.stderr)

    paths = make_clips(args.out, args.count, args.seed, args.size, args.min_frames, photos, voices, args.prefix, progress)
    print(f"wrote {len(paths)} clips to {args.out}; train on them with `python -m fantasy train --data {args.out} ...`")
    return 0
