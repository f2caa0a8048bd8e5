"""The command-line flags `python -m fantasy generate`, `app.py`, `serve` and `bench` share, and what they become.

Flags only: each `add_*` puts a group on a parser, and `speed_options` / `parallel_option` turn the parsed
values into options, checking them before any model loads. The modules they name are imported when a
parser is built, not when this module is.
"""

from __future__ import annotations


def add_real_flags(p) -> None:
    """--dit and --vram: how the real preset stores the DiT and where its models live."""
    from fantasy.weights.offload import VRAM_MODES
    from fantasy.weights.quantize import DIT_MODES

    p.add_argument("--dit", default=None, choices=list(DIT_MODES),
                   help="real preset: how the 14B DiT is stored (default: bf16 if it fits in free GPU memory at the "
                        "requested size, else q8_0; see docs/weights.md)")
    p.add_argument("--vram", default="resident", choices=list(VRAM_MODES), help="real preset: offloading")


def add_speed_flags(p) -> None:
    from fantasy.model.precision import DEFAULT_PRECISION, PRECISIONS
    from fantasy.speed.switches import ATTENTION_ALIASES, DEFAULT_CACHE_THRESHOLD

    g = p.add_argument_group("speed", "fast paths (see docs/speed.md); all off is the release's path")
    g.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS),
                   help="DiT numerics: mixed = the release's (fp32 timestep embedding, residual stream and head); "
                        "stock = diffusers' all-bf16 (less activation memory; see docs/numerics.md)")
    g.add_argument("--batch-guidance", action="store_true",
                   help="run the 3 guidance passes as one batch (same result, faster on a GPU with memory to spare)")
    g.add_argument("--attention", default=None, metavar="NAME",
                   help=f"attention backend: {', '.join(ATTENTION_ALIASES)} or a diffusers backend name "
                        "(default: diffusers' own, torch SDPA); GPU kernels need their package")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the repeated DiT blocks (regional; the first step compiles)")
    g.add_argument("--fp8-linears", action="store_true",
                   help="fp8 matmuls in the DiT blocks (torchao; --dit bf16 on a GPU with compute capability >= 8.9)")
    g.add_argument("--step-cache", default=None, metavar="fbc[:THRESH]",
                   help=f"FirstBlockCache: reuse the other blocks' result while the first block's output barely "
                        f"changes (threshold default {DEFAULT_CACHE_THRESHOLD}; higher = faster, less exact)")
    g.add_argument("--fast", default=None, metavar="LORA",
                   help="few-step mode with a lightx2v step/CFG-distilled Wan2.1-I2V-14B LoRA (.safetensors): "
                        "4 steps, text and audio guidance 1 (1 pass per step) unless set")
    g.add_argument("--lora-scale", type=float, default=1.0, help="--fast: the LoRA's strength (default 1)")
    g.add_argument("--no-fuse-lora", action="store_true",
                   help="--fast: keep the LoRA as separate layers instead of folding it into the weights")


def add_parallel_flags(p) -> None:
    from fantasy.speed.layout import KINDS, TIMEOUT_S

    g = p.add_argument_group("several GPUs", "one video split over N processes (see docs/several-gpus.md)")
    g.add_argument("--context-parallel", type=int, default=None, metavar="N",
                   help="split the DiT's video tokens over N processes; launch with `torchrun --nproc_per_node N`")
    g.add_argument("--context-parallel-kind", default="ulysses", choices=list(KINDS),
                   help="ulysses (all-to-all, any backend) or ring (needs --attention flash/cudnn/sage on GPUs)")
    g.add_argument("--ulysses-degree", type=int, default=None, metavar="U",
                   help="Ulysses over U of the N processes x rings over N/U (e.g. 16 GPUs: --ulysses-degree 8; "
                        "the ring part needs --attention flash/cudnn/sage)")
    g.add_argument("--collective-timeout", type=float, default=TIMEOUT_S, metavar="SECONDS",
                   help=f"how long a process waits for the others in a collective before the group stops with an "
                        f"error (default {TIMEOUT_S:g})")


def parallel_option(args, vram: str = "resident", heads: int | None = None):
    """`ContextParallel` from the flags (None without them), every refusal checked before any model loads.

    `vram`: the VRAM mode (`sharded` shards the weights over the group); `heads`: the DiT's attention heads."""
    from fantasy.errors import InvalidSetting
    from fantasy.speed.layout import SHARDED, ContextParallel, check_context_parallel
    from fantasy.speed.switches import attention_backend_name

    if args.context_parallel is None:
        if vram == SHARDED:
            raise InvalidSetting("--vram sharded splits the weights over a context-parallel group: add "
                                 "--context-parallel N and launch N processes with torchrun")
        if args.ulysses_degree is not None:
            raise InvalidSetting("--ulysses-degree needs --context-parallel N")
        return None
    parallel = ContextParallel(args.context_parallel, args.context_parallel_kind, ulysses_degree=args.ulysses_degree,
                               shard_weights=vram == SHARDED, timeout_s=args.collective_timeout)
    backend = attention_backend_name(args.attention) if args.attention else None
    check_context_parallel(parallel, attention=backend, vram=vram, device=getattr(args, "device", None), heads=heads)
    return parallel


def speed_options(args):
    """`SpeedOptions` from the flags; spelling errors are caught here, before any model loads."""
    from fantasy.speed.switches import (
        DEFAULT_CACHE_THRESHOLD,
        SpeedOptions,
        attention_backend_name,
        parse_step_cache,
    )

    kind, threshold = parse_step_cache(args.step_cache) if args.step_cache else (None, DEFAULT_CACHE_THRESHOLD)
    if args.attention:
        attention_backend_name(args.attention)
    return SpeedOptions(
        batch_guidance=args.batch_guidance, attention=args.attention, compile=args.compile,
        fp8_linears=args.fp8_linears, step_cache=kind, cache_threshold=threshold, distilled_lora=args.fast,
        lora_scale=args.lora_scale, fuse_lora=not args.no_fuse_lora, precision=args.precision,
    )


def guidance_defaults(args) -> tuple[int | None, float, float]:
    """(steps, text guidance, audio guidance): the user's values, else the release's or the few-step mode's."""
    from fantasy.settings import Settings
    from fantasy.speed.distill import FEW_STEP_AUDIO_GUIDANCE, FEW_STEP_TEXT_GUIDANCE, FEW_STEPS

    plain = Settings()
    steps = FEW_STEPS if args.fast else plain.steps
    text = FEW_STEP_TEXT_GUIDANCE if args.fast else plain.text_guidance
    audio = FEW_STEP_AUDIO_GUIDANCE if args.fast else plain.audio_guidance
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return pick(args.steps, steps), pick(args.text_guidance, text), pick(args.audio_guidance, audio)
