"""What the real preset is told to use: the adapter (--adapter, FANTASY_ADAPTER) and the default DiT storage.

The DiT rule (`fantasy.weights.dit_choice`) is checked with faked free-memory figures, alone and through the
real loader on the tiny real-layout weights (tests/fake_weights.py), and where it is shown: the
CLI's result line and the app's status line.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fantasy.app import ui as app
from fantasy.app.studio import Controls, Studio
from fantasy.app.validation import FaceChecker
from fantasy.cli import main
from fantasy.errors import InputFileNotFound
from fantasy.weights.adapter_weights import OFFICIAL_FILE
from fantasy.weights.dit_choice import GiB, bf16_need_bytes, choose_dit
from fantasy.weights.presets import get_preset, load_pipeline
from fantasy.weights.real import ADAPTER_PART, ADAPTER_SAFETENSORS, DIT_FILES, check_real_weights

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from .fake_weights import adapter_state, build_weights_dir
from .test_adapter_weights import official_layout

# Nothing may come from this machine's Hugging Face cache (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("empty_hf_cache")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny weights in the real layout, with the released .ckpt instead of the converted adapter."""
    root = tmp_path_factory.mktemp("weights")
    build_weights_dir(root)
    (root / ADAPTER_SAFETENSORS).unlink()
    (root / ADAPTER_PART.folder).mkdir()
    torch.save(official_layout(), root / ADAPTER_PART.folder / OFFICIAL_FILE)
    return root


@pytest.fixture
def my_adapter(tmp_path):
    """A training checkpoint of the tiny real-layout DiT (2 blocks): the user's own adapter."""
    from safetensors.torch import save_file

    path = tmp_path / "modules.safetensors"
    save_file(adapter_state(2, seed=9), str(path))
    return path


# ---- --adapter ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_given_adapter_is_used_and_the_released_one_is_neither_required_nor_converted(weights, my_adapter):
    paths = check_real_weights(weights, "q8_0", adapter=my_adapter)
    assert paths["adapter"] == my_adapter
    assert not (weights / ADAPTER_SAFETENSORS).exists()  # the 3.4 GB .ckpt was not converted
    pipe = load_pipeline("real", device="cpu", adapter=my_adapter, weights=weights, dit="q8_0", allow_cpu=True,
                         dtype=torch.float32)
    expected = load_file(my_adapter)["blocks.1.attn2.processor.v_proj.weight"].float()
    assert torch.equal(pipe.transformer.blocks[1].attn2.processor.v_proj.weight, expected)
    assert not (weights / ADAPTER_SAFETENSORS).exists()


def test_without_the_released_adapter_a_given_one_is_enough(weights, my_adapter, tmp_path):
    released = weights / ADAPTER_PART.folder / OFFICIAL_FILE
    moved = tmp_path / "elsewhere.ckpt"
    released.rename(moved)
    try:
        assert check_real_weights(weights, "q8_0", adapter=my_adapter)["adapter"] == my_adapter
    finally:
        moved.rename(released)


def test_a_given_adapter_that_does_not_exist_is_one_clear_error(weights, tmp_path):
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(InputFileNotFound, match=r"^Adapter file not found: .*nothing\.safetensors \(given with "
                                                 r"--adapter or FANTASY_ADAPTER\)$"):
        check_real_weights(weights, "q8_0", adapter=missing)


