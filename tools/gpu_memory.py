"""GPU memory and speed of the Wan2.1-I2V-14B DiT + FantasyTalking adapter in each storage mode.

No download: the full-size transformer is built with random weights (bf16 modes: directly on the GPU;
GGUF modes: random Q8_0 / Q4_K blocks under the original Wan key names, loaded through the same
`from_single_file` path as the real files). For each mode it prints load time, the VRAM the weights
take, peak VRAM while loading and during one guidance step, and that step's time: 3 transformer
passes (full, text-only, negative) at 512x512x81 = 21 latent frames x 32x32 patches = 21,504 tokens.

    python tools/gpu_memory.py                       # all modes, resident
    python tools/gpu_memory.py --modes q8_0 bf16-fp8 --vram group-offload
    python tools/gpu_memory.py --tiny                # CPU dry run of the same code, tiny config (CI)

Random weights give the same timings and memory as trained ones (same shapes, same kernels); the
GGUF "q4_k_m" mode stores every quantizable weight as Q4_K (city96's file mixes in some Q5_K/Q6_K).
With --vram group-offload, bf16 weights are made on the GPU, moved to the CPU, and the peak is reset
before offloading starts; load time then includes that move.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fantasy.bench.models import FULL, TINY, build_random_bf16, dit_inputs, memory_gib, sync  # noqa: E402
from fantasy.model.adapter import AudioContext, install_audio_adapter  # noqa: E402
from fantasy.model.precision import DEFAULT_PRECISION, apply_precision  # noqa: E402
from fantasy.weights.offload import group_offload  # noqa: E402
from fantasy.weights.quantize import (  # noqa: E402
    DIT_MODES,
    enable_fp8_storage,
    load_single_file_transformer,
    quantize_weight_only,
)
from fantasy.weights.wan_keys import to_original_state_dict  # noqa: E402


@dataclass
class Row:
    mode: str
    load_s: float | None = None
    weights_gib: float | None = None
    load_peak_gib: float | None = None
    step_peak_gib: float | None = None
    step_s: float | None = None
    error: str | None = None


def _gguf_block(quant) -> tuple[int, int, list[tuple[int, int]]]:
    """(values per block, bytes per block, byte ranges holding fp16 scales) for Q8_0 and Q4_K."""
    import gguf

    values, size = gguf.GGML_QUANT_SIZES[quant]
    scales = [(0, 2)] if quant == gguf.GGMLQuantizationType.Q8_0 else [(0, 2), (2, 4)]  # Q4_K: d, dmin
    return values, size, scales


def random_gguf_state(config: dict, quant_name: str, seed: int = 0) -> dict:
    """Random GGUF tensors (original Wan names) typed as in a city96 file (`tools.real_layout.city96_type`): 2-D
    weights quantized, `time_embedding.*` weights F16, the rest F32 (a tiny width a block does not divide: F32)."""
    import gguf
    from diffusers import WanTransformer3DModel
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from fantasy.weights.wan_keys import to_original_key
    from tools.real_layout import RandomPool, city96_type

    quant = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_k_m": gguf.GGMLQuantizationType.Q4_K}[quant_name]
    plain = {gguf.GGMLQuantizationType.F16: torch.float16, gguf.GGMLQuantizationType.F32: torch.float32}
    values, size, scales = _gguf_block(quant)
    scale_bytes = torch.from_numpy(np.frombuffer(np.float16(2e-3).tobytes(), dtype=np.uint8).copy())
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanTransformer3DModel(**config).state_dict().items()}
    pool = RandomPool(seed)  # copies of one random pool: 17 GB of random bytes in seconds, not minutes
    state = {}
    for name, shape in shapes.items():
        kind = city96_type(to_original_key(name), tuple(shape))
        if kind not in plain and shape[1] % values == 0:
            raw = pool.take(pool.bytes, shape[0] * (shape[1] // values * size)).view(shape[0], -1)
            blocks = raw.view(shape[0], -1, size)
            for lo, hi in scales:
                blocks[..., lo:hi] = scale_bytes
            state[name] = GGUFParameter(raw, quant_type=quant)
        else:
            state[name] = pool.weights(name, tuple(shape), plain.get(kind, torch.float32))
    return to_original_state_dict(state)


def build(mode: str, spec: dict, device: torch.device, dtype: torch.dtype, vram: str, audio: AudioContext):
    """One storage mode's transformer with the adapter installed, placed for `vram`; same code as the app."""
    dit = DIT_MODES[mode]
    config = spec["config"]
    on_gpu = vram == "resident"
    if dit.file in ("q8_0", "q4_k_m"):
        state = random_gguf_state(config, dit.file)
        with tempfile.TemporaryDirectory() as config_dir:
            from diffusers import WanTransformer3DModel

            with torch.device("meta"):
                WanTransformer3DModel(**config).save_config(config_dir)
            started = time.perf_counter()
            model = load_single_file_transformer(state, config_dir, dtype, gguf=True,
                                                 device=device if on_gpu else None)
        del state
    else:
        started = time.perf_counter()
        model = build_random_bf16(config, device, dtype)
        if dit.torchao:
            quantize_weight_only(model, dit.torchao, device=device)
    param = next(model.parameters())
    install_audio_adapter(model, spec["context_dim"], spec["image_tokens"], audio)
    for block in model.blocks:
        block.attn2.processor.to(device=param.device if on_gpu else "cpu", dtype=dtype)
    apply_precision(model, DEFAULT_PRECISION, dtype)  # the app's default DiT numerics, before casting/offloading
    if dit.fp8_storage:
        enable_fp8_storage(model, dtype)
    if not on_gpu:
        model.to("cpu")
        if device.type == "cuda":  # the random weights were made on the GPU: not part of what offloading costs
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        group_offload(model, device)
    sync(device)
    return model, time.perf_counter() - started


