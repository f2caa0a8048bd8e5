"""The command-line flags `fantasy generate`, `batch`, the app, `serve` and `bench` share, and what they become.

Flags only: each `add_*` puts a group on a parser, and `speed_options` / `parallel_option` / `preset_option` turn
the parsed values into options, checking them before any model loads. Building a parser imports nothing heavy:
the choices and defaults below are the names a user types, spelled out here so that `--help` and argument errors
answer before torch loads; tests/test_cli_parser.py keeps each equal to the module that implements it (named
beside it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

PRESET_NAMES = ("tiny", "real")  # fantasy.weights.presets.PRESETS
DIT_MODES = ("q8_0", "q4_k_m", "bf16", "bf16-int8", "bf16-fp8", "bf16-fp8-storage")  # fantasy.weights.quantize
VRAM_MODES = ("resident", "model-offload", "group-offload", "sharded")  # fantasy.weights.offload.VRAM_MODES
PRECISIONS = ("mixed", "stock")  # fantasy.model.precision.PRECISIONS
DEFAULT_PRECISION = "mixed"  # fantasy.model.precision.DEFAULT_PRECISION
ATTENTION_ALIASES = ("sdpa", "math", "cudnn", "flash-sdpa", "efficient", "flash", "flash3", "sage",
                     "xformers")  # fantasy.speed.switches.ATTENTION_ALIASES
DEFAULT_CACHE_THRESHOLD = 0.05  # fantasy.speed.switches.DEFAULT_CACHE_THRESHOLD
PARALLEL_KINDS = ("ulysses", "ring")  # fantasy.speed.layout.KINDS
COLLECTIVE_TIMEOUT_S = 600.0  # fantasy.speed.layout.TIMEOUT_S
DEFAULT_SEED = 1111  # fantasy.settings.DEFAULT_SEED
RELEASE_PROMPT = "A woman is talking."  # fantasy.release.RELEASE_PROMPT
LORA_ENV = "FANTASY_LORA"  # fantasy.weights.loras.LORA_ENV

ENV_PREFIX = "FANTASY_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def env_variable(action) -> str:
    """The environment variable of a flag: `--step-cache` -> `FANTASY_STEP_CACHE`."""
    flag = next(o for o in action.option_strings if o.startswith("--"))
    return ENV_PREFIX + flag[2:].upper().replace("-", "_")


def defaults_from_environment(actions: Iterable, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each flag's default from its `FANTASY_<FLAG>` variable when set (not empty); a flag given on the command
    line still wins. A Space has no command line: this is how its owner sets `--fast`, `--dit`, ... (in the
    Space's settings, "Variables"). Switches take 1/0 (true/false, yes/no, on/off). Returns the variables used;
    a bad value is an `InvalidSetting` naming the variable, before any model loads."""
    from fantasy.errors import InvalidSetting

    environ = os.environ if environ is None else environ
    used = {}
    for action in actions:
        name = env_variable(action)
        value = environ.get(name, "").strip()
        if not value:
            continue
        if action.nargs == 0:  # a switch (store_true)
            if value.lower() not in _TRUE | _FALSE:
                raise InvalidSetting(f"{name}={value}: a switch takes 1 or 0 (true or false)")
            action.default = value.lower() in _TRUE
        else:
            try:
                converted = action.type(value) if action.type is not None else value
            except (TypeError, ValueError):
                kind = getattr(action.type, "__name__", "value")
                raise InvalidSetting(f"{name}={value}: not a valid {kind}") from None
            if action.choices is not None and converted not in action.choices:
                raise InvalidSetting(f"{name}={value}: choose one of {', '.join(map(str, action.choices))}")
            action.default = converted
        used[name] = value
    return used


