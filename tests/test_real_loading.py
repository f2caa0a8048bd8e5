"""The real preset's loader on a tiny weights dir in the real layout: GGUF, torchao, fp8 storage, VRAM modes.

Every test goes through `load_pipeline("real", ...)` -> `fantasy.weights.real.load_real_pipeline`, the
function users call; only the device (CPU, allowed explicitly) and the compute dtype (fp32) differ.

Tolerances, as max |output - reference| / max |reference| on one transformer forward:
  GGUF Q8_0 vs the fp32 model it was written from ........ 2 %  (seen: 0.5 %)
  torchao int8 weight-only vs the same bf16 file unquantized  2 %  (seen: ~0.5 %)
  torchao fp8 (e4m3) weight-only, and fp8 layerwise storage  8 %  (seen: ~3.5 %; e4m3 keeps 3 mantissa bits)
A model with other random weights is ~100 % away, so these bounds do tell a right load from a wrong one.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import HookRegistry
from diffusers.quantizers.gguf.utils import GGUFLinear, GGUFParameter
from PIL import Image

from fantasy.weights.presets import load_pipeline
from fantasy.weights.quantize import FP8_STORAGE, is_quantized_weight
from fantasy.weights.real import DIT_FILES

from .fake_weights import IMAGE_DIM, build_weights_dir, gguf_transformer

TOLERANCE = {"q8_0": 0.02, "bf16-int8": 0.02, "bf16-fp8": 0.08, "bf16-fp8-storage": 0.08}


# Nothing may come from this machine's Hugging Face cache (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("empty_hf_cache")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return root, build_weights_dir(root)


@pytest.fixture(scope="module")
def loaded(weights):
    """Pipelines by (dit, vram), loaded once each."""
    root, _ = weights
    cache = {}

    def get(dit: str, vram: str = "resident"):
        if (dit, vram) not in cache:
            cache[dit, vram] = load_pipeline("real", device="cpu", weights=root, dit=dit, vram=vram,
                                             allow_cpu=True, dtype=torch.float32)
        return cache[dit, vram]

    return get


@pytest.fixture(scope="module")
def dit_inputs():
    gen = torch.Generator().manual_seed(11)
    return {
        "hidden_states": torch.randn(1, 36, 3, 4, 4, generator=gen), "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 512, 32, generator=gen),
        "encoder_hidden_states_image": torch.randn(1, 17, IMAGE_DIM, generator=gen),
    }


def forward(transformer, inputs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs, return_dict=False)[0]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_gguf_file_with_original_wan_keys_loads_quantized(weights, loaded, dit_inputs):
    _, info = weights
    transformer = loaded("q8_0").transformer
    assert info["quantized"] >= 20  # the fixture really wrote Q8_0 blocks
    weight = transformer.blocks[0].attn1.to_q.weight
    assert isinstance(transformer.blocks[0].attn1.to_q, GGUFLinear)
    assert isinstance(weight, GGUFParameter) and weight.quant_type.name == "Q8_0"
    quantized = [n for n, p in transformer.named_parameters() if isinstance(p, GGUFParameter)]
    assert len(quantized) == info["quantized"]  # every Q8_0 tensor stays quantized
    # city96's F16 time embedding (as in the real file) loads into the fp32 time embedder, exactly its F16 values
    embedder, written = transformer.condition_embedder.time_embedder, info["reference"].condition_embedder.time_embedder
    for linear in ("linear_1", "linear_2"):
        loaded_weight, source = getattr(embedder, linear).weight, getattr(written, linear).weight
        assert loaded_weight.dtype == torch.float32 and not isinstance(loaded_weight, GGUFParameter)
        assert torch.equal(loaded_weight, source.half().float()) and not torch.equal(loaded_weight, source)
    err = relative_error(forward(transformer, dit_inputs), forward(info["reference"], dit_inputs))
    assert 0 < err < TOLERANCE["q8_0"]


def test_the_fake_gguf_holds_city96s_tensor_types(weights):
    """The types of the real Q8_0 file, key by key (reference/turn2-findings.md §4): a loader path for F16 that only
    the real file exercised went untested while the fake held F32 and Q8_0 alone (issue 25)."""
    import gguf

    root, info = weights
    reader = gguf.GGUFReader(str(root / DIT_FILES["q8_0"].folder / DIT_FILES["q8_0"].required[0]))
    stored = {t.name: t.tensor_type.name for t in reader.tensors}
    assert stored == info["gguf_types"]
    by_type: dict[str, set[str]] = {}
    for name, kind in stored.items():
        by_type.setdefault(kind, set()).add(name)
    assert set(by_type) == {"F32", "F16", "Q8_0"}
    assert by_type["F16"] == {"time_embedding.0.weight", "time_embedding.2.weight"}
    assert all(t.data.ndim == 1 or name.endswith(".modulation") or name == "patch_embedding.weight"
               for t in reader.tensors for name in [t.name] if name in by_type["F32"])
    assert {"time_projection.1.weight", "img_emb.proj.1.weight", "head.head.weight", "blocks.0.ffn.0.weight",
            "blocks.1.cross_attn.k_img.weight"} <= by_type["Q8_0"]
    assert all(not name.endswith(".bias") for name in by_type["Q8_0"] | by_type["F16"])


def test_a_different_model_is_far_outside_the_tolerance(weights, dit_inputs):
    _, info = weights
    other = gguf_transformer(seed=1)
    assert relative_error(forward(other, dit_inputs), forward(info["reference"], dit_inputs)) > 0.3


@pytest.mark.parametrize("dit", ["bf16-int8", "bf16-fp8"])
def test_torchao_weight_only_stays_close_to_unquantized(loaded, dit_inputs, dit):
    reference = forward(loaded("bf16").transformer, dit_inputs)
    transformer = loaded(dit).transformer
    linear = transformer.blocks[0].ffn.net[0].proj
    assert is_quantized_weight(linear.weight)
    assert type(linear.weight).__name__ == ("Int8Tensor" if dit == "bf16-int8" else "Float8Tensor")
    assert not any(is_quantized_weight(p) for p in loaded("bf16").transformer.parameters())
    err = relative_error(forward(transformer, dit_inputs), reference)
    assert 0 < err < TOLERANCE[dit]


def test_fp8_storage_keeps_weights_in_fp8_and_output_close(loaded, dit_inputs):
    reference = forward(loaded("bf16").transformer, dit_inputs)
    transformer = loaded("bf16-fp8-storage").transformer
    assert transformer.blocks[0].attn1.to_q.weight.dtype == FP8_STORAGE
    assert transformer.blocks[1].ffn.net[2].weight.dtype == FP8_STORAGE
    err = relative_error(forward(transformer, dit_inputs), reference)
    assert 0 < err < TOLERANCE["bf16-fp8-storage"]


@pytest.mark.parametrize("dit", ["q8_0", "bf16", "bf16-int8", "bf16-fp8", "bf16-fp8-storage"])
def test_adapter_is_never_quantized_or_cast(weights, loaded, dit):
    _, info = weights
    pipe = loaded(dit)
    for i, block in enumerate(pipe.transformer.blocks):
        for name in ("k_proj", "v_proj"):
            weight = getattr(block.attn2.processor, name).weight
            assert type(weight) is torch.nn.Parameter and type(weight.data) is torch.Tensor
            assert weight.dtype == torch.float32 and not is_quantized_weight(weight)
            expected = info["adapter"][f"blocks.{i}.attn2.processor.{name}.weight"].float()
            assert torch.equal(weight.data, expected)
    assert torch.equal(pipe.audio_proj.proj.weight.data, info["adapter"]["audio_proj.proj.weight"].float())


def test_layerwise_casting_skips_adapter_but_keeps_diffusers_defaults(loaded):
    transformer = loaded("bf16-fp8-storage").transformer

    def cast(module) -> bool:
        registry = getattr(module, "_diffusers_hook", None)
        return registry is not None and registry.get_hook("layerwise_casting") is not None

    assert cast(transformer.blocks[0].attn1.to_q)
    assert not cast(transformer.blocks[0].attn2.processor.k_proj)
    assert not cast(transformer.proj_out)  # diffusers' default pattern `^proj_out$`, re-added
    assert not cast(transformer.blocks[0].norm2)
    assert not cast(transformer.patch_embedding)


def _run(pipe, steps: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    windows = torch.randn(1, 2, 5, 16, generator=gen)
    lengths = torch.tensor([3, 5])
    image = Image.new("RGB", (32, 32), (180, 120, 90))
    return pipe(image, windows, lengths, "a person is talking", num_frames=5, num_inference_steps=steps,
                generator=torch.Generator().manual_seed(3))


def _hook(module, name: str):
    registry = getattr(module, "_diffusers_hook", None)
    return None if registry is None else HookRegistry.check_if_exists_or_initialize(module).get_hook(name)


@pytest.mark.parametrize("vram", ["model-offload", "group-offload"])
def test_vram_modes_give_the_resident_result(loaded, vram):
    resident = loaded("q8_0", "resident")
    offloaded = loaded("q8_0", vram)
    assert torch.equal(_run(offloaded), _run(resident))
    if vram == "model-offload":
        assert hasattr(offloaded.transformer, "_hf_hook") and hasattr(offloaded.text_encoder, "_hf_hook")
    else:
        assert _hook(offloaded.transformer.blocks[0], "group_offloading") is not None
        assert _hook(offloaded.text_encoder, "group_offloading") is not None
        assert _hook(offloaded.vae, "group_offloading") is None  # left resident


def test_resident_mode_offloads_only_the_text_encoder(loaded):
    pipe = loaded("q8_0", "resident")
    assert _hook(pipe.text_encoder, "group_offloading") is not None
    assert _hook(pipe.transformer.blocks[0], "group_offloading") is None
    assert not hasattr(pipe.transformer, "_hf_hook")
    assert pipe.vae.use_tiling and pipe.vae.dtype == torch.float32
    assert pipe.vae.tile_sample_min_width == pipe.vae.tile_sample_min_height == 512  # 512 px streams untiled


def test_bf16_single_file_keeps_diffusers_fp32_modules_in_fp32(weights):
    from fantasy.weights.quantize import load_single_file_transformer
    from fantasy.weights.real import DIT_FILES, WAN_PART

    root, _ = weights
    part = DIT_FILES["bf16"]
    transformer = load_single_file_transformer(root / part.folder / part.required[0], root / WAN_PART.folder /
                                               "transformer", compute_dtype=torch.bfloat16, gguf=False)
    assert transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert transformer.blocks[0].norm2.weight.dtype == torch.float32
    assert transformer.blocks[0].scale_shift_table.dtype == torch.float32
    assert transformer.scale_shift_table.dtype == torch.float32
    assert transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
