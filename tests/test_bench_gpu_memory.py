"""`tools/gpu_memory.py`: refuses to run without a GPU unless --tiny; --tiny runs the same code on CPU."""

import importlib.util
import sys
from pathlib import Path

import pytest

from .conftest import NO_CUDA

BENCH = Path(__file__).resolve().parent.parent / "tools" / "gpu_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_memory"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_memory", None)


def test_full_config_is_the_i2v_14b(bench):
    config = bench.FULL["config"]
    assert (config["num_layers"], config["num_attention_heads"] * config["attention_head_dim"]) == (40, 5120)
    assert (config["ffn_dim"], config["in_channels"], config["image_dim"], config["added_kv_proj_dim"],
            config["text_dim"]) == (13824, 36, 1280, 5120, 4096)
    frames, size = bench.FULL["frames"], bench.FULL["size"]
    assert ((frames - 1) // 4 + 1) * (size // 16) ** 2 == 21_504


@NO_CUDA
def test_without_gpu_it_says_so(bench, capsys):
    assert bench.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_tiny_dry_run_of_the_storage_paths(bench, capsys):
    """One mode per loading path: random GGUF through from_single_file, torchao, layerwise casting."""
    assert bench.main(["--tiny", "--modes", "q4_k_m", "bf16-int8", "bf16-fp8-storage"]) == 0
    out = capsys.readouterr().out
    for mode in ("q4_k_m", "bf16-int8", "bf16-fp8-storage"):
        assert f"| {mode} | " in out and f"| {mode} | failed" not in out


def test_tiny_group_offload_and_random_gguf_blocks(bench, capsys):
    from diffusers.quantizers.gguf.utils import GGUFParameter

    state = bench.random_gguf_state(bench.TINY["config"], "q4_k_m")
    weight = state["blocks.0.self_attn.q.weight"]
    assert isinstance(weight, GGUFParameter) and weight.quant_type.name == "Q4_K" and weight.shape == (256, 144)
    assert bench.main(["--tiny", "--vram", "group-offload", "--modes", "bf16"]) == 0
    assert "vram=group-offload" in capsys.readouterr().out


def test_random_gguf_state_is_typed_as_city96s_file(bench):
    """The memory bench's fake GGUF carries the real file's types key by key (issue 25), as tests/fake_weights.py's."""
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from tools.real_layout import city96_type

    state = bench.random_gguf_state(bench.TINY["config"], "q8_0")
    for name, tensor in state.items():
        kind = city96_type(name, tuple(tensor.shape) if not isinstance(tensor, GGUFParameter) else (0, 0))
        if isinstance(tensor, GGUFParameter):
            assert tensor.quant_type.name == "Q8_0" and kind.name == "Q8_0", name
        else:
            assert tensor.dtype == {"F16": torch.float16, "F32": torch.float32}[kind.name], name
    assert state["time_embedding.0.weight"].dtype == torch.float16
    assert state["time_embedding.0.bias"].dtype == torch.float32 and state["blocks.0.modulation"].dtype == torch.float32