@torch.no_grad()
def guidance_step(model, audio: AudioContext, x: dict) -> None:
    """The pipeline's 3 passes: text + audio, text with audio off, negative text with audio off."""
    for text, scale in ((x["text"], 1.0), (x["text"], 0.0), (x["negative"], 0.0)):
        with audio.use(x["windows"], x["lengths"], scale):
            model(hidden_states=x["latents"], timestep=x["timestep"], encoder_hidden_states=text,
                  encoder_hidden_states_image=x["image"], return_dict=False)


def run_mode(mode: str, spec: dict, device: torch.device, dtype: torch.dtype, vram: str) -> Row:
    row = Row(mode)
    audio = AudioContext()
    model = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model, row.load_s = build(mode, spec, device, dtype, vram, audio)
        row.weights_gib, row.load_peak_gib = memory_gib(device, False), memory_gib(device, True)
        x = dit_inputs(spec, device, dtype)
        with torch.no_grad(), audio.use(x["windows"], x["lengths"], 1.0):  # warm-up pass, not timed
            model(hidden_states=x["latents"], timestep=x["timestep"], encoder_hidden_states=x["text"],
                  encoder_hidden_states_image=x["image"], return_dict=False)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        guidance_step(model, audio, x)
        sync(device)
        row.step_s = time.perf_counter() - started
        row.step_peak_gib = memory_gib(device, True)
    except Exception as exc:  # one failing mode (e.g. fp8 on an A100) must not hide the others
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def table(rows: list[Row], header: str) -> str:
    def f(value, digits=2):
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [header, "",
             "| DiT mode | load s | weights GiB | load peak GiB | step peak GiB | step s (3 passes) | s/pass |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.mode} | failed: {r.error} ||||||")
        else:
            per_pass = None if r.step_s is None else r.step_s / 3
            lines.append(f"| {r.mode} | {f(r.load_s, 1)} | {f(r.weights_gib)} | {f(r.load_peak_gib)} | "
                         f"{f(r.step_peak_gib)} | {f(r.step_s)} | {f(per_pass)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(DIT_MODES), choices=list(DIT_MODES))
    parser.add_argument("--vram", default="resident", choices=["resident", "group-offload"])
    parser.add_argument("--tiny", action="store_true", help="tiny config, CPU unless a GPU is there: a dry run for CI")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("tools/gpu_memory.py needs a CUDA GPU (torch.cuda.is_available() is False). "
              "Use --tiny for a CPU dry run of the same code on a tiny config.", file=sys.stderr)
        return 2
    if args.tiny and args.vram == "group-offload" and not cuda:
        print("note: group offloading on CPU moves nothing (cpu -> cpu); the run only checks the code path")
    device = torch.device("cuda" if cuda else "cpu")
    spec = TINY if args.tiny else FULL
    dtype = torch.bfloat16 if cuda else torch.float32  # CPUs without bf16 matmuls crawl in bf16
    size, frames = spec["size"], spec["frames"]
    tokens = ((frames - 1) // 4 + 1) * (size // 16) ** 2
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    header = (f"{'TINY config, ' if args.tiny else ''}Wan2.1-I2V-14B DiT + adapter, random weights, "
              f"{size}x{size}x{frames} ({tokens} tokens), vram={args.vram}; {where}, torch {torch.__version__}, "
              f"{datetime.date.today().isoformat()}")
    print(header, flush=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: thread start-up dominates, and shared CI cores thrash
    rows = []
    try:
        for mode in args.modes:
            row = run_mode(mode, spec, device, dtype, args.vram)
            print(f"  {mode}: " + (row.error or f"load {row.load_s:.1f} s, step {row.step_s:.2f} s"), flush=True)
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    print()
    print(table(rows, header))
    return 0 if not any(r.error for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
