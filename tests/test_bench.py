"""`python -m fantasy bench`: the FLOP floor, the GPU benchmark's tiny dry run, and the CPU end-to-end timing."""

import json

import pytest
import torch

from fantasy.bench.flops import PassFlops, pass_flops, peak_tflops, video_tokens
from fantasy.bench.models import FULL
from fantasy.cli import main

from .conftest import NO_CUDA


def test_flop_count_equals_torch_flop_counter_on_a_real_forward():
    """Every matmul counted, with and without the audio branch (SDPA on its math path, which the counter sees)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from fantasy.model.adapter import install_audio_adapter
    from fantasy.weights.tiny import CONTEXT_DIM, tiny_transformer

    model = tiny_transformer()
    audio = install_audio_adapter(model, CONTEXT_DIM, 17)
    g = torch.Generator().manual_seed(0)
    x = dict(hidden_states=torch.randn(1, 36, 3, 8, 16, generator=g), timestep=torch.tensor([700.0]),
             encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
             encoder_hidden_states_image=torch.randn(1, 17, 16, generator=g), return_dict=False)
    windows, lengths = torch.randn(1, 3, 5, CONTEXT_DIM, generator=g), torch.tensor([5, 3, 5])
    tokens = video_tokens(dict(model.config), 9, 128, 64)
    assert tokens == 3 * 4 * 8
    for scale, branch in ((1.0, (3, 5, CONTEXT_DIM)), (0.0, None)):
        with torch.no_grad(), audio.use(windows, lengths, scale), sdpa_kernel([SDPBackend.MATH]), \
                FlopCounterMode(display=False) as counter:
            model(**x)
        assert counter.get_total_flops() == pass_flops(dict(model.config), tokens, 512, 17, branch).total


def test_the_floor_at_512x512x81_is_091_pflop_per_pass():
    config = FULL["config"]
    tokens = video_tokens(config, 81, 512, 512)
    assert tokens == 21_504
    flops = pass_flops(config, tokens, 512, 257, (21, 21, 2048))
    assert 0.90e15 < flops.total < 0.92e15
    assert 510e12 < flops.block_linear < 520e12  # 514 T of video-token linears + ~3 T context K/V
    assert 390e12 < flops.attention < 395e12  # self 379 T + cross 13.5 T + audio
    assert video_tokens(config, 81, 832, 480) == 32_760
    assert 1.68e15 < pass_flops(config, 32_760, 512, 257).total < 1.70e15
    # At an H100's dense peaks: bf16 everywhere, or fp8 block linears.
    assert flops.floor_seconds(989.0) == pytest.approx(flops.total / 989e12)
    assert flops.floor_seconds(989.0, 1979.0) == pytest.approx(
        flops.block_linear / 1979e12 + (flops.attention + flops.other) / 989e12)


def test_full_size_models_have_the_expected_parameter_counts():
    """Built on the meta device (no memory). The DiT (16.39 B) and VAE (126.9 M) match the counts of the released
    weights; umT5-XXL's encoder (5.68 B), CLIP ViT-H/14 (0.63 B) and wav2vec2-base (94 M) their known sizes."""
    from fantasy.bench.models import build_random_bf16, built_on, full_encoders

    meta = torch.device("meta")
    counts = {name: sum(p.numel() for p in built_on(meta, torch.bfloat16, build).parameters())
              for name, build in full_encoders().items()}
    counts["dit"] = sum(p.numel() for p in build_random_bf16(FULL["config"], meta, torch.bfloat16).parameters())
    assert counts == {"text_encoder": 5_680_910_336,  # umT5-XXL encoder
                      "image_encoder": 630_766_080,  # CLIP ViT-H/14 vision tower
                      "audio_encoder": 94_371_712,  # wav2vec2-base
                      "audio_proj": 1_576_960,  # 768 -> 2048 + LayerNorm
                      "vae": 126_892_531,  # Wan2.1 VAE
                      "dit": 16_394_878_784}  # Wan2.1-I2V-14B


def test_peak_rates_come_from_the_device_name():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, 1979.0)
    assert peak_tflops("NVIDIA H100 PCIe") == (756.0, 1513.0)
    assert peak_tflops("NVIDIA H200") == (989.0, 1979.0)
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == (312.0, None)
    assert peak_tflops("Tesla T4") is None


