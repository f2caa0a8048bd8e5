"""`python -m fantasy bench --gpu`: the full I2V-14B DiT + adapter, the encoders and the VAE, timed on one GPU.

Everything is built with random weights directly on the GPU (`fantasy.bench.models`), and timed through the
pipeline's own code: `guided_velocity` for a whole guidance step (the 3 passes full / text / uncond,
or one batch with --batch-guidance), `encode_image_tokens`, `project_audio`, `prepare_condition` (VAE
encode of the 81-frame condition video) and `decode_frames` (progressive VAE decode). Speed switches
go through `fantasy.speed.switches.apply_speed`, as in a real run.

Per size it reports s/step, s/pass (one audio-on pass alone), peak GiB (weights included) and the
fraction of the floor: FLOPs from the config and token counts (`fantasy.bench.flops`) at the GPU's dense
peak, over the measured time. A clip estimate adds the measured parts: encoders + condition encode +
steps x s/step + decode; the few-step estimate uses 4 x s/pass.

The step cache and the few-step LoRA are not timed here: with random weights a cache's hit rate means
nothing, and a fused LoRA costs nothing per step. `--tiny` runs the same code on a tiny config
(on a CPU without a GPU): that is what the tests exercise.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image

from fantasy.bench.flops import pass_flops, peak_tflops, video_tokens
from fantasy.bench.models import (
    ENCODER_DTYPES,
    FPS,
    FULL,
    TINY,
    build_dit,
    built_on,
    dit_inputs,
    full_encoders,
    memory_gib,
    reset_peak,
    sync,
    tiny_encoders,
)
from fantasy.bench.report import environment, table
from fantasy.errors import InvalidSetting
from fantasy.speed.switches import SpeedOptions

TARGETS = ("issue-7 targets, one H100 at 512x512x81: <= 4.5 s/step bf16, <= 3 s/step fp8 + fast attention, "
           "clip <= 120 s (<= 60 s with the step cache), few-step clip <= 15 s, peak <= 40 GB with a quantized DiT")


@dataclass
class GpuBenchConfig:
    tiny: bool = False
    sizes: list[tuple[int, int]] | None = None  # (width, height); None: 512x512 and 832x480
    frames: int | None = None  # None: 81 (tiny: 9)
    steps: int = 30  # for the clip estimate
    few_steps: int = 4
    warmup: int = 1
    repeat: int = 3
    peak_tflops: float | None = None  # bf16 dense peak, overrides the device table
    peak_fp8_tflops: float | None = None  # with peak_tflops; None: twice the bf16 peak (as on Ada/Hopper)
    pieces: bool = True  # time encoders and VAE too
    speed: SpeedOptions = field(default_factory=SpeedOptions)


@dataclass
class StepRow:
    size: str
    tokens: int
    step_s: float | None = None
    pass_s: float | None = None
    weights_gib: float | None = None
    peak_gib: float | None = None
    floor_step_s: float | None = None
    floor_fraction: float | None = None
    pflop_per_pass: float | None = None
    error: str | None = None


@dataclass
class PieceRow:
    key: str  # text | image | audio | vae_encode | vae_decode
    name: str
    seconds: float | None = None
    peak_gib: float | None = None
    error: str | None = None


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeat: int) -> float:
    """Mean seconds of `fn` over `repeat` runs after `warmup` untimed ones (synchronised on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeat


def _error(exc: Exception) -> str:
    first = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bare_pipeline(**components):
    """A `FantasyTalkingPipeline` holding only the given models: its methods are what a real run calls."""
    from fantasy.model.pipeline import FantasyTalkingPipeline

    names = ["tokenizer", "text_encoder", "vae", "scheduler", "image_encoder", "transformer", "audio_encoder",
             "feature_extractor", "audio_proj"]
    pipe = FantasyTalkingPipeline(**{name: components.get(name) for name in names})
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- encoders and VAE -------------------------------------------------------------------------------


def time_pieces(spec: dict, device: torch.device, dtype: torch.dtype, width: int, height: int, frames: int,
                warmup: int, repeat: int) -> list[PieceRow]:
    """umT5 (prompt + negative), CLIP, wav2vec2 + projection, VAE encode of the condition, VAE decode."""
    from transformers import Wav2Vec2FeatureExtractor

    from fantasy.weights.real import enable_vae_tiling

    builders = tiny_encoders() if spec is TINY else full_encoders()
    models = {name: built_on(device, ENCODER_DTYPES[name] or dtype, build) for name, build in builders.items()}
    enable_vae_tiling(models["vae"])
    pipe = bare_pipeline(**models, feature_extractor=Wav2Vec2FeatureExtractor())
    text_encoder = models["text_encoder"]
    ids = torch.randint(0, text_encoder.config.vocab_size, (1, 512), device=device)
    mask = torch.ones_like(ids)
    portrait = Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))
    samples = np.random.default_rng(1).standard_normal(int(frames / FPS * 16_000)).astype(np.float32) * 0.1
    first_frame = torch.rand(1, 3, 1, height, width) * 2 - 1
    latent_frames = (frames - 1) // 4 + 1
    latents = torch.randn(1, models["vae"].config.z_dim, latent_frames, height // 8, width // 8)

    pieces: list[tuple[str, str, Callable[[], object]]] = [
        ("text", "umT5 x2 (prompt, negative)",
         lambda: [text_encoder(input_ids=ids, attention_mask=mask) for _ in range(2)]),
        ("image", "CLIP image tokens", lambda: pipe.encode_image_tokens(portrait)),
        ("audio", "wav2vec2 + audio projection", lambda: pipe.project_audio(samples)),
        ("vae_encode", f"VAE encode (condition, {frames} frames)", lambda: pipe.prepare_condition(first_frame, frames)),
        ("vae_decode", f"VAE decode ({frames} frames)", lambda: sum(len(f) for f in pipe.decode_frames(latents))),
        ("preview", "live preview: x0 -> RGB frames on the host (per preview)", _preview_fn(latents, device)),
    ]
    rows = []
    with torch.no_grad():
        for key, name, fn in pieces:
            row = PieceRow(key, name)
            try:
                reset_peak(device)
                row.seconds = timed(fn, device, warmup, repeat)
                row.peak_gib = memory_gib(device, True)
            except Exception as exc:  # e.g. out of memory: report it, time the rest
                row.error = _error(exc)
            rows.append(row)
    return rows  # the models go with this frame; the caller frees the memory


def _preview_fn(latents: torch.Tensor, device: torch.device) -> Callable[[], object]:
    """One live preview as the denoising thread makes it (`fantasy.model.preview`), on latents already on the GPU."""
    from fantasy.model.preview import LatentRGB, clean_estimate

    on_device, velocity, rgb = latents.to(device), torch.randn_like(latents).to(device), LatentRGB()
    return lambda: rgb(clean_estimate(on_device, velocity, 0.5))


# ---- the DiT ----------------------------------------------------------------------------------------


def step_floor(spec: dict, tokens: int, latent_frames: int, window: int, passes: int,
               peaks: tuple[float, float | None] | None, fp8: bool) -> tuple[float, float | None]:
    """(PFLOP of the audio-on pass, floor seconds of one step: the audio-on pass + the audio-off ones)."""
    config = spec["config"]
    full = pass_flops(config, tokens, spec["text_tokens"], spec["image_tokens"],
                      (latent_frames, window, spec["context_dim"]))
    off = pass_flops(config, tokens, spec["text_tokens"], spec["image_tokens"])
    if peaks is None:
        return full.total / 1e15, None
    bf16, fp8_peak = peaks
    rate = fp8_peak if fp8 else None
    return full.total / 1e15, full.floor_seconds(bf16, rate) + (passes - 1) * off.floor_seconds(bf16, rate)


def time_dit(spec: dict, device: torch.device, dtype: torch.dtype, config: GpuBenchConfig,
             peaks: tuple[float, float | None] | None) -> tuple[list[StepRow], list[str]]:
    """Build the DiT once, apply the switches, then time a whole step and a single pass per size."""
    from fantasy.speed.switches import apply_speed, reset_attention

    model, audio = build_dit(spec, device, dtype)
    pipe = bare_pipeline(transformer=model)
    pipe.audio_context = audio
    try:
        applied = apply_speed(pipe, config.speed)
        rows = [_time_size(pipe, spec, device, dtype, config, peaks, width, height)
                for width, height in config.sizes or spec["sizes"]]
    finally:
        if config.speed.attention:  # the dispatcher's active backend is process-wide
            reset_attention(model)
    return rows, applied


def _time_size(pipe, spec: dict, device: torch.device, dtype: torch.dtype, config: GpuBenchConfig,
               peaks: tuple[float, float | None] | None, width: int, height: int) -> StepRow:
    frames = config.frames or spec["frames"]
    tokens = video_tokens(spec["config"], frames, width, height)
    row = StepRow(f"{width}x{height}x{frames}", tokens, weights_gib=memory_gib(device, False))
    try:
        x = dit_inputs(spec, device, dtype, width, height, frames)
        args = (x["latents"], x["timestep"], x["text"], x["negative"], x["image"], x["windows"], x["lengths"])

        def step():
            pipe.guided_velocity(*args, 5.0, 5.0, 1.0)

        def one_pass():
            pipe.guided_velocity(*args, 1.0, 1.0, 1.0)  # guidance 1: the audio-on pass alone

        with torch.no_grad():
            reset_peak(device)
            row.step_s = timed(step, device, config.warmup, config.repeat)
            row.peak_gib = memory_gib(device, True)
            row.pass_s = timed(one_pass, device, config.warmup, config.repeat)
        row.pflop_per_pass, row.floor_step_s = step_floor(
            spec, tokens, x["windows"].shape[1], x["windows"].shape[2], 3, peaks, config.speed.fp8_linears)
        if row.floor_step_s is not None:
            row.floor_fraction = row.floor_step_s / row.step_s
    except Exception as exc:  # e.g. out of memory at the larger size: report it, keep the others
        row.error = _error(exc)
    finally:
        _free(device)
    return row


# ---- the whole run ----------------------------------------------------------------------------------


def estimates(rows: list[StepRow], pieces: list[PieceRow], config: GpuBenchConfig) -> dict:
    """Whole-clip seconds at the first size, summed from measured parts (None when a part is missing)."""
    row = rows[0] if rows else None
    times = {p.key: p.seconds for p in pieces}
    if row is None or row.step_s is None or not times or any(t is None for t in times.values()):
        return {}
    text_two = times["text"]
    fixed = times["image"] + times["audio"] + times["vae_encode"] + times["vae_decode"]
    return {
        "size": row.size,
        "clip_s": fixed + text_two + config.steps * row.step_s,
        "clip_recipe": f"{config.steps} steps x 3 passes",
        "few_step_clip_s": fixed + text_two / 2 + config.few_steps * row.pass_s,
        "few_step_recipe": f"{config.few_steps} steps x 1 pass (distilled LoRA, no negative prompt)",
    }


def run_gpu_bench(config: GpuBenchConfig) -> dict:
    cuda = torch.cuda.is_available()
    if not cuda and not config.tiny:
        raise InvalidSetting("the GPU benchmark needs a CUDA GPU (torch sees none); use --cpu for the tiny "
                             "end-to-end run, or --gpu --tiny for a CPU dry run of this code")
    if config.speed.step_cache or config.speed.distilled_lora:
        raise InvalidSetting("the GPU benchmark times single steps with random weights: a step cache's hit rate "
                             "and a LoRA mean nothing there (the few-step estimate is printed anyway); time them "
                             "with --cpu or a real run")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # CPUs without bf16 matmuls crawl in bf16
    spec = TINY if config.tiny else FULL
    env = environment(device)
    peaks = peak_tflops(env["device"])
    if config.peak_tflops:
        peaks = (config.peak_tflops, config.peak_fp8_tflops or 2 * config.peak_tflops)
    frames = config.frames or spec["frames"]
    width, height = (config.sizes or spec["sizes"])[0]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: thread start-up dominates, and shared CI cores thrash
    try:
        pieces = time_pieces(spec, device, dtype, width, height, frames, config.warmup, config.repeat) \
            if config.pieces else []
        _free(device)
        rows, applied = time_dit(spec, device, dtype, config, peaks)
        _free(device)
    finally:
        torch.set_num_threads(threads)
    return {
        "mode": "gpu", "tiny": config.tiny, **env, "dtype": str(dtype).removeprefix("torch."),
        "peak_tflops": {"bf16": peaks[0], "fp8": peaks[1]} if peaks else None,
        "switches": config.speed.describe(), "applied": applied,
        "steps": [asdict(r) for r in rows], "pieces": [asdict(p) for p in pieces],
        "estimates": estimates(rows, pieces, config),
    }


def format_gpu_report(report: dict) -> str:
    peaks = report["peak_tflops"]
    peak = (f"peak {peaks['bf16']:g} TFLOP/s bf16" + (f", {peaks['fp8']:g} fp8" if peaks["fp8"] else "")
            if peaks else "peak unknown (pass --peak-tflops for the floor)")
    header = (f"{'TINY config, ' if report['tiny'] else ''}Wan2.1-I2V-14B DiT + FantasyTalking adapter, random "
              f"weights, {report['dtype']}; {report['device']}, torch {report['torch']}, {report['date']}; {peak}; "
              f"switches: {report['switches']}")
    step_rows = [[r["size"], r["tokens"], r["step_s"], r["pass_s"], r["peak_gib"], f"{r['pflop_per_pass'] * 1e3:.4g}",
                  r["floor_step_s"], r["floor_fraction"]] if not r["error"] else [r["size"], r["tokens"], r["error"]]
                 for r in report["steps"]]
    parts = [header, "", table(["size", "tokens", "s/step (3 passes)", "s/pass", "peak GiB", "TFLOP/pass",
                                "floor s/step", "fraction of floor"], step_rows)]
    if report["pieces"]:
        parts += ["", table(["piece", "s", "peak GiB"],
                            [[p["name"], p["seconds"], p["peak_gib"]] if not p["error"] else [p["name"], p["error"]]
                             for p in report["pieces"]])]
    est = report["estimates"]
    if est:
        parts += ["", f"clip at {est['size']}, from the measured parts: {est['clip_s']:.1f} s ({est['clip_recipe']}); "
                      f"few-step: {est['few_step_clip_s']:.1f} s ({est['few_step_recipe']})"]
    if not report["tiny"]:
        parts += [TARGETS]
    return "\n".join(parts)
