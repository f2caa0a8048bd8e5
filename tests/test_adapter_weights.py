"""Loading the released checkpoint layout, strictness, and conversion to safetensors."""

import pickle
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from fantasy.adapter_weights import (
    convert_checkpoint,
    expected_keys,
    load_adapter_weights,
    read_adapter_weights,
    save_adapter_weights,
)
from fantasy.errors import CheckpointMismatch, WeightsMissing
from fantasy.presets import assemble
from fantasy.tiny import AUDIO_DIM, CONTEXT_DIM, HEAD_DIM, HEADS, tiny_components

INNER = HEADS * HEAD_DIM


def official_layout(num_blocks=2, seed=0):
    """The release's fantasytalking_model.ckpt structure at tiny sizes: 3 + 2 per block tensors."""
    g = torch.Generator().manual_seed(seed)
    proj = OrderedDict(
        [("proj.weight", torch.randn(CONTEXT_DIM, AUDIO_DIM, generator=g)),
         ("norm.weight", torch.randn(CONTEXT_DIM, generator=g)),
         ("norm.bias", torch.randn(CONTEXT_DIM, generator=g))]
    )
    processors = OrderedDict()
    for i in range(num_blocks):
        for n in "kv":
            processors[f"blocks.{i}.cross_attn.processor.{n}_proj.weight"] = torch.randn(INNER, CONTEXT_DIM, generator=g)
    return {"proj_model": proj, "audio_processor": processors}


@pytest.fixture
def pipe():
    return assemble(tiny_components())


def test_official_checkpoint_loads_every_tensor(tmp_path, pipe):
    ckpt = official_layout()
    path = tmp_path / "fantasytalking_model.ckpt"
    torch.save(ckpt, path)
    assert load_adapter_weights(pipe.transformer, pipe.audio_proj, path) == 3 + 2 * 2
    assert torch.equal(pipe.audio_proj.proj.weight, ckpt["proj_model"]["proj.weight"])
    assert torch.equal(pipe.audio_proj.norm.bias, ckpt["proj_model"]["norm.bias"])
    for i, block in enumerate(pipe.transformer.blocks):
        assert torch.equal(block.attn2.processor.k_proj.weight,
                           ckpt["audio_processor"][f"blocks.{i}.cross_attn.processor.k_proj.weight"])
        assert torch.equal(block.attn2.processor.v_proj.weight,
                           ckpt["audio_processor"][f"blocks.{i}.cross_attn.processor.v_proj.weight"])


def test_missing_block_is_named(tmp_path, pipe):
    ckpt = official_layout()
    del ckpt["audio_processor"]["blocks.1.cross_attn.processor.v_proj.weight"]
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"expected exactly 7 adapter tensors, 6 matched.*"
                                                 r"Missing 1: blocks\.1\.attn2\.processor\.v_proj\.weight"):
        load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "bad.ckpt")


def test_extra_blocks_and_wrong_shapes_are_named(tmp_path, pipe):
    ckpt = official_layout(num_blocks=3)  # a 3-block checkpoint into a 2-block model
    ckpt["proj_model"]["proj.weight"] = torch.zeros(CONTEXT_DIM, AUDIO_DIM + 1)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"^bad\.ckpt: expected exactly 7 adapter tensors, 7 matched\. ") as info:
        load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "bad.ckpt")
    message = str(info.value)
    assert "Unexpected 2: blocks.2.attn2.processor.k_proj.weight, blocks.2.attn2.processor.v_proj.weight" in message
    assert f"Wrong shape 1: audio_proj.proj.weight: ({CONTEXT_DIM}, {AUDIO_DIM + 1}) != ({CONTEXT_DIM}, {AUDIO_DIM})" in message
    # Nothing was loaded: the model keeps its zero-initialised adapter.
    assert all(torch.count_nonzero(b.attn2.processor.k_proj.weight) == 0 for b in pipe.transformer.blocks)


def test_not_the_fantasytalking_layout(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointMismatch, match="expected the entries 'proj_model' and 'audio_processor'"):
        read_adapter_weights(tmp_path / "other.ckpt")


def test_truncated_file_fails_cleanly(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save(official_layout(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointMismatch, match="not a readable tensor checkpoint"):
        read_adapter_weights(path)


class Payload:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickles_with_code_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"proj_model": Payload(), "audio_processor": {}}, f)
    with pytest.raises(CheckpointMismatch, match="weights_only=True"):
        read_adapter_weights(path)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(WeightsMissing, match="fantasytalking_model.ckpt.*acvlab/FantasyTalking.*python -m fantasy download"):
        read_adapter_weights(tmp_path / "fantasytalking_model.ckpt")


def test_convert_then_load_round_trip(tmp_path, pipe):
    ckpt = official_layout()
    torch.save(ckpt, tmp_path / "model.ckpt")
    assert convert_checkpoint(tmp_path / "model.ckpt", tmp_path / "model.safetensors") == 7
    converted = load_file(tmp_path / "model.safetensors")
    assert sorted(converted) == sorted(expected_keys(2))
    assert all(t.dtype == torch.bfloat16 for t in converted.values())
    load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "model.safetensors")
    expected = ckpt["audio_processor"]["blocks.0.cross_attn.processor.k_proj.weight"].to(torch.bfloat16).float()
    assert torch.equal(pipe.transformer.blocks[0].attn2.processor.k_proj.weight, expected)
    assert not list(tmp_path.glob("*.partial"))


def test_convert_rejects_an_incomplete_checkpoint(tmp_path):
    ckpt = official_layout()
    del ckpt["audio_processor"]["blocks.0.cross_attn.processor.k_proj.weight"]
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointMismatch, match="Missing 1: blocks.0.attn2.processor.k_proj.weight"):
        convert_checkpoint(tmp_path / "model.ckpt", tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()


def test_comfyui_wrapper_layout_is_understood(tmp_path, pipe):
    ckpt = official_layout()
    flat = {f"proj_model.{k}": v for k, v in ckpt["proj_model"].items()}
    flat |= {k.replace(".processor.", "."): v for k, v in ckpt["audio_processor"].items()}
    save_file(flat, tmp_path / "fantasytalking_fp16.safetensors")
    assert load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "fantasytalking_fp16.safetensors") == 7


def test_save_and_reload(tmp_path, pipe):
    torch.save(official_layout(seed=5), tmp_path / "a.ckpt")
    load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "a.ckpt")
    save_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "ours.safetensors", dtype=torch.float32)
    other = assemble(tiny_components())
    load_adapter_weights(other.transformer, other.audio_proj, tmp_path / "ours.safetensors")
    for a, b in zip(pipe.transformer.state_dict().values(), other.transformer.state_dict().values(), strict=True):
        assert torch.equal(a, b)
