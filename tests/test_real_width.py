"""The real preset at real widths, on the CPU: the released file layouts, the real configurations at reduced depth.

`tools/real_layout.py` writes, with random weights, every file the real preset reads, under its real
name and key spelling: the 720P DiT config with 1 of its 40 blocks (5120 wide, 40 heads, FFN 13824,
the image K/V branch) as city96's GGUF Q8_0 (its tensor-type mix) and as Comfy-Org's bf16 single file,
both with the original Wan keys; Wan-AI's folder with umT5-XXL at full width (d_model 4096, 64 heads,
d_ff 10240) and 1 of 24 layers, sharded in fp32 with an index, CLIP ViT-H/14 with 2 of 32 layers
(fp16, with its projection), the real Wan VAE; the full wav2vec2-base as the Hub's CTC checkpoint
(`lm_head`, `weight_g`/`weight_v`); the adapter as the released fp32 `.ckpt` for that one block.

umT5's vocabulary is cut from 256,384 to 4,096 tokens: the full embedding alone is 1.05 B parameters
(4.2 GB in fp32, 2.1 GB more in bf16), beyond this test's ~8 GB; every other width is the real one.
The prompt tokenizer is a word-level `tokenizer.json` whose ids fit that vocabulary.

Host RAM is measured in child processes (`tools/host_memory.py`): anonymous memory sampled every
millisecond (what must fit in RAM) and the kernel's peak RSS (which also counts the checkpoint's pages
mapped from the page cache, reclaimable). Each bound is stated at its test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fantasy.weights.real import (
    ADAPTER_PART,
    ADAPTER_SAFETENSORS,
    DIT_FILES,
    WAN_PART,
    WAV2VEC_PART,
    check_real_weights,
    files_read,
)
from tests.mp4_probe import probe
from tools import real_layout

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

DIT_BLOCKS, TEXT_LAYERS, TEXT_VOCAB, CLIP_LAYERS = 1, 1, 4096, 2
GB = 1e9


# Nothing may come from this machine's Hugging Face cache (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("empty_hf_cache")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real-width")
    real_layout.write_wan_folder(root / WAN_PART.folder, DIT_BLOCKS, TEXT_LAYERS, TEXT_VOCAB, CLIP_LAYERS,
                                 max_shard_size="200MB")
    gguf = DIT_FILES["q8_0"]
    (root / gguf.folder).mkdir()
    real_layout.write_city96_gguf(root / gguf.folder / gguf.required[0], real_layout.dit_config(DIT_BLOCKS))
    bf16 = DIT_FILES["bf16"]
    real_layout.write_bf16_single_file(root / bf16.folder / bf16.required[0], real_layout.dit_config(DIT_BLOCKS))
    real_layout.write_wav2vec2_folder(root / WAV2VEC_PART.folder)
    real_layout.write_official_ckpt(root / ADAPTER_PART.folder / ADAPTER_PART.required[0], DIT_BLOCKS)
    return root


class OpenedFiles:
    """Files Python opens for reading under a folder while recording (an audit hook; it cannot be removed,
    so it records only between `start` and `stop`). safetensors opens its files from Rust, unseen here."""

    def __init__(self):
        self.folder: str | None = None
        self.paths: set[Path] = set()
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.folder is not None and event == "open" and isinstance(args[0], str) and args[0].startswith(self.folder):
            mode = args[1] if isinstance(args[1], str) else "r"
            if "r" in mode and "+" not in mode:
                self.paths.add(Path(args[0]))

    def start(self, folder: Path) -> None:
        self.folder, self.paths = str(folder), set()

    def stop(self) -> set[Path]:
        self.folder = None
        return self.paths


@pytest.mark.slow
def test_real_preset_loads_quietly_reads_only_its_files_and_generates_a_probed_mp4(root, capfd, tmp_path):
    import torchao  # noqa: F401  (its import notices are not a load report: out of the way first)
    from diffusers.quantizers.gguf.utils import GGUFParameter
    from transformers import CLIPVisionModelWithProjection, Wav2Vec2Model

    from fantasy.generation import Settings, generate
    from fantasy.weights.presets import get_preset, load_pipeline

    capfd.readouterr()
    opened = OpenedFiles()
    opened.start(root)
    pipe = load_pipeline("real", device="cpu", weights=root, allow_cpu=True, dtype=torch.bfloat16)
    python_reads = opened.stop()
    printed = capfd.readouterr()

    # Quiet: no load report, progress bar or fallback notice; only our own one-time conversion line.
    converted = root / ADAPTER_SAFETENSORS
    ckpt = root / ADAPTER_PART.folder / ADAPTER_PART.required[0]
    assert printed.out == ""
    assert printed.err.splitlines() == [f"converted {ckpt} -> {converted} (5 tensors); later runs read the safetensors"]
    # --dit not given, no CUDA GPU: the rule picks Q8_0 and says why.
    assert (pipe.dit_choice.mode, pipe.dit_choice.auto) == ("q8_0", True)
    assert pipe.dit_choice.describe() == "q8_0 (auto: no CUDA GPU to fit bf16 on)"

    # The required-file list is exactly what the loader reads: the folder holds nothing else (but the
    # other DiT file and the released .ckpt), and every file Python opens is on the list; safetensors
    # reads from Rust, unseen by the hook, so those are checked by the models holding their tensors below.
    read = set(files_read(check_real_weights(root, "q8_0")))
    on_disk = {p for p in root.rglob("*") if p.is_file()}
    assert on_disk == read | {ckpt, root / DIT_FILES["bf16"].folder / DIT_FILES["bf16"].required[0]}
    assert python_reads <= read | {ckpt}
    assert {p for p in read if p.suffix != ".safetensors"} <= python_reads
    assert sum(p.parent.name == "text_encoder" and p.name.startswith("model-") for p in read) >= 4  # sharded

    # Real widths, real formats, loaded as the release's files hold them.
    to_q = pipe.transformer.blocks[0].attn1.to_q.weight
    assert isinstance(to_q, GGUFParameter) and to_q.quant_type.name == "Q8_0" and to_q.shape == (5120, 5440)
    assert pipe.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32  # F16 in file
    assert pipe.text_encoder.config.d_model == 4096 and pipe.text_encoder.shared.weight.dtype == torch.bfloat16
    assert type(pipe.image_encoder) is CLIPVisionModelWithProjection and pipe.image_encoder.dtype == torch.float32
    assert type(pipe.audio_encoder) is Wav2Vec2Model and pipe.audio_encoder.config.hidden_size == 768
    with safe_open(str(root / WAV2VEC_PART.folder / "model.safetensors"), "pt") as f:
        weight_v = f.get_tensor("wav2vec2.encoder.pos_conv_embed.conv.weight_v")
    conv = pipe.audio_encoder.encoder.pos_conv_embed.conv
    assert torch.equal(conv.parametrizations.weight.original1, weight_v)  # the legacy weight_v landed
    released = real_layout.official_adapter_state(DIT_BLOCKS)
    assert torch.equal(pipe.transformer.blocks[0].attn2.processor.k_proj.weight,
                       released["audio_processor"]["blocks.0.cross_attn.processor.k_proj.weight"].to(torch.bfloat16))

    # One short generation through the same call the CLI makes: 9 frames at 64 px, 1 step x 3 passes.
    out = tmp_path / "real-width.mp4"
    settings = Settings(steps=1, max_frames=9, max_duration=0.3, longest_edge=64)
    result = generate(pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, out, settings, get_preset("real"))
    info = probe(out)
    assert (result.num_frames, result.passes_per_step, result.windows) == (9, 3, 1)
    assert (info.frames, info.width, info.height, info.fps) == (9, 64, 64, 23.0)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert abs(info.audio_duration - 9 / 23) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("case", range(4), ids=["gguf", "bf16", "umt5", "ckpt"])
def test_host_ram_of_each_loader_stays_near_the_tensor_set_it_holds(root, tmp_path, case):
    """Peak anonymous memory (what must fit in RAM) <= 1.2x the tensor set each loader must hold, for all four.

    And the kernel's peak RSS, page cache included: the GGUF and the bf16 file are never copied (<= 1.2x the
    file; diffusers' own GGUF reader held 1.9-2.1x), umT5 maps one shard at a time (<= 1.2x the model + one
    shard; transformers 5 kept every fp32 shard mapped: 3x), and the pickle is mapped rather than read in
    (<= 1.2x the output + the pickle; reading it in held fp32 + bf16 anonymously: 3x the output).
    """
    from tools.host_memory import measure
    from tools.loader_ram import loader_cases

    spec = loader_cases(root, tmp_path)[case]
    peak = measure(spec.step, spec.kwargs)
    figures = (f"{spec.name}: set {spec.tensor_set / GB:.3f} GB, anonymous {peak.peak_anon / GB:.3f} GB "
               f"({peak.peak_anon / spec.tensor_set:.2f}x), RSS {peak.peak_rss / GB:.3f} GB "
               f"({peak.peak_rss / spec.tensor_set:.2f}x), {peak.samples} samples")
    print(figures)
    assert peak.samples > 100, figures  # the parent really watched the load
    assert peak.peak_anon <= 1.2 * spec.tensor_set, figures
    rss_bound = {"gguf": 1.2 * spec.tensor_set, "bf16": 1.2 * spec.tensor_set,
                 "umt5": 1.2 * (spec.tensor_set + spec.largest_file),
                 "ckpt": 1.2 * (spec.tensor_set + spec.largest_file)}[("gguf", "bf16", "umt5", "ckpt")[case]]
    assert peak.peak_rss <= rss_bound, figures


def test_the_full_model_host_ram_table_in_the_docs_is_what_the_code_computes():
    from tools.loader_ram import FULL, full_model_host_ram

    assert real_layout.city96_bytes(real_layout.dit_config(40)) == FULL["dit_q8_0"]  # 17.46 GB of tensors
    readme = (Path(__file__).resolve().parent.parent / "docs" / "weights.md").read_text()
    needs = {(dit, vram): round(need) for dit, vram, need, _ in full_model_host_ram(1.0)}
    assert needs == {("q8_0", "resident"): 15, ("bf16", "resident"): 15, ("bf16-fp8-storage", "resident"): 33,
                     ("q8_0", "model-offload"): 34, ("bf16", "model-offload"): 49, ("q8_0", "group-offload"): 45,
                     ("bf16", "group-offload"): 61}
    for (dit, vram), need in needs.items():
        if dit != "bf16" or vram != "resident":  # the resident rows share one line
            assert f"| `{dit}` | `{vram}` | ~{need} GB |" in readme or f"`{vram}` | ~{need} GB |" in readme


# ---- the weights sharded over processes (FSDP2, `--vram sharded`) at real width ----------------------------


# The full models' bytes per process alone (`tools.shard_memory.full_model_bytes` of a 1-process run: DiT = rest +
# 40 blocks, umT5 = rest with the 256,384-token embedding + 24 layers); the docs' per-GPU table follows from these.
WHOLE = {"dit_bf16": 32_848_151_168, "dit_q8_0": 17_509_655_168, "dit_bf16_block": 807_758_848,
         "dit_q8_0_block": 429_288_448, "umt5": 11_361_820_672, "umt5_embedding": 2_100_297_728}


def shard_files(root: Path):
    from tools.shard_memory import Files

    wan = root / WAN_PART.folder
    return Files(root / DIT_FILES["bf16"].folder / DIT_FILES["bf16"].required[0],
                 root / DIT_FILES["q8_0"].folder / DIT_FILES["q8_0"].required[0], wan / "transformer",
                 wan / "text_encoder")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_processes_each_hold_half_of_the_dit_and_umt5_at_real_width(root, tmp_path):
    """FSDP2 over 2 gloo processes: each holds half the parameter bytes of the 5120-wide DiT (bf16 and Q8_0) and of
    the 4096-wide umT5, to the dim-0 padding (`python -m tools.shard_memory` measures 1, 2 and 3 for the docs)."""
    from tools.shard_memory import full_model_bytes, measure

    files = shard_files(root)
    whole = measure(files, 1, tmp_path / "one")[0]
    assert full_model_bytes(whole) == WHOLE
    ranks = measure(files, 2, tmp_path / "two")
    for model in ("dit_bf16", "dit_q8_0", "umt5"):
        full = whole[model]["blocks"] + whole[model]["rest"]
        held = [r[model]["blocks"] + r[model]["rest"] for r in ranks]
        assert sum(held) >= full and max(held) <= full / 2 + 1e6, (model, full, held)
        assert full > 4e8  # real widths: hundreds of MB per model


def test_the_per_gpu_table_in_the_docs_is_what_the_measured_sizes_give():
    """docs/several-gpus.md's table = `tools.shard_memory.per_gpu_table` of the full models' bytes (`WHOLE`, which
    the test above measures again on the files it loads)."""
    from tools.shard_memory import per_gpu_table

    doc = (Path(__file__).resolve().parent.parent / "docs" / "several-gpus.md").read_text()
    for row in per_gpu_table(WHOLE):
        sharded = "—" if row["sharded_gib"] is None else f"{row['sharded_gib']:.1f}"
        line = f"| {row['storage']} | {row['gpus']} | {row['shards_gib']:.1f} | {row['resident_gib']:.1f} | {sharded} |"
        assert line in doc, line
