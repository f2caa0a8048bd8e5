"""`fantasy bench`: time the pipeline (`--gpu`: the full-size DiT, encoders and VAE; `--cpu`: the tiny run)."""

from __future__ import annotations

from fantasy.app.flags import add_speed_flags, guidance_defaults, speed_options
from fantasy.errors import InvalidSetting


def add_parser(sub) -> None:
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
    p.set_defaults(run=run)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        raise InvalidSetting(f"sizes are WIDTHxHEIGHT, e.g. 832x480; got '{text}'") from None
    if min(size) < 16 or size[0] % 16 or size[1] % 16:
        raise InvalidSetting(f"size sides must be multiples of 16, got '{text}'")
    return size


def run(args) -> int:
    import torch

    speed = speed_options(args)
    gpu = args.gpu or (not args.cpu and (args.tiny or torch.cuda.is_available()))
    if args.tiny and not gpu:
        raise InvalidSetting("--tiny is the GPU benchmark's dry run; use it with --gpu (or alone)")
    if gpu:
        from fantasy.bench.gpu_speed import GpuBenchConfig, format_gpu_report, run_gpu_bench

        config = GpuBenchConfig(
            tiny=args.tiny, sizes=[_size(s) for s in args.sizes] if args.sizes else None, frames=args.frames,
            steps=args.steps or 30, warmup=args.warmup, repeat=args.repeat, peak_tflops=args.peak_tflops,
            peak_fp8_tflops=args.peak_fp8_tflops, pieces=not args.no_pieces, speed=speed,
        )
        report = run_gpu_bench(config)
        text = format_gpu_report(report)
    else:
        from fantasy.bench.cpu_run import CpuBenchConfig, format_cpu_report, run_cpu_bench

        steps, text_guidance, audio_guidance = guidance_defaults(args)
        report = run_cpu_bench(CpuBenchConfig(
            steps=steps, size=args.size, max_duration=args.max_duration, text_guidance=text_guidance,
            audio_guidance=audio_guidance, speed=speed,
        ))
        text = format_cpu_report(report)
    print(text)
    if args.json:
        from fantasy.bench.report import write_json

        print(f"wrote {write_json(args.json, report)}")
    return 0