@NO_CUDA  # on a GPU the dry run runs there, in bf16
def test_gpu_bench_tiny_dry_run_reports_steps_pieces_floor_and_estimates(tmp_path, capsys):
    path = tmp_path / "gpu.json"
    code = main(["bench", "--gpu", "--tiny", "--repeat", "1", "--peak-tflops", "1", "--json", str(path),
                 "--attention", "math", "--batch-guidance"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(path.read_text())
    assert report["mode"] == "gpu" and report["tiny"] and report["device"] == "CPU"
    assert report["peak_tflops"] == {"bf16": 1.0, "fp8": 2.0}
    assert report["applied"] == ["attention backend: _native_math", "batched guidance"]
    assert [r["size"] for r in report["steps"]] == ["64x64x9", "96x64x9"]
    for row in report["steps"]:
        assert row["error"] is None and row["step_s"] > 0 and row["pass_s"] > 0
        assert row["floor_fraction"] == pytest.approx(row["floor_step_s"] / row["step_s"])
    pieces = {p["key"]: p["seconds"] for p in report["pieces"]}
    assert list(pieces) == ["text", "image", "audio", "vae_encode", "vae_decode", "preview"] and all(pieces.values())
    est, first = report["estimates"], report["steps"][0]
    fixed = pieces["image"] + pieces["audio"] + pieces["vae_encode"] + pieces["vae_decode"]
    assert est["clip_s"] == pytest.approx(fixed + pieces["text"] + 30 * first["step_s"])
    assert est["few_step_clip_s"] == pytest.approx(fixed + pieces["text"] / 2 + 4 * first["pass_s"])
    assert "| 64x64x9 | 48 |" in out and "fraction of floor" in out
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    assert _AttentionBackendRegistry.get_active_backend()[0] == AttentionBackendName.NATIVE  # restored


@NO_CUDA
def test_gpu_bench_without_a_gpu_says_so(capsys):
    assert main(["bench", "--gpu"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--step-cache", "fbc"], "step cache's hit rate"),
    (["--sizes", "100x64"], "multiples of 16"),
    (["--sizes", "wide"], "WIDTHxHEIGHT"),
])
def test_gpu_bench_bad_requests_exit_2(capsys, flags, message):
    assert main(["bench", "--gpu", "--tiny", *flags]) == 2
    assert message in capsys.readouterr().err


def test_cpu_bench_times_the_tiny_run_end_to_end(tmp_path, capsys):
    path = tmp_path / "cpu.json"
    assert main(["bench", "--cpu", "--steps", "2", "--size", "64", "--max-duration", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["run"] == {"frames": 25, "size": "64x64", "windows": 1, "steps": 2, "passes_per_step": 3}
    assert report["steps_timed"] == 2 and report["s_per_step"] > 0
    assert report["s_per_pass"] == pytest.approx(report["s_per_step"] / 3)
    assert report["total_s"] >= report["conditioning_s"] + report["decode_write_s"]
    out = capsys.readouterr().out
    assert "| load s | generate s | s/step |" in out
    # the live preview ran as in the app: the first step always, later ones within 2 % of the step time
    preview = report["preview"]
    assert 1 <= preview["previews"] <= 2 and preview["steps"] == 2
    assert preview["every_k_steps"] == 2 / preview["previews"] and preview["preview_ms"] > 0
    assert preview["cost_vs_step"] == pytest.approx(preview["preview_ms"] / 1000 / report["s_per_step"])
    assert preview["overhead"] == pytest.approx(preview["cost_vs_step"] * preview["previews"] / 2)
    assert preview["encode_ms"] > 0
    real = report["preview_512x512x81"]
    assert real["latent"] == "1x16x21x64x64" and real["frames"] == 21 and real["map_ms"] > 0
    assert "live preview (budget 2 % of the step time):" in out and "| 1x16x21x64x64 latent (512x512x81) |" in out


def test_stage_clock_splits_steps_conditioning_and_decode():
    """Two windows of 3 steps: step gaps within a window are steps; the gap before a window's first step is
    conditioning + one step; everything from a window's last step to the next denoise report is decoding."""
    from fantasy.bench.cpu_run import StageClock

    clock = StageClock(started=0.0)
    times = {"denoise": [2.0, 3.0, 4.0, 8.0, 9.0, 10.0], "decode": [5.0, 6.0, 11.0]}
    events = sorted((t, stage) for stage, ts in times.items() for t in ts)
    clock.events = [(stage, t) for t, stage in events]
    split = clock.split(finished=12.0)
    assert split["s_per_step"] == 1.0 and split["steps_timed"] == 6
    assert split["conditioning_s"] == (2.0 - 1.0) + (2.0 - 1.0)  # 0->2 and 6->8, less one step each
    assert split["decode_write_s"] == (6.0 - 4.0) + (12.0 - 10.0)


def test_pass_flops_split_adds_up():
    flops = PassFlops(block_linear=3.0, attention=2.0, other=1.0)
    assert flops.total == 6.0
    assert flops.floor_seconds(1e-12) == pytest.approx(6.0)
    assert flops.floor_seconds(1e-12, 3e-12) == pytest.approx(4.0)  # the block linears 3x faster
