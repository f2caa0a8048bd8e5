"""`fantasy generate`: the flags -> checked paths, settings and inputs -> the models -> one video, with progress.

Every check runs first, cheapest first: the paths (inputs exist, every output can be written and replaced and is
not an input) before torch is even imported, then the settings, the inputs and the face check, then the models
load and the video is written; `fantasy/cli.py` mounts this with `add_parser(subparsers)`. Under `torchrun` with
`--context-parallel N` every process runs it and rank 0 alone prints and writes.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
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
    preset_option,
    speed_options,
)
from fantasy.errors import InputFileNotFound, InvalidSetting

PREVIEW_SUFFIXES = (".webp", ".gif")  # fantasy.model.preview.PREVIEW_SUFFIXES
INPUT_NAMES = {"--image": "Portrait", "--audio": "Speech", "--face": "Face crop", "--adapter": "Adapter",
               "--fast": "LoRA"}
PIPE_LIMIT_BYTES = 256 * 1024 * 1024  # a named pipe is read once into a temporary copy of at most this much


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="portrait + speech -> talking-video mp4",
                              description="One portrait + one speech clip -> a talking-portrait mp4 (see docs/cli.md).")
    p.add_argument("--image", required=True, help="portrait (png/jpg/webp)")
    p.add_argument("--audio", required=True,
                   help="speech (wav/mp3/flac/ogg/m4a/aac, or a video's audio track; a named pipe is read once)")
    p.add_argument("--out", required=True, help="output .mp4 path (never one of the inputs)")
    p.add_argument("--no-face-check", action="store_true",
                   help="skip the face check (the app's: the portrait must show a face, found with dlib)")
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
    """The paths first (before torch loads), then settings, inputs and the face check, then the models, the video."""
    with tempfile.TemporaryDirectory(prefix="fantasy-generate-") as spool:
        _check_paths(args, Path(spool))
        return _generate(args)


def _check_paths(args, spool: Path) -> None:
    """What needs no library: every input exists (a named pipe is read once into `spool`), and every output
    can be written, can replace what is there, and is none of the inputs. Only the launch's rank 0 writes, so
    only it checks the outputs (`leader_check` repeats the check for the whole group once it has formed); only it
    says here that an input is missing: another rank's node may lack a file the first one has, which that rank
    finds when the group reads the inputs together, and the group says once."""
    from fantasy.media.output import check_not_an_input, check_replaceable, check_target, printable

    inputs = {"--image": args.image, "--audio": args.audio, "--face": args.face, "--adapter": args.adapter,
              "--fast": args.fast}
    notes = []
    for flag, given in inputs.items():
        if given is None:
            continue
        copy = _read_pipe(given, flag, spool)
        if copy is not None:
            setattr(args, flag.lstrip("-"), str(copy))
            notes.append(f"note: {flag} {printable(given)} is a named pipe: read once into a temporary copy "
                         f"({_mb(copy.stat().st_size)}; a pipe cannot be sized in advance, at most "
                         f"{_mb(PIPE_LIMIT_BYTES)} is read)")
        elif not Path(given).is_file() and os.environ.get("RANK", "0") == "0":
            what = "is not a regular file" if Path(given).exists() else "not found"
            raise InputFileNotFound(f"{INPUT_NAMES[flag]} file {what}: {printable(given)}"
                                    + (" (given with --adapter or FANTASY_ADAPTER)" if flag == "--adapter" else ""))
    if os.environ.get("RANK", "0") == "0":
        check_target(args.out)
        check_replaceable(args.out, "--out")
        check_not_an_input(args.out, inputs, "--out")
        if args.preview is not None:
            _check_preview(args.preview, {**inputs, "--out": args.out})
        for line in notes:
            print(line, file=sys.stderr)


def _check_preview(path: str, others: dict) -> None:
    from fantasy.media.output import check_not_an_input, check_replaceable, printable

    target = Path(path)
    if target.suffix.lower() not in PREVIEW_SUFFIXES:
        raise InvalidSetting(f"--preview must end in .webp or .gif, got {printable(path)}")
    if not target.parent.is_dir():
        raise InvalidSetting(f"--preview: folder {printable(target.parent)} does not exist")
    check_replaceable(target, "--preview")
    check_not_an_input(target, others, "--preview")
    try:  # the preview is rewritten through a temporary file beside it: the folder must take one
        fd, probe = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidSetting(f"--preview: cannot write in {printable(target.parent)}: {exc.strerror or exc}") from None


def _read_pipe(path: str, flag: str, spool: Path) -> Path | None:
    """A named pipe's content, read once into `spool` (at most PIPE_LIMIT_BYTES); None for anything else."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    copy = spool / (f"{flag.lstrip('-')}{Path(path).suffix}")
    with open(path, "rb") as source, open(copy, "wb") as target:
        shutil.copyfileobj(_Bounded(source, PIPE_LIMIT_BYTES + 1), target)
    if copy.stat().st_size > PIPE_LIMIT_BYTES:
        raise InvalidSetting(f"{flag}: the named pipe gave more than {_mb(PIPE_LIMIT_BYTES)} (a pipe cannot be sized "
                             "in advance, so that is where reading stops); save it to a file and pass the file")
    return copy


class _Bounded:
    """A reader that stops after `limit` bytes (so a pipe that never ends still costs bounded disk)."""

    def __init__(self, source, limit: int):
        self.source, self.left = source, limit

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.source.read(size) if size > 0 else b""
        self.left -= len(data)
        return data


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1024 / 1024:.1f} MB"


