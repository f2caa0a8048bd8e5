"""`fantasy.weights.checkpoints` one function at a time, on small files the tests write: the GGUF memory map (each
type city96's file holds), shard indexes, the shard-by-shard load and what it reports missing, the class a
config names, and the two quieting helpers. The real-layout loads (tests/test_real_loading.py) run them together."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fantasy.errors import CheckpointMismatch
from fantasy.weights.checkpoints import (
    dropped_log_messages,
    gguf_state_dict,
    index_shards,
    load_sharded,
    pretrained_class,
    quiet_loading,
)
from fantasy.weights.tiny import tiny_text_encoder

from .fake_weights import write_gguf


def test_a_gguf_file_is_read_as_views_of_its_map_with_each_type(tmp_path):
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    gen = torch.Generator().manual_seed(0)
    state = {"time_embedding.0.weight": torch.randn(32, 64, generator=gen),  # F16 in city96's file
             "time_embedding.0.bias": torch.randn(32, generator=gen),  # F32
             "blocks.0.self_attn.q.weight": torch.randn(32, 64, generator=gen)}  # Q8_0
    path = tmp_path / "dit.gguf"
    assert write_gguf(state, path) == {"time_embedding.0.weight": "F16", "time_embedding.0.bias": "F32",
                                       "blocks.0.self_attn.q.weight": "Q8_0"}
    before = path.read_bytes()
    loaded = gguf_state_dict(path)
    assert list(loaded) == list(state)
    half, bias, quantized = (loaded[name] for name in state)
    assert type(half) is torch.Tensor and half.dtype == torch.float16
    assert torch.equal(half, state["time_embedding.0.weight"].half())
    assert type(bias) is torch.Tensor and bias.dtype == torch.float32 and torch.equal(bias, state["time_embedding.0.bias"])
    assert isinstance(quantized, GGUFParameter) and quantized.quant_type.name == "Q8_0"
    assert quantized.dtype == torch.uint8 and quantized.shape == (32, 64 // 32 * 34)  # its raw blocks
    restored = dequantize_gguf_tensor(quantized).float()
    assert (restored - state["blocks.0.self_attn.q.weight"]).abs().max() < 0.02
    half.mul_(0)  # copy-on-write: the map is writable, the file never changes
    bias.add_(1)
    assert path.read_bytes() == before


def test_a_shard_index_names_its_files_once_each_sorted(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"b": "model-00002.safetensors", "a":
                                 "model-00001.safetensors", "c": "model-00002.safetensors"}}))
    assert index_shards(index) == ["model-00001.safetensors", "model-00002.safetensors"]


@pytest.mark.parametrize("text, error", [
    ("{not json", "JSONDecodeError"), ('{"metadata": {}}', "KeyError"), ('{"weight_map": 3}', "AttributeError"),
    ('[1, 2]', "TypeError"), (None, "FileNotFoundError"),
])
def test_an_unreadable_shard_index_is_a_checkpoint_mismatch(tmp_path, text, error):
    index = tmp_path / "model.safetensors.index.json"
    if text is not None:
        index.write_text(text)
    with pytest.raises(CheckpointMismatch, match=f"^{index} is not a readable shard index \\({error}: .*\\)$"):
        index_shards(index)


@pytest.fixture
def sharded(tmp_path):
    """The tiny umT5 saved in fp32 shards with an index, as Wan-AI ships the real one."""
    model = tiny_text_encoder()
    folder = tmp_path / "text_encoder"
    model.save_pretrained(folder, max_shard_size="40KB")
    assert len(index_shards(folder / "model.safetensors.index.json")) > 2
    return model, folder


@pytest.mark.slow
def test_a_sharded_checkpoint_loads_shard_by_shard_in_the_dtype_asked(sharded):
    from transformers import UMT5EncoderModel

    model, folder = sharded
    loaded = load_sharded(UMT5EncoderModel, folder, torch.bfloat16)
    assert not loaded.training
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded.get_input_embeddings().weight.data_ptr() == loaded.shared.weight.data_ptr()  # tied


def drop_from_shards(folder, names: list[str]) -> None:
    """Remove tensors from the shards (and the index), as a damaged download would lack them."""
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    for shard in sorted(set(data["weight_map"].values())):
        tensors = load_file(str(folder / shard))
        save_file({k: v for k, v in tensors.items() if k not in names}, str(folder / shard), metadata={"format": "pt"})
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if k not in names}
    index.write_text(json.dumps(data))


@pytest.mark.slow
def test_a_checkpoint_that_lacks_tensors_says_which(sharded):
    from transformers import UMT5EncoderModel

    _, folder = sharded
    drop_from_shards(folder, ["encoder.final_layer_norm.weight"])
    with pytest.raises(CheckpointMismatch, match=f"^{folder}: the checkpoint lacks 1 of the model's tensors: "
                                                 "encoder.final_layer_norm.weight$"):
        load_sharded(UMT5EncoderModel, folder, torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("count", [7, None], ids=["seven", "a-whole-block"])
def test_more_than_six_missing_tensors_are_named_six_then_counted(sharded, count):
    """Seven: six named and "(+1 more)", the count's boundary; a whole block: six named, the rest counted."""
    from transformers import UMT5EncoderModel

    model, folder = sharded
    names = [k for k in model.state_dict() if k.startswith("encoder.block.1.")][:count]
    assert len(names) > 7 if count is None else len(names) == count
    drop_from_shards(folder, names)
    shown = ", ".join(names[:6]) + f" (+{len(names) - 6} more)"
    with pytest.raises(CheckpointMismatch, match=f"^{folder}: the checkpoint lacks {len(names)} of the model's "
                                                 f"tensors: {re.escape(shown)}$"):
        load_sharded(UMT5EncoderModel, folder, torch.float32)


