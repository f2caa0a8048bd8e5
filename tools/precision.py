"""What the DiT's precision policy costs: `mixed` (the release's, the default) against `stock` (diffusers' all-bf16).

One audio-on transformer pass of the Wan2.1-I2V-14B DiT with random bf16 weights (real widths: 5120 wide,
40 heads, FFN 13824, the audio adapter installed), no download:

    python tools/precision.py                 # CPU: 2 of the 40 blocks, a 256x256x5 clip (512 video tokens)
    python tools/precision.py --device cuda   # GPU: all 40 blocks, 512x512x81 (21,504 tokens) and 832x480x81
    python tools/precision.py --tiny          # the tiny config (a dry run of this code)

Time: mean of `--repeat` passes after one warm-up, as wall time and as this process's CPU time (the
steadier figure on a shared machine). Memory: on a GPU the peak allocated during a pass
minus what the weights take; on a CPU each policy runs in its own process and the figure is its peak
resident memory (ru_maxrss) minus the resident memory before the first pass, so weights are excluded.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fantasy.bench.models import FULL, TINY, GiB, build_dit, dit_inputs, memory_gib, reset_peak, sync  # noqa: E402
from fantasy.bench.report import environment, table, write_json  # noqa: E402
from fantasy.model.precision import PRECISIONS, apply_precision  # noqa: E402


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / GiB


def measure(mode: str, spec: dict, device: torch.device, size: tuple[int, int], frames: int, repeat: int,
            model=None, audio=None) -> dict:
    """Seconds per pass and activation memory (GiB) of one policy."""
    if model is None:
        model, audio = build_dit(spec, device, torch.bfloat16)
    apply_precision(model, mode)
    x = dit_inputs(spec, device, torch.bfloat16, size[0], size[1], frames)

    def one_pass():
        with torch.no_grad(), audio.use(x["windows"], x["lengths"], 1.0):
            return model(hidden_states=x["latents"], timestep=x["timestep"], encoder_hidden_states=x["text"],
                         encoder_hidden_states_image=x["image"], return_dict=False)[0]

    weights, before = memory_gib(device, False), _rss_gib()
    reset_peak(device)
    one_pass()  # warm-up
    sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        out = one_pass()
    sync(device)
    seconds = (time.perf_counter() - started) / repeat
    cpu_seconds = (time.process_time() - cpu_started) / repeat
    if device.type == "cuda":
        activations = memory_gib(device, True) - weights
    else:
        activations = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB - before
    tokens = x["latents"].shape[2] * x["latents"].shape[3] * x["latents"].shape[4] // 4
    return {"mode": mode, "size": f"{size[0]}x{size[1]}x{frames}", "tokens": tokens, "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "activation_gib": activations, "output_dtype": str(out.dtype).removeprefix("torch.")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny config")
    parser.add_argument("--layers", type=int, default=None, help="blocks (default: 2 on a CPU, 40 on a GPU)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="WxHxF")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one policy, in this process (CPU)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = dict(TINY if args.tiny else FULL)
    layers = args.layers or (spec["config"]["num_layers"] if device.type == "cuda" or args.tiny else 2)
    spec["config"] = spec["config"] | {"num_layers": layers}
    default = ["64x64x9"] if args.tiny else (["512x512x81", "832x480x81"] if device.type == "cuda" else ["256x256x5"])
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes or default]

    if args.child:
        width, height, frames = sizes[0]
        print(json.dumps(measure(args.child, spec, device, (width, height), frames, args.repeat)))
        return 0
    rows = []
    if device.type == "cuda":
        model, audio = build_dit(spec, device, torch.bfloat16)
        for width, height, frames in sizes:
            rows += [measure(mode, spec, device, (width, height), frames, args.repeat, model, audio)
                     for mode in PRECISIONS]
    else:  # a fresh process per policy and size: ru_maxrss only grows
        for size in sizes:
            for mode in PRECISIONS:
                command = [sys.executable, __file__, "--child", mode, "--device", "cpu", "--layers", str(layers),
                           "--repeat", str(args.repeat), "--sizes", "x".join(map(str, size))] + (["--tiny"] * args.tiny)
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {"environment": environment(device), "layers": layers, "rows": rows}
    print(f"DiT precision cost, {layers} blocks, {report['environment']}")
    print(table(["policy", "clip", "tokens", "s/pass", "CPU s/pass", "activations GiB", "output"],
                [[r["mode"], r["size"], r["tokens"], r["seconds"], r["cpu_seconds"], r["activation_gib"],
                  r["output_dtype"]] for r in rows]))
    if args.json:
        print(f"wrote {write_json(args.json, report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
