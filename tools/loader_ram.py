"""Host RAM of each real-preset loader, measured at real width, and what that means for the full model.

Four loaders, each run alone in a child process (`tools.host_memory`) on files in the released
layouts (`tools.real_layout`), against the tensor set it must hold:

| loader | tensor set it must hold |
|---|---|
| GGUF Q8_0 DiT (`load_single_file_transformer`) | the quantized weights (the file) |
| bf16 single-file DiT (same function) | the bf16 weights (the file) |
| umT5, fp32 shards -> bf16 (`load_text_encoder`) | the bf16 model |
| released `.ckpt` -> bf16 safetensors (`convert_checkpoint`) | the bf16 output |

    python -m tools.loader_ram [--root DIR] [--json PATH]   # writes the files (~4 GB) if DIR has none, prints a table

The test (tests/test_real_width.py) asserts the bounds; `full_model_host_ram` turns the measured
ratios into docs/weights.md's "host RAM needed" per `--dit`/`--vram` mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.host_memory import HostPeak, measure  # noqa: E402

GB = 1e9
# Depths of the real-width files (widths are always the real ones): see tests/test_real_width.py.
DIT_BLOCKS, TEXT_LAYERS, TEXT_VOCAB, CLIP_LAYERS = 1, 1, 4096, 2
CKPT_BLOCKS = 8  # the adapter pickle measured: 8 of 40 blocks (0.67 GB fp32), well above allocator noise


@dataclass
class LoaderCase:
    name: str
    step: str
    kwargs: dict
    tensor_set: int  # bytes
    largest_file: int = 0  # bytes of the largest single file mapped at once (a shard)


@dataclass
class LoaderPeak:
    name: str
    tensor_set: int
    peak_anon: int
    peak_rss: int
    largest_file: int
    seconds: float

    @property
    def anon_ratio(self) -> float:
        return self.peak_anon / self.tensor_set

    @property
    def rss_ratio(self) -> float:
        return self.peak_rss / self.tensor_set


def write_real_width(root: Path) -> None:
    """The real-width weights dir (what tests/test_real_width.py builds), unless it is already there."""
    from fantasy.weights.real import ADAPTER_PART, DIT_FILES, WAN_PART, WAV2VEC_PART
    from tools import real_layout

    if (root / WAN_PART.folder / "transformer" / "config.json").is_file():
        return
    real_layout.write_wan_folder(root / WAN_PART.folder, DIT_BLOCKS, TEXT_LAYERS, TEXT_VOCAB, CLIP_LAYERS,
                                 max_shard_size="200MB")
    for key, write in (("q8_0", real_layout.write_city96_gguf), ("bf16", real_layout.write_bf16_single_file)):
        part = DIT_FILES[key]
        (root / part.folder / part.required[0]).parent.mkdir(parents=True, exist_ok=True)
        write(root / part.folder / part.required[0], real_layout.dit_config(DIT_BLOCKS))
    real_layout.write_wav2vec2_folder(root / WAV2VEC_PART.folder)
    real_layout.write_official_ckpt(root / ADAPTER_PART.folder / ADAPTER_PART.required[0], DIT_BLOCKS)


def loader_cases(root: Path, scratch: Path) -> list[LoaderCase]:
    """The four loaders on the files under `root`; the adapter pickle is written into `scratch`."""
    from fantasy.weights.checkpoints import index_shards
    from fantasy.weights.real import ADAPTER_PART, DIT_FILES, WAN_PART
    from tools import real_layout

    wan = root / WAN_PART.folder
    config = str(wan / "transformer")
    gguf = root / DIT_FILES["q8_0"].folder / DIT_FILES["q8_0"].required[0]
    bf16 = root / DIT_FILES["bf16"].folder / DIT_FILES["bf16"].required[0]
    text = wan / "text_encoder"
    index = json.loads((text / "model.safetensors.index.json").read_text())
    shards = [text / name for name in index_shards(text / "model.safetensors.index.json")]
    ckpt = scratch / ADAPTER_PART.required[0]
    real_layout.write_official_ckpt(ckpt, CKPT_BLOCKS)
    dit = "fantasy.weights.quantize:load_single_file_transformer"
    return [
        LoaderCase("GGUF Q8_0 DiT", dit, dict(checkpoint=str(gguf), config_dir=config, compute_dtype="torch.bfloat16",
                                            gguf=True), gguf.stat().st_size, gguf.stat().st_size),
        LoaderCase("bf16 single-file DiT", dit, dict(checkpoint=str(bf16), config_dir=config,
                                                   compute_dtype="torch.bfloat16", gguf=False),
                   bf16.stat().st_size, bf16.stat().st_size),
        LoaderCase("umT5 fp32 shards -> bf16", "fantasy.weights.real:load_text_encoder",
                   dict(folder=str(text), dtype="torch.bfloat16"), index["metadata"]["total_size"] // 2,
                   max(p.stat().st_size for p in shards)),
        # The output is bf16 (half the fp32 pickle's tensor bytes); the pickle itself is memory-mapped.
        LoaderCase(".ckpt -> bf16 safetensors", "fantasy.weights.adapter_weights:convert_checkpoint",
                   dict(src=str(ckpt), dst=str(scratch / "adapter.safetensors")), _pickle_tensor_bytes(ckpt) // 2,
                   ckpt.stat().st_size),
    ]


def _pickle_tensor_bytes(path: Path) -> int:
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    return sum(t.numel() * t.element_size() for group in state.values() for t in group.values())


def measure_loaders(root: Path) -> list[LoaderPeak]:
    with tempfile.TemporaryDirectory() as scratch:
        peaks = []
        for case in loader_cases(root, Path(scratch)):
            peak: HostPeak = measure(case.step, case.kwargs)
            peaks.append(LoaderPeak(case.name, case.tensor_set, peak.peak_anon, peak.peak_rss, case.largest_file,
                                    peak.seconds))
        return peaks


# ---- the full model --------------------------------------------------------------------------------

# What each model holds in host RAM at full size (bytes), from the parameter counts (tests/test_bench.py).
FULL = {
    "dit_q8_0": 17_463_844_096,  # city96's Q8_0 type mix at 16.39 B parameters (tools.real_layout.city96_bytes)
    "dit_bf16": 16_394_878_784 * 2, "dit_fp8": 16_394_878_784,
    "adapter": 40 * 2 * 2048 * 5120 * 2,  # the audio K/V in bf16
    "umt5": 5_680_910_336 * 2, "umt5_shard": 5_000_000_000,  # bf16 model; Wan-AI's largest fp32 shard
    "others": (630_766_080 + 1280 * 1024 + 126_892_531 + 94_371_712 + 1_576_960) * 4,  # CLIP, VAE, wav2vec2, proj
}
FULL_MODES = [("q8_0", "resident"), ("bf16", "resident"), ("bf16-fp8-storage", "resident"),
              ("q8_0", "model-offload"), ("bf16", "model-offload"), ("q8_0", "group-offload"),
              ("bf16", "group-offload")]


def full_model_host_ram(umt5_ratio: float = 1.0) -> list[tuple[str, str, float, float]]:
    """(--dit, --vram, host RAM needed (anonymous peak, GB), page cache read (GB)) for the full model.

    What each mode keeps in anonymous host memory at its peak, with umT5's measured loader ratio:
    - every mode: umT5 in bf16 (the CPU is its home between prompts), and CLIP + VAE + wav2vec2 +
      projection, loaded on the CPU (then moved to the GPU, except under model offloading);
    - resident: nothing of the DiT (streamed from the mapped file to the GPU), except with fp8
      storage, which casts it to fp8 on the CPU before moving it;
    - model-offload: the whole DiT and the adapter, copied into RAM the first time they leave the GPU;
    - group-offload: the DiT's and umT5's pinned copies (diffusers pins one copy of every block), and
      umT5's unpinned original until its first onload.
    The page cache (reclaimable, not needed) reads the DiT file and one umT5 shard at a time.
    """
    umt5 = FULL["umt5"] * umt5_ratio
    rows = []
    for dit, vram in FULL_MODES:
        held = {"q8_0": FULL["dit_q8_0"], "bf16": FULL["dit_bf16"], "bf16-fp8-storage": FULL["dit_fp8"]}[dit]
        need = umt5 + FULL["others"]
        if vram == "model-offload" or dit == "bf16-fp8-storage":
            need += held + FULL["adapter"]
        elif vram == "group-offload":
            need += held + FULL["adapter"] + FULL["umt5"]
        file = FULL["dit_q8_0"] if dit == "q8_0" else FULL["dit_bf16"]
        rows.append((dit, vram, need / GB, (file + FULL["umt5_shard"]) / GB))
    return rows


def table(peaks: list[LoaderPeak]) -> str:
    lines = ["| loader (real width) | tensor set | peak anonymous | ratio | peak RSS (+ page cache) | ratio |",
             "|---|---|---|---|---|---|"]
    for p in peaks:
        lines.append(f"| {p.name} | {p.tensor_set / GB:.2f} GB | {p.peak_anon / GB:.2f} GB | {p.anon_ratio:.2f}x | "
                     f"{p.peak_rss / GB:.2f} GB | {p.rss_ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="real-width weights dir (written there if missing)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root or tmp)
        write_real_width(root)
        peaks = measure_loaders(root)
    print(table(peaks))
    print()
    for dit, vram, need, cache in full_model_host_ram(peaks[2].anon_ratio):
        print(f"  --dit {dit:<17} --vram {vram:<14} host RAM ~{need:5.1f} GB (+ page cache {cache:.0f} GB)")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(p) for p in peaks], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
