"""The one-shot GPU check: everything the docs' GPU figures need, in one command on a bare CUDA machine.

    python3 tools/fetch_wheels.py                   # here, with network: the missing packages' wheels -> .whl/
    python3 tools/gpu_check.py --out OUT            # there: installs what is missing from .whl/, measures, writes
                                                    #   OUT/gpu_check.json and OUT/gpu_check.md (the docs' tables)
    python3 tools/gpu_check.py --tiny --out OUT     # any CPU: the same code on a tiny config (CI runs this)

A bare CUDA machine has torch, transformers, accelerate, peft, safetensors but no diffusers, gguf,
torchao, ftfy...: `REQUIRED` lists what the check imports; whatever is missing is installed from the
wheels in `.whl/` (git-ignored; `tools/fetch_wheels.py` downloads them for CPython 3.12 manylinux
x86-64) into a private folder with `pip --no-index --no-deps`, so nothing is fetched there.

Measured at 512x512x81 (21,504 tokens) on random full-size weights (random weights time and weigh
what trained ones do), each section timed against `--budget-s` (default 420 s: the whole command
ends within ~8 minutes on an H100/H200), the most wanted first; a section that would not fit is
recorded as skipped, and the JSON is rewritten after every section, so a cut-off run keeps its figures:

1. every `--dit` mode that fits: load time, weights and peak GiB, s/step (3 passes), s/pass, fraction
   of the FLOP floor (`fantasy.bench.flops`), through `tools.gpu_memory.run_mode` (the loader's own code);
2. peak VRAM per `--vram` mode (Q8_0 DiT + umT5 + CLIP + VAE + wav2vec2, `fantasy.weights.offload.apply_vram_mode`):
   prompt + negative, image tokens, speech, condition encode, one guidance step, the 81-frame decode;
3. host RAM while loading city96's Q8_0 GGUF (written full-size to disk) straight onto the GPU, in a
   child process (`tools.host_memory`): anonymous peak and peak RSS;
4. the speed switches on the bf16 DiT (`fantasy.bench.gpu_speed.run_gpu_bench`): plain (with the encoders and
   VAE), batched guidance, cuDNN and flash SDPA attention, fp8 linears, regional compile;
5. host RAM while loading the bf16 single file (33 GB on disk), if time is left.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / ".whl"
SITE = Path(tempfile.gettempdir()) / "fantasy-gpu-check-site"
# import name -> the wheel tools/fetch_wheels.py downloads (pins: what CI tests with; torchao 0.18 needs torch >= 2.11)
REQUIRED = {
    "diffusers": "diffusers==0.42.1", "importlib_metadata": "importlib_metadata==10.2.0", "gguf": "gguf==0.19.0",
    "torchao": "torchao==0.18.0", "ftfy": "ftfy==6.3.1", "wcwidth": "wcwidth==0.7.0",
    "soundfile": "soundfile==0.14.0", "cffi": "cffi==2.0.0", "pycparser": "pycparser==3.0", "soxr": "soxr==1.1.0",
    "peft": "peft==0.21.2", "accelerate": "accelerate==1.15.0", "safetensors": "safetensors==0.8.0",
}
GiB = 1024**3
# Rough cost of each section on an H100/H200, for the time budget (--tiny: a tenth).
COST_S = {"dit_modes": 150, "vram_modes": 100, "host_ram_gguf": 60, "switches": 150, "host_ram_bf16": 90}


def missing_modules(names) -> list[str]:
    return [name for name in names if importlib.util.find_spec(name) is None]


def ensure_packages(wheels: Path = WHEELS, site: Path = SITE, required: dict[str, str] | None = None) -> list[str]:
    """Install the missing ones among `required` from `wheels` (no index, no dependencies); return their names.

    Raises `SystemExit` naming what is still missing and how to get the wheels.
    """
    required = REQUIRED if required is None else required
    missing = missing_modules(required)
    if missing:
        wanted = {_dist(required[name]) for name in missing}
        files = [f for f in sorted(wheels.glob("*.whl")) if _dist(f.name) in wanted] if wheels.is_dir() else []
        if files:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, files)],
                           check=True)
            sys.path.insert(0, str(site))
            importlib.invalidate_caches()
        still = missing_modules(missing)
        if still:
            raise SystemExit(f"error: missing Python packages {', '.join(still)} and no wheels for them in {wheels}: "
                             "run `python3 tools/fetch_wheels.py` where pip can reach PyPI, then carry .whl/ along")
    return missing


def _dist(name: str) -> str:
    """A wheel's or requirement's distribution name, normalised ("importlib-metadata" == "importlib_metadata")."""
    return name.split("==")[0].split("-")[0].lower().replace(".", "_") if name.endswith(".whl") else \
        name.split("==")[0].lower().replace("-", "_").replace(".", "_")


class Budget:
    """Seconds left for measuring; a section starts only if its usual cost still fits."""

    def __init__(self, seconds: float, scale: float = 1.0):
        self.deadline = time.monotonic() + seconds
        self.scale = scale

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, section: str) -> bool:
        return self.left() >= COST_S[section] * self.scale


def _error(exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


# ---- 1. DiT storage modes ------------------------------------------------------------------------------


def floor_fraction(spec: dict, step_s: float | None, peaks, frames: int, size: int) -> float | None:
    """The FLOP floor of a 3-pass step (audio-on pass + 2 audio-off passes) over the measured time."""
    import torch

    from fantasy.bench.flops import video_tokens
    from fantasy.bench.gpu_speed import step_floor
    from fantasy.bench.models import dit_inputs

    if step_s is None or peaks is None:
        return None
    x = dit_inputs(spec, torch.device("cpu"), torch.float32, size, size, frames)
    tokens = video_tokens(spec["config"], frames, size, size)
    _, floor = step_floor(spec, tokens, x["windows"].shape[1], x["windows"].shape[2], 3, peaks, False)
    return floor / step_s


def section_dit_modes(spec: dict, device, dtype, peaks, budget: Budget) -> list[dict]:
    import torch

    from fantasy.weights.quantize import DIT_MODES
    from tools.gpu_memory import run_mode

    rows = []
    for mode in DIT_MODES:
        if budget.left() < COST_S["dit_modes"] * budget.scale / len(DIT_MODES):
            rows.append({"mode": mode, "error": "skipped: time budget"})
            continue
        if mode == "bf16-fp8" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            rows.append({"mode": mode, "error": "skipped: fp8 needs compute capability 8.9+"})
            continue
        row = run_mode(mode, spec, device, dtype, "resident")
        rows.append({"mode": mode, "load_s": row.load_s, "weights_gib": row.weights_gib,
                     "load_peak_gib": row.load_peak_gib, "step_peak_gib": row.step_peak_gib, "step_s": row.step_s,
                     "pass_s": None if row.step_s is None else row.step_s / 3,
                     "floor_fraction": floor_fraction(spec, row.step_s, peaks, spec["frames"], spec["size"]),
                     "error": row.error})
    return rows


# ---- 2. VRAM modes ------------------------------------------------------------------------------------


def _cpu_components(spec: dict, device, dtype) -> dict:
    """Random encoders and VAE, made on `device` (fast) and kept on the CPU, as the real loader leaves them."""
    from transformers import Wav2Vec2FeatureExtractor

    from fantasy.bench.models import ENCODER_DTYPES, TINY, built_on, full_encoders, tiny_encoders
    from fantasy.model.clip_processor import clip_image_processor_class
    from fantasy.model.sampling import make_scheduler
    from fantasy.weights import tiny
    from fantasy.weights.real import enable_vae_tiling

    builders = tiny_encoders() if spec is TINY else full_encoders()
    if spec is TINY:  # the tiny DiT reads 256-wide text and image tokens
        from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

        config = spec["config"]
        builders["text_encoder"] = lambda: UMT5EncoderModel(UMT5Config(
            vocab_size=64, d_model=config["text_dim"], d_kv=8, d_ff=64, num_layers=2, num_heads=4))
        builders["image_encoder"] = lambda: CLIPVisionModel(CLIPVisionConfig(
            hidden_size=config["image_dim"], intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=tiny.CLIP_IMAGE, patch_size=tiny.CLIP_PATCH))
    models = {name: built_on(device, ENCODER_DTYPES[name] or dtype, build).to("cpu") for name, build in builders.items()}
    enable_vae_tiling(models["vae"])
    size = models["image_encoder"].config.image_size
    return dict(models, tokenizer=tiny.tiny_tokenizer(), scheduler=make_scheduler(),
                image_processor=clip_image_processor_class()(size=size, crop_size=size),
                feature_extractor=Wav2Vec2FeatureExtractor())


def _q8_0_transformer(spec: dict, state: dict, dtype):
    import tempfile as _tempfile

    import torch
    from diffusers import WanTransformer3DModel

    from fantasy.weights.quantize import load_single_file_transformer

    with _tempfile.TemporaryDirectory() as config_dir:
        with torch.device("meta"):
            WanTransformer3DModel(**spec["config"]).save_config(config_dir)
        return load_single_file_transformer(dict(state), config_dir, dtype, gguf=True)


def vram_mode_run(pipe, spec: dict, device) -> None:
    """One generation through the pipeline's own call, 1 step: prompt + negative, image tokens, speech,
    condition, 3 passes, the whole decode."""
    import numpy as np
    import torch
    from PIL import Image

    from fantasy.bench.models import FPS, sync

    frames, size = spec["frames"], spec["size"]
    portrait = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    samples = np.random.default_rng(1).standard_normal(int(frames / FPS * 16_000)).astype(np.float32) * 0.1
    windows, lengths = pipe.encode_audio(samples, frames)
    pipe(portrait, windows, lengths, "a person is talking", num_frames=frames, num_inference_steps=1,
         generator=torch.Generator().manual_seed(0))
    sync(device)


def section_vram_modes(spec: dict, device, dtype, budget: Budget) -> list[dict]:
    import copy
    import gc

    import torch

    from fantasy.bench.models import memory_gib, reset_peak
    from fantasy.model.assemble import assemble
    from fantasy.weights.offload import VRAM_MODES, apply_vram_mode
    from tools.gpu_memory import random_gguf_state

    masters = _cpu_components(spec, device, dtype)
    state = random_gguf_state(spec["config"], "q8_0")
    rows = []
    for vram in VRAM_MODES:
        if budget.left() < COST_S["vram_modes"] * budget.scale / len(VRAM_MODES):
            rows.append({"vram": vram, "dit": "q8_0", "error": "skipped: time budget"})
            continue
        row = {"vram": vram, "dit": "q8_0", "peak_gib": None, "seconds": None, "error": None}
        pipe = None
        try:
            components = {k: copy.deepcopy(v) for k, v in masters.items()}
            components["transformer"] = _q8_0_transformer(spec, state, dtype)
            from fantasy.model.adapter import AudioProjModel

            components["audio_proj"] = AudioProjModel(audio_dim=components["audio_encoder"].config.hidden_size,
                                                      context_dim=spec["context_dim"])
            pipe = assemble(components, None)
            for block in pipe.transformer.blocks:
                block.attn2.processor.to(dtype)
            pipe.set_progress_bar_config(disable=True)
            apply_vram_mode(pipe, vram, device)
            reset_peak(device)
            started = time.perf_counter()
            vram_mode_run(pipe, spec, device)
            row["seconds"] = time.perf_counter() - started
            row["peak_gib"] = memory_gib(device, True)
        except Exception as exc:  # one failing mode must not hide the others
            row["error"] = _error(exc)
        finally:
            del pipe
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


# ---- 3 and 5. host RAM while loading ------------------------------------------------------------------


def section_host_ram(spec: dict, device, kind: str, scratch: Path) -> dict:
    """Write the DiT file (`kind`: q8_0 | bf16) in its released layout, load it onto `device` in a child, delete it."""
    import torch
    from diffusers import WanTransformer3DModel

    from tools import real_layout
    from tools.host_memory import measure

    folder = Path(tempfile.mkdtemp(dir=scratch))
    try:
        with torch.device("meta"):
            WanTransformer3DModel(**spec["config"]).save_config(folder)
        path = folder / ("dit.gguf" if kind == "q8_0" else "dit.safetensors")
        started = time.perf_counter()
        if kind == "q8_0":
            real_layout.write_city96_gguf(path, spec["config"])
        else:
            real_layout.write_bf16_single_file(path, spec["config"])
        written = time.perf_counter() - started
        peak = measure("fantasy.weights.quantize:load_single_file_transformer",
                       dict(checkpoint=str(path), config_dir=str(folder), compute_dtype="torch.bfloat16",
                            gguf=kind == "q8_0", device=str(device)))
        size = path.stat().st_size
        return {"file": kind, "file_gb": size / 1e9, "peak_anon_gb": peak.peak_anon / 1e9,
                "peak_rss_gb": peak.peak_rss / 1e9, "anon_ratio": peak.peak_anon / size, "rss_ratio": peak.peak_rss / size,
                "load_s": peak.seconds, "write_s": written, "device": str(device), "error": None}
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


# ---- 4. speed switches --------------------------------------------------------------------------------


def switch_variants(device) -> list:
    """The speed switches to time: all where a CUDA GPU is; on a CPU the ones that run there."""
    from fantasy.speed.switches import SpeedOptions

    variants = [SpeedOptions(), SpeedOptions(batch_guidance=True)]
    if device.type == "cuda":
        variants += [SpeedOptions(attention="cudnn"), SpeedOptions(attention="flash-sdpa"),
                     SpeedOptions(fp8_linears=True), SpeedOptions(fp8_linears=True, attention="cudnn"),
                     SpeedOptions(compile=True)]
    else:
        variants += [SpeedOptions(attention="math")]
    return variants


def section_switches(spec: dict, tiny: bool, device, budget: Budget) -> list[dict]:
    from fantasy.bench.gpu_speed import GpuBenchConfig, run_gpu_bench

    rows = []
    per = COST_S["switches"] * budget.scale / 6
    for i, speed in enumerate(switch_variants(device)):
        name = speed.describe()
        if budget.left() < per * (3 if speed.compile else 1):
            rows.append({"switches": name, "error": "skipped: time budget"})
            continue
        try:
            config = GpuBenchConfig(tiny=tiny, sizes=[(spec["size"], spec["size"])], warmup=1, repeat=2,
                                    pieces=i == 0, speed=speed)
            report = run_gpu_bench(config)
            step = report["steps"][0]
            rows.append({"switches": name, "step_s": step["step_s"], "pass_s": step["pass_s"],
                         "peak_gib": step["peak_gib"], "floor_fraction": step["floor_fraction"],
                         "pieces": report["pieces"], "estimates": report["estimates"], "error": step["error"]})
        except Exception as exc:  # e.g. a kernel this GPU lacks
            rows.append({"switches": name, "error": _error(exc)})
    return rows


# ---- the run and its report ---------------------------------------------------------------------------


def markdown(report: dict) -> str:
    from fantasy.bench.report import table

    env = report["environment"]
    lines = [f"GPU check ({'TINY config, ' if report['tiny'] else ''}{report['size']}, {report['tokens']} tokens, "
             f"random full-size weights): {env['device']}, torch {env['torch']}, {env['date']}, "
             f"{report['seconds']:.0f} s", ""]

    def rows(key, fields):
        return [[r.get(f) for f in fields] if not r.get("error") else [r.get(fields[0], r.get("section")), r["error"]]
                for r in report.get(key) or []]

    lines += ["**DiT storage (`--dit`), resident**", "",
              table(["--dit", "load s", "weights GiB", "step peak GiB", "s/step (3 passes)", "s/pass",
                     "fraction of floor"],
                    rows("dit_modes", ["mode", "load_s", "weights_gib", "step_peak_gib", "step_s", "pass_s",
                                       "floor_fraction"])), ""]
    lines += ["**Peak VRAM per `--vram` mode** (Q8_0 DiT; prompt, image, speech, condition, 1 step, decode)", "",
              table(["--vram", "peak GiB", "s"], rows("vram_modes", ["vram", "peak_gib", "seconds"])), ""]
    lines += ["**Host RAM while loading the DiT file onto the GPU** (child process)", "",
              table(["file", "GB", "anonymous peak GB", "ratio", "peak RSS GB", "ratio", "load s"],
                    rows("host_ram", ["file", "file_gb", "peak_anon_gb", "anon_ratio", "peak_rss_gb", "rss_ratio",
                                      "load_s"])), ""]
    lines += ["**Speed switches** (bf16 DiT)", "",
              table(["switches", "s/step", "s/pass", "peak GiB", "fraction of floor"],
                    rows("switches", ["switches", "step_s", "pass_s", "peak_gib", "floor_fraction"]))]
    if report.get("skipped"):
        lines += ["", "Skipped (time budget): " + ", ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def run(tiny: bool, out: Path, budget_s: float, installed: list[str], only: list[str] | None = None) -> dict:
    """Measure every section in `COST_S` order (or only those in `only`); write OUT/gpu_check.{json,md}."""
    import torch

    from fantasy.bench.flops import peak_tflops, video_tokens
    from fantasy.bench.models import FULL, TINY
    from fantasy.bench.report import environment

    cuda = torch.cuda.is_available()
    if not cuda and not tiny:
        raise SystemExit("error: the GPU check needs a CUDA GPU (torch sees none); use --tiny for a CPU dry run")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    spec = TINY if tiny else FULL
    env = environment(device)
    peaks = peak_tflops(env["device"]) if cuda else (1.0, 2.0)  # on a CPU the fraction is only a code path
    report = {"tiny": tiny, "environment": env, "installed": installed, "peak_tflops": peaks,
              "size": f"{spec['size']}x{spec['size']}x{spec['frames']}",
              "tokens": video_tokens(spec["config"], spec["frames"], spec["size"], spec["size"]),
              "dit_modes": [], "vram_modes": [], "host_ram": [], "switches": [], "skipped": [], "seconds": 0.0}
    budget = Budget(budget_s, 0.1 if tiny else 1.0)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny tensors: thread start-up dominates, and shared CI cores thrash

    def save() -> None:
        report["seconds"] = time.perf_counter() - started
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out / "gpu_check.md").write_text(markdown(report))

    sections = [
        ("dit_modes", "dit_modes", lambda: section_dit_modes(spec, device, dtype, peaks, budget)),
        ("vram_modes", "vram_modes", lambda: section_vram_modes(spec, device, dtype, budget)),
        ("host_ram_gguf", "host_ram", lambda: [section_host_ram(spec, device, "q8_0", out)]),
        ("switches", "switches", lambda: section_switches(spec, tiny, device, budget)),
        ("host_ram_bf16", "host_ram", lambda: [section_host_ram(spec, device, "bf16", out)]),
    ]
    try:
        for name, key, section in sections:
            if only is not None and name not in only:
                continue
            if not budget.allows(name):
                report["skipped"].append(name)
                continue
            print(f"[gpu-check] {name} ({budget.left():.0f} s left)", flush=True)
            try:
                report[key] += section()
            except Exception as exc:  # a broken section is a figure too: say what broke, go on
                report[key].append({"section": name, "error": _error(exc)})
            save()
    finally:
        torch.set_num_threads(threads)
        save()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on a CPU (or GPU): a dry run of this code")
    parser.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for measuring (default 420)")
    parser.add_argument("--wheels", default=str(WHEELS), help="wheels for missing packages (default .whl/)")
    parser.add_argument("--sections", nargs="+", choices=list(COST_S), default=None,
                        help="only these sections (e.g. to finish a run the budget cut short)")
    args = parser.parse_args(argv)
    installed = ensure_packages(Path(args.wheels))
    if installed:
        print(f"[gpu-check] installed from wheels: {', '.join(installed)}", flush=True)
    sys.path.insert(0, str(ROOT))
    report = run(args.tiny, Path(args.out), args.budget_s, installed, args.sections)
    print((Path(args.out) / "gpu_check.md").read_text())
    failed = [r for key in ("dit_modes", "vram_modes", "host_ram", "switches") for r in report[key]
              if r.get("error") and not str(r["error"]).startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