def add_setting_flags(p, note: str = "") -> None:
    """The settings of one generation (`fantasy.settings.Settings`), the motion sliders included; `note` ends
    each help text (batch: "; a row's column overrides it")."""
    from fantasy.model.prompts import DEFAULT_PROMPT  # plain strings: imports nothing

    p.add_argument("--prompt", default=None, help=f"default: '{DEFAULT_PROMPT}' ('{RELEASE_PROMPT}' with --release){note}")
    p.add_argument("--negative-prompt", default=None, help=f"default: Wan's negative prompt + 'motionless'{note}")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"default {DEFAULT_SEED}{note}")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (preset default: 30; --fast: 4){note}")
    p.add_argument("--text-guidance", type=float, default=None, help=f"default 5 (--fast: 1){note}")
    p.add_argument("--audio-guidance", type=float, default=None,
                   help=f"default 5 (--fast: 1; 2 adds a pass per step){note}")
    p.add_argument("--audio-weight", type=float, default=1.0, help=f"default 1{note}")
    p.add_argument("--fps", type=int, default=23, help=f"default 23{note}")
    p.add_argument("--max-frames", type=int, default=81, help=f"frames per window; default 81, the release's clip{note}")
    p.add_argument("--max-duration", type=float, default=10.0,
                   help=f"seconds of speech to animate; longer speech is cut (default 10){note}")
    p.add_argument("--size", type=int, default=None,
                   help=f"longest edge in px, multiple of 16 (tiny: 128, real: 512){note}")
    p.add_argument("--expression", type=float, default=None,
                   help=f"expression intensity 0-1 (the app's slider; trained motion module or training-free mapping){note}")
    p.add_argument("--body", type=float, default=None, help=f"body-motion intensity 0-1 (the app's slider){note}")


def add_model_flags(p) -> None:
    """Which models: --preset, --adapter, --device, --weights and the real preset's storage (`add_real_flags`)."""
    p.add_argument("--preset", default="auto", choices=("auto", *PRESET_NAMES),
                   help="auto: real with a CUDA GPU and complete weights, else tiny (random models: output is noise)")
    p.add_argument("--adapter", default=None,
                   help="adapter weights (.safetensors or the released .ckpt), or a training checkpoint "
                        "(`fantasy train`: also loads its motion / identity modules)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add_real_flags(p)
    p.add_argument("--weights", default=None,
                   help="real preset: weights dir (default $FANTASY_WEIGHTS, else weights/ of a checkout, else "
                        "~/.cache/fantasy-talking-studio/weights)")


def add_real_flags(p) -> list:
    """--dit, --vram and --comfy-models: how the real preset stores the DiT, where its models live and which
    ComfyUI folder supplies files (returns their actions; --comfy-models reads its own variable)."""
    from fantasy.weights.comfy_folder import COMFY_ENV  # plain names: imports nothing heavy

    return [
        p.add_argument("--dit", default=None, choices=DIT_MODES,
                       help="real preset: how the 14B DiT is stored (default: bf16 if it fits in free GPU memory at "
                            "the requested size, else q8_0; see docs/weights.md)"),
        p.add_argument("--vram", default="resident", choices=VRAM_MODES, help="real preset: offloading"),
        p.add_argument("--comfy-models", default=None, metavar="DIR",
                       help=f"real preset: a ComfyUI models folder (or ComfyUI's own folder); its Wan2.1 files (DiT, "
                            f"umT5, clip_vision_h, VAE; bf16/fp16/fp8/scaled fp8) are used instead of downloading "
                            f"them (default ${COMFY_ENV}; see docs/comfyui.md)"),
    ]


def comfy_option(args, preset: str):
    """The ComfyUI folder from --comfy-models / $FANTASY_COMFY_MODELS (checked now), or None; only the real preset
    reads weight files."""
    from fantasy.errors import InvalidSetting
    from fantasy.weights.comfy_folder import comfy_models_dir

    given = getattr(args, "comfy_models", None)
    if preset != "real":
        if given is not None:
            raise InvalidSetting("--comfy-models reads the real model's files: use it with --preset real")
        return None
    return comfy_models_dir(given)


def add_lora_flags(p) -> None:
    p.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help=f"a Wan2.1 I2V 14B LoRA (.safetensors: ComfyUI/kijai, musubi or diffusers keys), at SCALE "
                        f"(default 1, -4..4); repeat for several; fused unless --no-fuse-lora (default ${LORA_ENV}, "
                        f"comma-separated; see docs/lora.md)")


