"""Parameter bytes per process when the DiT and umT5 are sharded with FSDP2 (`--vram sharded`), and per-GPU memory.

    python -m tools.shard_memory --processes 1 2 3 [--root DIR] [--json PATH]   (~10 min on 2 CPU cores)

Measured at the real widths with reduced depth (the configs of tests/test_real_width.py: the I2V-14B DiT with 1 of
its 40 blocks, in bf16 and as city96's Q8_0 GGUF; umT5-XXL with 1 of its 24 layers and a 4,096-token vocabulary):
each of N CPU processes (gloo, under torchrun) loads the files as the real preset does, FSDP2 shards them over the
group (`fantasy.speed.sharding`), and each reports the bytes it holds, split into the repeated layers and the rest.

The full models follow by arithmetic from those figures, per process: DiT = rest + 40 x one block; umT5 = the rest
with its embedding scaled to the real 256,384 tokens + 24 x one layer. The per-GPU table adds what sharding does
not split (`per_gpu_table`): the layers FSDP2 gathers while they run, CLIP, the VAE, wav2vec2, the activations
(split by context parallelism), the VAE decode and a margin, with the figures of `fantasy.weights.dit_choice`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
DIT_BLOCKS, TEXT_LAYERS, TEXT_VOCAB = 40, 24, 256_384
SMALL_BLOCKS, SMALL_LAYERS, SMALL_VOCAB = 1, 1, 4096  # tests/test_real_width.py's reduced depth


@dataclass(frozen=True)
class Files:
    """Where the measured models are: the DiT as a bf16 single file and as city96's Q8_0 GGUF (original Wan keys),
    the folder holding the DiT's `config.json`, Wan-AI's `text_encoder/` folder."""

    dit_bf16: Path
    dit_q8_0: Path
    dit_config: Path
    text_encoder: Path

    def args(self) -> list[str]:
        return [str(self.dit_bf16), str(self.dit_q8_0), str(self.dit_config), str(self.text_encoder)]


def write_files(root: Path) -> Files:
    """The DiT (bf16 single file and Q8_0 GGUF) and umT5 at real width, reduced depth, as the real preset reads them."""
    import torch
    from diffusers import WanTransformer3DModel

    from tools import real_layout

    files = Files(root / "dit-bf16.safetensors", root / "dit-q8_0.gguf", root / "transformer", root / "text_encoder")
    if (root / "done").exists():
        return files
    real_layout.write_umt5_folder(files.text_encoder, SMALL_LAYERS, SMALL_VOCAB, max_shard_size="200MB")
    config = real_layout.dit_config(SMALL_BLOCKS)
    files.dit_config.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        WanTransformer3DModel(**config).save_config(files.dit_config)
    real_layout.write_city96_gguf(files.dit_q8_0, config)
    real_layout.write_bf16_single_file(files.dit_bf16, config)
    (root / "done").write_text("")
    return files


def _split_bytes(model, blocks_prefix: str) -> dict[str, int]:
    """Bytes this process holds of `model`: in its repeated layers (`blocks_prefix`) and in the rest."""
    from torch.distributed.tensor import DTensor

    parts = {"blocks": 0, "rest": 0}
    for name, param in model.named_parameters():
        local = param.to_local() if isinstance(param, DTensor) else param
        parts["blocks" if name.startswith(blocks_prefix) else "rest"] += local.numel() * local.element_size()
    return parts


def embedding_bytes(text_encoder) -> int:
    weight = text_encoder.shared.weight
    from torch.distributed.tensor import DTensor

    local = weight.to_local() if isinstance(weight, DTensor) else weight
    return local.numel() * local.element_size()


def worker(files: Files, out: Path | None = None) -> dict:
    """One process: load, shard over the launched group (if any), report its bytes (also to OUT/rankR.json)."""
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from fantasy.speed.sharding import shard_weights
    from fantasy.weights.quantize import load_single_file_transformer
    from fantasy.weights.real import load_text_encoder

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    report = {}
    for storage, path in (("bf16", files.dit_bf16), ("q8_0", files.dit_q8_0)):
        transformer = load_single_file_transformer(path, files.dit_config, torch.bfloat16,
                                                   gguf=path.suffix == ".gguf")
        text_encoder = load_text_encoder(files.text_encoder, torch.bfloat16) if storage == "bf16" else None
        if world > 1:
            mesh = init_device_mesh("cpu", (world,))
            shard_weights(SimpleNamespace(transformer=transformer, text_encoder=text_encoder), mesh)
        report[f"dit_{storage}"] = _split_bytes(transformer, "blocks.")
        if text_encoder is not None:
            report["umt5"] = _split_bytes(text_encoder, "encoder.block.")
            report["umt5"]["embedding"] = embedding_bytes(text_encoder)
        del transformer, text_encoder
    if out is not None:
        (out / f"rank{rank}.json").write_text(json.dumps(report))
    if world > 1:
        dist.destroy_process_group()
    return report


def measure(files: Files, processes: int, out: Path) -> list[dict]:
    """Each process's report for a run of `processes` (1: no group, no sharding), each in its own process."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    args = ["-m", "tools.shard_memory", "--worker", *files.args(), str(out)]
    command = [sys.executable, *args] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{processes} processes failed:\n{done.stderr[-3000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def full_model_bytes(report: dict) -> dict[str, int]:
    """One process's bytes of the full models, from its report at reduced depth (the module docstring)."""
    umt5 = report["umt5"]
    embedding_full = umt5["embedding"] * TEXT_VOCAB // SMALL_VOCAB
    return {
        "dit_bf16": report["dit_bf16"]["rest"] + DIT_BLOCKS * report["dit_bf16"]["blocks"] // SMALL_BLOCKS,
        "dit_q8_0": report["dit_q8_0"]["rest"] + DIT_BLOCKS * report["dit_q8_0"]["blocks"] // SMALL_BLOCKS,
        "dit_bf16_block": report["dit_bf16"]["blocks"] // SMALL_BLOCKS,
        "dit_q8_0_block": report["dit_q8_0"]["blocks"] // SMALL_BLOCKS,
        "umt5": umt5["rest"] - umt5["embedding"] + embedding_full + TEXT_LAYERS * umt5["blocks"] // SMALL_LAYERS,
        "umt5_embedding": embedding_full,
    }


def per_gpu_table(whole: dict[str, int], gpus: tuple[int, ...] = (1, 2, 4, 8), size: int = 512,
                  frames: int = 81, batch: int = 1) -> list[dict]:
    """GiB per GPU for each DiT storage and GPU count under context parallelism, with the rule of
    `fantasy.weights.dit_choice` (its figures for what is not measured here): `resident` (every GPU holds the
    whole DiT, umT5 comes to the GPU while it encodes) and `sharded` (DiT and umT5 split N ways; two DiT blocks,
    or umT5's embedding and two layers, gathered at a time). Activations are split N ways by context parallelism
    in both. `whole`: `full_model_bytes` of the 1-process run."""
    from fantasy.weights.dit_choice import (
        ACTIVATION_BYTES_PER_TOKEN,
        AUDIO_PARAMS,
        CLIP_PARAMS,
        MARGIN_BYTES,
        VAE_DECODE_BYTES,
        VAE_PARAMS,
        video_tokens,
    )

    replicated = CLIP_PARAMS * 4 + VAE_PARAMS * 4 + AUDIO_PARAMS * 4
    activations = video_tokens(size, frames) * ACTIVATION_BYTES_PER_TOKEN * batch
    umt5_layer = (whole["umt5"] - whole["umt5_embedding"]) // TEXT_LAYERS
    rows = []
    for storage in ("bf16", "q8_0"):
        dit, block = whole[f"dit_{storage}"], whole[f"dit_{storage}_block"]
        for n in gpus:
            resident = dit + replicated + max(whole["umt5"], activations // n, VAE_DECODE_BYTES) + MARGIN_BYTES
            gathered = max(2 * block, whole["umt5_embedding"] + 2 * umt5_layer)
            sharded = ((dit + whole["umt5"]) // n + gathered + replicated + max(activations // n, VAE_DECODE_BYTES)
                       + MARGIN_BYTES)
            rows.append({"storage": storage, "gpus": n, "shards_gib": round((dit + whole["umt5"]) / n / GiB, 1),
                         "resident_gib": round(resident / GiB, 1),
                         "sharded_gib": round(sharded / GiB, 1) if n > 1 else None})
    return rows


def format_table(reports: dict[int, list[dict]], rows: list[dict]) -> str:
    lines = ["Parameter bytes per process at real width, reduced depth (DiT 1 block, umT5 1 layer, vocab 4,096):", "",
             "| processes | rank | DiT bf16 (MB) | DiT Q8_0 (MB) | umT5 bf16 (MB) |", "|---|---|---|---|---|"]
    for n, ranks in sorted(reports.items()):
        for r, rep in enumerate(ranks):
            total = {k: (rep[k]["blocks"] + rep[k]["rest"]) / 1e6 for k in ("dit_bf16", "dit_q8_0", "umt5")}
            lines.append(f"| {n} | {r} | {total['dit_bf16']:.1f} | {total['dit_q8_0']:.1f} | {total['umt5']:.1f} |")
    lines += ["", "Per GPU at 512x512x81, on paper (GiB):", "",
              "| DiT | GPUs | DiT + umT5 parameters per GPU, sharded | `--vram resident` | `--vram sharded` |",
              "|---|---|---|---|---|"]
    for row in rows:
        sharded = "—" if row["sharded_gib"] is None else f"{row['sharded_gib']:.1f}"
        lines.append(f"| {row['storage']} | {row['gpus']} | {row['shards_gib']:.1f} | {row['resident_gib']:.1f} "
                     f"| {sharded} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--root", default=None, help="where the real-width files are (written once; default: temp)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        *paths, out = args.worker
        worker(Files(*map(Path, paths)), Path(out))
        return 0
    root = Path(args.root or Path(tempfile.gettempdir()) / "fantasy-shard-bench")
    files = write_files(root)
    reports = {n: measure(files, n, root / f"run-{n}") for n in args.processes}
    whole = full_model_bytes(reports[1][0]) if 1 in reports else None
    rows = per_gpu_table(whole) if whole else []
    print(format_table(reports, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"reports": reports, "whole": whole, "table": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
