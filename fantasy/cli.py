"""`python -m fantasy ...`: generate, convert adapter weights, download weights, eval, train, serve, bench.

Each command lives with its layer and is mounted here (`fantasy.app.generate_command`, `fantasy.weights.command`,
`fantasy.metrics.command`, `fantasy.train.command`, `fantasy.app.serve`); the benchmarks are in `bench/`.
User errors (`FantasyError`) print one clear line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from fantasy.app.flags import add_speed_flags, guidance_defaults, speed_options
from fantasy.errors import FantasyError, InvalidSetting


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

            steps, text_guidance, audio_guidance = guidance_defaults(args)
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
    from fantasy.app.generate_command import add_parser as add_generate
    from fantasy.app.serve import add_parser as add_serve
    from fantasy.metrics.command import add_parser as add_eval
    from fantasy.train.command import add_parser as add_train
    from fantasy.weights.command import add_parsers as add_weights

    add_generate(sub)
    add_weights(sub)
    _add_bench(sub)
    add_eval(sub)
    add_train(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error prints `error: ...` (status 2); SIGINT, SIGTERM or SIGHUP stop the command,
    remove its temporary files and print one line (status 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM)."""
    from fantasy import quiet  # noqa: F401  (drops known third-party import noise before those imports run)
    from fantasy.app import generate_command
    from fantasy.stop import StopRequested, stop_on_signals

    args = None
    try:
        with stop_on_signals():
            args = build_parser().parse_args(argv)  # builds the generate parser: imports torch and diffusers
            return args.run(args)
    except FantasyError as exc:
        _say_error(exc)
        return 2
    except StopRequested as stop:
        group = sys.modules.get("fantasy.speed.group")
        if group is not None and (not group.is_leader() or group.failure_reported()):
            return stop.exit_status  # the group stops alike: rank 0 says it, unless a failure (the reason) was said
        if stop.written:
            print(f"stopped ({stop}), {stop.written} was already complete", file=sys.stderr)
        elif args is None or args.run is generate_command.run:  # generate writes its video only once it is complete
            print(f"stopped ({stop}), nothing written", file=sys.stderr)
        else:
            print(f"stopped ({stop})", file=sys.stderr)
        return stop.exit_status
    except Exception as exc:
        group = sys.modules.get("fantasy.speed.group")
        if group is None or not group.in_group():
            raise
        group.print_failure(exc)  # a device fault on one rank, a peer that left, a timeout: one line, said once
        return 1
    finally:
        if "fantasy.speed.group" in sys.modules:
            sys.modules["fantasy.speed.group"].leave_processes()


def _say_error(exc: FantasyError) -> None:
    """`error: ...`; in a process group once for the group (`fantasy.speed.group.print_failure`)."""
    group = sys.modules.get("fantasy.speed.group")  # imported only when a command uses processes
    if group is None:
        print(f"error: {exc}", file=sys.stderr)
    else:
        group.print_failure(exc)