def _generate(args) -> int:
    """Settings (the same in every process: said by the launch's rank 0), then, in a context-parallel group, what
    each process reads or decides on its own machine, in agreement (`fantasy.app.group_loading`,
    `fantasy.speed.group`): a fault in any process stops all of them, said once."""
    from fantasy.app.group_loading import load_in_group
    from fantasy.generation import generate, prepare_inputs
    from fantasy.long_video import plan_windows
    from fantasy.media.image import load_portrait
    from fantasy.media.output import check_target, printable
    from fantasy.model.pipeline import DEFAULT_NEGATIVE_PROMPT
    from fantasy.progress import ConsoleProgress
    from fantasy.release import RELEASE_DIT
    from fantasy.settings import Settings
    from fantasy.speed.group import agreed, init_processes, is_leader, leader_check
    from fantasy.speed.layout import SHARDED, check_token_split, video_tokens
    from fantasy.weights.presets import get_preset

    chosen, said = preset_option(args, args.comfy_models)
    notes = [said] if said else []  # the notes are said once every check has passed
    preset = get_preset(chosen)
    speed = speed_options(args)
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
    vram = args.vram if preset.name == "real" or args.vram == SHARDED else "resident"  # tiny: only `sharded` counts
    parallel = parallel_option(args, vram=vram, heads=preset.dit_heads)
    device = args.device
    if parallel is not None:
        device = init_processes(args.device, parallel.timeout_s)  # from here on, every fault is said once
    if preset.name == "real" and parallel is None:  # no GPU: say so before the inputs are read and checked
        from fantasy.weights.real import resolve_device

        resolve_device(device)
    leader = is_leader()  # under context parallelism only rank 0 prints and writes
    say = (lambda text: print(text, file=sys.stderr)) if leader else (lambda text: None)

    def read_inputs():
        portrait = load_portrait(args.image)
        inputs = prepare_inputs(portrait, args.audio, settings)  # the speech is decoded once, up to the limit
        face_note = None
        if not args.no_face_check:
            from fantasy.app.validation import check_face, default_face_check

            face_note = check_face(portrait, default_face_check(allow_download=False))
        face = load_portrait(args.face) if args.face is not None else None
        return inputs, face_note, face

    inputs, face_note, face = agreed(read_inputs, "reading the inputs")
    notes.append(face_note)
    if parallel is not None:  # sizes diffusers' even split cannot cut, for layouts without its uneven one
        width, height = inputs.portrait.size
        windows = plan_windows(inputs.num_frames, settings.max_frames)
        check_token_split(parallel, [video_tokens(width, height, w.length) for w in windows], compiled=speed.compile)
    preview = _live_preview(args.preview, args.fps) if leader else None
    # only rank 0 writes: it checks the target, and every process stops alike when that fails
    leader_check(lambda: check_target(args.out, 2 * inputs.output_bytes(settings.fps)))
    for line in [n for n in notes if n] + [f"note: {notice}" for notice in inputs.notices]:
        say(line)
    if preset.demo:
        say(f"[{preset.name}] {preset.summary}")
    started = time.perf_counter()
    dit = args.dit or (RELEASE_DIT if args.release else None)  # None: picked from free VRAM (docs/weights.md)
    real = {"dit": dit, "vram": args.vram, "weights": args.weights, "fit_size": settings.longest_edge,
            "fit_frames": settings.max_frames, "fit_batch": 3 if speed.batch_guidance else 1, "comfy_models": comfy}

    def with_loras(pipe) -> None:
        from fantasy.weights.loras import load_loras

        for applied in load_loras(pipe, loras, fuse=speed.fuse_lora, states=lora_states):
            say(f"  {applied}")

    pipe, lines = load_in_group(preset, device, args.adapter, real if preset.name == "real" else None, speed,
                                parallel, before_speed=with_loras)
    for line in lines:
        say(f"  speed: {line}")
    if args.expression is not None or args.body is not None:
        from fantasy.app.sliders import motion_controls

        expression = 0.5 if args.expression is None else args.expression
        body = 0.5 if args.body is None else args.body
        settings, _ = motion_controls(expression, body, settings, trained=pipe.motion_context is not None)
    loaded = time.perf_counter() - started
    out = args.out if leader else None
    with ConsoleProgress() if leader else _Silent() as progress:
        result = generate(pipe, args.image, args.audio, out, settings, preset, progress=progress, face_image=face,
                          inputs=inputs, preview=preview)
    if not leader:
        return 0
    if result.speech_cut and result.release:
        say(f"note: --release animates one clip, the first {result.num_frames / result.fps:.2f} s of the speech "
            f"({result.speech_seconds:.1f} s), as the release does")
    elif result.speech_cut:
        say(f"note: the speech ({result.speech_seconds:.1f} s) was cut at the maximum duration "
            f"({settings.max_duration:g} s); raise --max-duration to animate more")
    print(
        f"wrote {printable(result.path)} ({result.num_frames} frames, {result.width}x{result.height} @ {result.fps} "
        f"fps, {result.num_frames / result.fps:.2f} s, {result.windows} window{'s' * (result.windows > 1)}) "
        f"in {result.seconds_taken:.1f} s (+{loaded:.1f} s loading), "
        f"{settings.steps} steps x {result.passes_per_step} passes; motion: {result.motion_mode}"
        + (f"; DiT: {pipe.dit_choice.describe()}" if getattr(pipe, "dit_choice", None) is not None else "")
        + ("; release mode" if result.release else ""),
        flush=True,
    )
    return 0


class _Silent:
    """The progress display of the processes that do not print (context parallelism's other ranks)."""

    def __call__(self, event) -> None:
        return None

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *_exc) -> None:
        return None


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


def _live_preview(path: str | None, fps: int):
    """`--preview PATH` (checked by `_check_preview`) -> a `LivePreview` writing the latest estimate there."""
    if path is None:
        return None
    from fantasy.model.preview import LivePreview, PreviewFile

    return LivePreview(PreviewFile(Path(path), fps))