def lora_option(args):
    """(LoRA specs, their converted tensors) from --lora or $FANTASY_LORA: every file checked before any model
    loads (`fantasy.weights.loras.read_loras`)."""
    from fantasy.errors import InvalidSetting
    from fantasy.weights.loras import chosen_loras, read_loras

    specs = chosen_loras(getattr(args, "lora", None))
    if specs and getattr(args, "fp8_linears", False) and getattr(args, "no_fuse_lora", False):
        raise InvalidSetting("fp8 linears need the LoRAs fused (drop --no-fuse-lora)")
    return specs, read_loras(specs)


def add_speed_flags(p) -> list:
    """The speed group (returns its actions)."""
    g = p.add_argument_group("speed", "fast paths (see docs/speed.md); all off is the release's path")
    actions: list = []

    def add(*names, **options):
        actions.append(g.add_argument(*names, **options))

    add("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS,
        help="DiT numerics: mixed = the release's (fp32 timestep embedding, residual stream and head); "
             "stock = diffusers' all-bf16 (less activation memory; see docs/numerics.md)")
    add("--batch-guidance", action="store_true",
        help="run the 3 guidance passes as one batch (same result, faster on a GPU with memory to spare)")
    add("--attention", default=None, metavar="NAME",
        help=f"attention backend: {', '.join(ATTENTION_ALIASES)} or a diffusers backend name "
             "(default: diffusers' own, torch SDPA); GPU kernels need their package")
    add("--compile", action="store_true",
        help="torch.compile the repeated DiT blocks (regional; the first step compiles)")
    add("--fp8-linears", action="store_true",
        help="fp8 matmuls in the DiT blocks (torchao; --dit bf16 on a GPU with compute capability >= 8.9)")
    add("--step-cache", default=None, metavar="fbc[:THRESH]",
        help=f"FirstBlockCache: reuse the other blocks' result while the first block's output barely "
             f"changes (threshold default {DEFAULT_CACHE_THRESHOLD}; higher = faster, less exact)")
    add("--fast", default=None, metavar="LORA",
        help="few-step mode with a lightx2v step/CFG-distilled Wan2.1-I2V-14B LoRA (.safetensors): "
             "4 steps, text and audio guidance 1 (1 pass per step) unless set")
    add("--lora-scale", type=float, default=1.0, help="--fast: the LoRA's strength (default 1)")
    add("--no-fuse-lora", action="store_true",
        help="--fast and --lora: keep LoRAs as separate layers instead of folding them into the weights")
    return actions


def add_parallel_flags(p) -> list:
    g = p.add_argument_group("several GPUs", "one video split over N processes (see docs/several-gpus.md)")
    return [
        g.add_argument("--context-parallel", type=int, default=None, metavar="N",
                       help="split the DiT's video tokens over N processes; launch with `torchrun --nproc_per_node N`"),
        g.add_argument("--context-parallel-kind", default="ulysses", choices=PARALLEL_KINDS,
                       help="ulysses (all-to-all, any backend) or ring (needs --attention flash/cudnn/sage on GPUs)"),
        g.add_argument("--ulysses-degree", type=int, default=None, metavar="U",
                       help="Ulysses over U of the N processes x rings over N/U (e.g. 16 GPUs: --ulysses-degree 8; "
                            "the ring part needs --attention flash/cudnn/sage)"),
        g.add_argument("--collective-timeout", type=float, default=COLLECTIVE_TIMEOUT_S, metavar="SECONDS",
                       help=f"how long a process waits for the others in a collective before the group stops with "
                            f"an error (default {COLLECTIVE_TIMEOUT_S:g})"),
    ]


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


def preset_option(args, comfy_models: str | None = None) -> tuple[str, str | None]:
    """(preset name, a line saying what `--preset auto` chose and why, or None): `auto` is decided by
    `fantasy.app.launch.auto_preset`, the app's rule."""
    if args.preset != "auto":
        return args.preset, None
    from fantasy.app.launch import auto_preset

    name, why = auto_preset(args.adapter, args.weights, comfy_models)
    return name, f"preset auto: {name} ({why})"