@pytest.mark.slow
def test_six_missing_tensors_are_all_named(sharded):
    from transformers import UMT5EncoderModel

    model, folder = sharded
    names = [k for k in model.state_dict() if k.startswith("encoder.block.1.")][:6]
    drop_from_shards(folder, names)
    with pytest.raises(CheckpointMismatch, match=f"lacks 6 of the model's tensors: {', '.join(names)}$"):
        load_sharded(UMT5EncoderModel, folder, torch.float32)


class Plain:
    pass


class WithHead:
    pass


@pytest.mark.parametrize("config, chosen", [
    ({"architectures": ["WithHead"]}, WithHead),
    ({"architectures": ["Other", "WithHead"]}, WithHead),  # the first one known
    ({"architectures": ["Other"]}, Plain), ({"architectures": None}, Plain), ({}, Plain),
    ("{broken", Plain), (None, Plain),  # an unreadable or missing config.json: the default
])
def test_the_class_a_config_names(tmp_path, config, chosen):
    if config is not None:
        (tmp_path / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    assert pretrained_class(tmp_path, {"WithHead": WithHead}, Plain) is chosen


def test_one_known_log_message_is_dropped_while_loading(caplog):
    logger = logging.getLogger("fantasy.test.loader")
    with caplog.at_level(logging.INFO, logger="fantasy.test.loader"):
        with dropped_log_messages("fantasy.test.loader", "There are modules in"):
            logger.warning("There are modules in fp32: fine")
            logger.warning("a real mismatch: keep it")
        logger.warning("There are modules in fp32: after the block, told again")
    assert [r.getMessage() for r in caplog.records] == ["a real mismatch: keep it",
                                                        "There are modules in fp32: after the block, told again"]
    assert logger.filters == []


def test_progress_bars_are_off_while_loading_and_restored_as_they_were():
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    try:
        transformers_logging.enable_progress_bar()
        diffusers_logging.disable_progress_bar()
        with quiet_loading():
            assert [lib.is_progress_bar_enabled() for lib in libraries] == [False, False]
        assert [lib.is_progress_bar_enabled() for lib in libraries] == [True, False]
        with pytest.raises(RuntimeError, match="a failed load"), quiet_loading():
            raise RuntimeError("a failed load")
        assert [lib.is_progress_bar_enabled() for lib in libraries] == [True, False]
    finally:
        for lib in libraries:
            lib.enable_progress_bar()


def test_q8_0_blocks_are_what_gguf_py_writes():
    """The fake file's Q8_0 rows: 32 values a block, 34 bytes (an fp16 scale and 32 int8)."""
    import gguf

    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0] == (32, 34)
    assert np.dtype(np.float16).itemsize + 32 == 34