def test_the_app_picks_real_with_a_gpu_the_base_weights_and_the_given_adapter(weights, my_adapter, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("FANTASY_WEIGHTS", str(weights))
    released = weights / ADAPTER_PART.folder / OFFICIAL_FILE
    moved = weights.parent / "elsewhere.ckpt"
    released.rename(moved)
    try:
        assert app.default_preset() == "tiny"  # no adapter at all
        monkeypatch.setenv("FANTASY_ADAPTER", str(my_adapter))
        args = app.parse_args([])
        assert args.adapter == str(my_adapter)
        assert app.default_preset(args.adapter) == "real"  # FANTASY_ADAPTER alone is enough
        assert not (weights / ADAPTER_SAFETENSORS).exists()
        with pytest.raises(InputFileNotFound, match="Adapter file not found"):
            app.default_preset(str(weights / "typo.safetensors"))  # an error, never a silent tiny preset
    finally:
        moved.rename(released)


# ---- the default DiT storage --------------------------------------------------------------------------


def test_the_rule_picks_bf16_when_it_fits_in_free_memory_else_q8_0():
    need = bf16_need_bytes("resident", 512)
    # DiT + adapter in bf16, CLIP, VAE, wav2vec2 + projection in fp32, umT5 in bf16 (the largest transient at
    # 512 px: the activations are 21,504 tokens x 128 KiB = 2.8 GB), 2 GiB margin: 51.4 GB = 47.9 GiB.
    assert need == 34_467_479_168 + 2_528_307_200 + 507_570_124 + 383_794_688 + 11_361_820_672 + 2 * GiB
    assert choose_dit(need, "resident", 512).mode == "bf16"
    assert choose_dit(need - 1, "resident", 512).mode == "q8_0"
    on_h100 = choose_dit(79 * GiB, "resident", 512)
    assert on_h100.describe() == f"bf16 (auto: bf16 needs ~{need / GiB:.1f} GiB at 512 px, 79.0 GiB free)"
    assert choose_dit(44 * GiB, "resident", 512).mode == "q8_0"  # a 48 GB card: Q8_0
    # At 1024 px one pass's activations (86,016 tokens x 128 KiB = 11.27 GB) still fit under umT5's 11.36 GB;
    # three batched passes (--batch-guidance) outgrow it.
    assert bf16_need_bytes("resident", 1024) == need
    assert bf16_need_bytes("resident", 1024, batch=3) == need - 11_361_820_672 + 3 * 86_016 * 128 * 1024
    assert choose_dit(bf16_need_bytes("resident", 1024, batch=3) - 1, "resident", 1024, batch=3).mode == "q8_0"
    # Model offloading needs room for the largest model alone; group offloading always streams Q8_0.
    assert bf16_need_bytes("model-offload", 512) < need
    assert choose_dit(40 * GiB, "model-offload", 512).mode == "bf16"
    assert choose_dit(139 * GiB, "group-offload", 512).mode == "q8_0"
    assert choose_dit(None, "resident", 512).describe() == "q8_0 (auto: no CUDA GPU to fit bf16 on)"
    missing = choose_dit(79 * GiB, "resident", 512, bf16_on_disk=False)
    assert missing.mode == "q8_0" and "the bf16 file is not on disk (python -m fantasy download --dit bf16)" in \
        missing.reason


@pytest.mark.slow
@pytest.mark.parametrize("free_gib, expected", [(79, "bf16"), (40, "q8_0")])
def test_the_real_loader_applies_the_rule_to_the_free_memory(weights, my_adapter, monkeypatch, free_gib, expected):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    monkeypatch.setattr("fantasy.weights.dit_choice.free_vram_bytes", lambda device: free_gib * GiB)
    pipe = load_pipeline("real", device="cpu", weights=weights, allow_cpu=True, dtype=torch.float32, adapter=my_adapter)
    assert pipe.dit_choice.mode == expected and pipe.dit_choice.auto
    assert isinstance(pipe.transformer.blocks[0].attn1.to_q.weight, GGUFParameter) == (expected == "q8_0")
    assert f"{free_gib:.1f} GiB free" in pipe.dit_choice.reason


@pytest.mark.slow
def test_bf16_that_fits_but_is_not_on_disk_falls_to_q8_0_and_says_so(weights, my_adapter, monkeypatch, tmp_path):
    part = DIT_FILES["bf16"]
    bf16 = weights / part.folder / part.required[0]
    moved = tmp_path / "bf16.safetensors"
    bf16.rename(moved)
    try:
        monkeypatch.setattr("fantasy.weights.dit_choice.free_vram_bytes", lambda device: 79 * GiB)
        pipe = load_pipeline("real", device="cpu", weights=weights, allow_cpu=True, dtype=torch.float32,
                             adapter=my_adapter)
    finally:
        moved.rename(bf16)
    assert pipe.dit_choice.mode == "q8_0" and "not on disk" in pipe.dit_choice.reason


@pytest.mark.slow
def test_the_cli_result_line_and_the_app_status_line_show_the_choice(monkeypatch, tmp_path, capsys):
    """--dit left out: the loader gets dit=None and the size to fit; the result line says what was picked.

    A tiny pipeline of its own stands in for the real one (the CLI applies --batch-guidance to it)."""
    tiny_pipe = load_pipeline("tiny")
    seen = {}
    choice = choose_dit(79 * GiB, "resident", 64)

    def fake_load(preset, device=None, adapter=None, **options):
        seen.update(options, preset=preset)
        tiny_pipe.dit_choice = choice
        return tiny_pipe

    monkeypatch.setattr("fantasy.weights.presets.load_pipeline", fake_load)
    monkeypatch.setattr("fantasy.weights.real.resolve_device", lambda device, allow_cpu=False: "cpu")  # no GPU here
    out = tmp_path / "out.mp4"
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
                 "--preset", "real", "--size", "64", "--max-frames", "9", "--max-duration", "0.3", "--steps", "1",
                 "--batch-guidance"])
    assert code == 0
    assert seen == {"preset": "real", "dit": None, "vram": "resident", "weights": None, "fit_size": 64,
                    "fit_frames": 9, "fit_batch": 3, "comfy_models": None}
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"; DiT: bf16 (auto: bf16 needs ~{bf16_need_bytes('resident', 64) / GiB:.1f} GiB at 64 px, "
                         "79.0 GiB free)")

    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "skipped"), tmp_path)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(steps=1, longest_edge=64, max_duration_s=1.0))
    assert f" · DiT {choice.describe()} · " in studio.status(job, state="Starting")
    tiny_pipe.dit_choice = None
    assert " · DiT " not in studio.status(job, state="Starting")  # the tiny preset has no choice to show


def test_app_asks_the_loader_to_fit_the_largest_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("FANTASY_COMFY_MODELS", raising=False)
    args = app.parse_args(["--batch-guidance"])
    assert app.real_options(args) == {"dit": None, "vram": "resident", "fit_size": 1024, "fit_batch": 3,
                                      "comfy_models": None}
    (tmp_path / "vae").mkdir()
    assert app.real_options(app.parse_args(["--comfy-models", str(tmp_path)]))["comfy_models"] == tmp_path
    assert app.real_options(app.parse_args(["--dit", "q4_k_m", "--vram", "model-offload"]))["dit"] == "q4_k_m"
    assert get_preset("real").longest_edge <= app.APP_MAX_EDGE
