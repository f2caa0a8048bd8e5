"""Loading the released checkpoint layout, strictness, and conversion to safetensors."""

import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fantasy.errors import CheckpointMismatch, WeightsMissing
from fantasy.model.assemble import assemble
from fantasy.weights.adapter_weights import (
    PROJ_KEYS,
    check_adapter_keys,
    convert_checkpoint,
    expected_keys,
    has_low_precision_projection,
    load_adapter_weights,
    read_adapter_weights,
    save_adapter_weights,
)
from fantasy.weights.tiny import AUDIO_DIM, CONTEXT_DIM, HEAD_DIM, HEADS, tiny_components

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
    # The K/V in bf16 (the release casts them to the DiT's dtype); the projection stays fp32, as the release runs it.
    assert {k for k, t in converted.items() if t.dtype == torch.float32} == set(PROJ_KEYS)
    assert all(t.dtype == torch.bfloat16 for k, t in converted.items() if k not in PROJ_KEYS)
    load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "model.safetensors")
    expected = ckpt["audio_processor"]["blocks.0.cross_attn.processor.k_proj.weight"].to(torch.bfloat16).float()
    assert torch.equal(pipe.transformer.blocks[0].attn2.processor.k_proj.weight, expected)
    for name, param in pipe.audio_proj.named_parameters():  # bit for bit the checkpoint's fp32 values
        assert param.dtype == torch.float32 and torch.equal(param, ckpt["proj_model"][name])
    assert not list(tmp_path.glob("*.partial"))


def test_saved_adapter_keeps_the_projection_in_fp32(tmp_path, pipe):
    torch.save(official_layout(seed=2), tmp_path / "a.ckpt")
    load_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "a.ckpt")
    save_adapter_weights(pipe.transformer, pipe.audio_proj, tmp_path / "bf16.safetensors")  # default bf16
    saved = load_file(tmp_path / "bf16.safetensors")
    assert {k for k, t in saved.items() if t.dtype == torch.float32} == set(PROJ_KEYS)
    assert {t.dtype for k, t in saved.items() if k not in PROJ_KEYS} == {torch.bfloat16}
    assert torch.equal(saved["audio_proj.proj.weight"], pipe.audio_proj.proj.weight)
    assert not has_low_precision_projection(tmp_path / "bf16.safetensors")


def test_an_old_conversion_is_redone_from_the_checkpoint_or_reported(tmp_path, capsys):
    from fantasy.weights.real import ADAPTER_SAFETENSORS, adapter_file

    ckpt = official_layout(seed=4)
    old = {k: v.to(torch.bfloat16) for k, v in read_official(ckpt, tmp_path).items()}
    save_file(old, tmp_path / ADAPTER_SAFETENSORS)  # what the previous version wrote: everything bf16
    assert has_low_precision_projection(tmp_path / ADAPTER_SAFETENSORS)
    assert adapter_file(tmp_path) == tmp_path / ADAPTER_SAFETENSORS  # no .ckpt: used as is, and said so
    assert "holds the audio projection in bf16" in capsys.readouterr().err
    torch.save(ckpt, tmp_path / "fantasytalking_model.ckpt")
    assert adapter_file(tmp_path) == tmp_path / ADAPTER_SAFETENSORS
    redone = load_file(tmp_path / ADAPTER_SAFETENSORS)
    assert torch.equal(redone["audio_proj.proj.weight"], ckpt["proj_model"]["proj.weight"])


def read_official(ckpt, tmp_path):
    torch.save(ckpt, tmp_path / "read.ckpt")
    state = read_adapter_weights(tmp_path / "read.ckpt")
    (tmp_path / "read.ckpt").unlink()
    return state


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


LAYOUT_MESSAGE = "{name} does not have the FantasyTalking layout: expected the entries 'proj_model' and 'audio_processor', found {found}."


def test_a_foreign_checkpoint_shows_its_first_ten_entries(tmp_path):
    torch.save({f"entry{i:02d}": torch.zeros(1) for i in range(12)}, tmp_path / "other.ckpt")
    found = [f"entry{i:02d}" for i in range(10)]
    with pytest.raises(CheckpointMismatch, match=f"^{re.escape(LAYOUT_MESSAGE.format(name='other.ckpt', found=found))}$"):
        read_adapter_weights(tmp_path / "other.ckpt")


def test_a_checkpoint_that_is_not_a_dict_names_its_type(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.ckpt")
    with pytest.raises(CheckpointMismatch, match=f"^{re.escape(LAYOUT_MESSAGE.format(name='tensor.ckpt', found='Tensor'))}$"):
        read_adapter_weights(tmp_path / "tensor.ckpt")


def test_entries_that_are_not_tensors_are_named(tmp_path):
    torch.save({"proj_model": [torch.zeros(1)], "audio_processor": {}}, tmp_path / "list.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"^list\.ckpt: entry 'proj_model' is not a dict of tensors$"):
        read_adapter_weights(tmp_path / "list.ckpt")
    torch.save({"proj_model": {"proj.weight": 1.0}, "audio_processor": {}}, tmp_path / "float.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"^float\.ckpt: 'proj_model/proj\.weight' is not a tensor$"):
        read_adapter_weights(tmp_path / "float.ckpt")


def test_unreadable_file_message_names_the_error_on_one_line(tmp_path):
    """The first line of the loader's error, at most 200 characters (miniz's message here is longer)."""
    path = tmp_path / "cut.ckpt"
    torch.save(official_layout(), path)
    path.write_bytes(path.read_bytes()[:200])
    first_line = ("PytorchStreamReader failed reading zip archive: failed finding central directory. This is an internal "
                  "miniz error. If you are seeing this error, there is a high likelihood that your checkpoint file is")
    assert len(first_line) == 200
    message = (f"cut.ckpt is not a readable tensor checkpoint (RuntimeError: {first_line}). Only plain "
               "tensor checkpoints are loaded (weights_only=True); re-download the file.")
    with pytest.raises(CheckpointMismatch, match=f"^{re.escape(message)}$"):
        read_adapter_weights(path)


def test_two_keys_for_one_tensor_are_refused(tmp_path):
    """The official-safetensors prefix and ours both present: the file is not one adapter."""
    save_file({"audio_processor.audio_proj.norm.bias": torch.zeros(2), "audio_proj.norm.bias": torch.ones(2)},
              tmp_path / "twice.safetensors")
    with pytest.raises(CheckpointMismatch,
                       match=r"^twice\.safetensors: two keys map to the same adapter tensor; the file is not an adapter$"):
        read_adapter_weights(tmp_path / "twice.safetensors")


def test_legacy_pickle_format_loads_without_memory_mapping(tmp_path):
    """torch.save(_use_new_zipfile_serialization=False) cannot be mapped: the loader falls back to a plain load."""
    ckpt = official_layout()
    torch.save(ckpt, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    state = read_adapter_weights(tmp_path / "legacy.ckpt")
    assert sorted(state) == sorted(expected_keys(2))
    assert torch.equal(state["audio_proj.proj.weight"], ckpt["proj_model"]["proj.weight"])


def test_a_checkpoint_saved_from_gpu_tensors_loads_onto_the_cpu(tmp_path, monkeypatch):
    """The release was saved from CUDA tensors; on a machine without CUDA it must still load (map_location)."""
    import torch.serialization as ts

    gpu_tag = (-100, lambda obj: "cuda:0", lambda obj, location: None)  # torch.save records every storage as cuda:0
    monkeypatch.setattr(ts, "_package_registry", [gpu_tag, *ts._package_registry])
    torch.save(official_layout(), tmp_path / "gpu.ckpt")
    torch.save(official_layout(), tmp_path / "gpu_legacy.ckpt", _use_new_zipfile_serialization=False)
    monkeypatch.undo()
    for name in ("gpu.ckpt", "gpu_legacy.ckpt"):
        state = read_adapter_weights(tmp_path / name)
        assert len(state) == 7 and all(t.device.type == "cpu" for t in state.values())


def _anonymous_memory() -> int:
    return int(re.search(r"RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc memory figures")
def test_the_official_checkpoint_is_memory_mapped_not_read_into_ram(tmp_path):
    """64 MB of fp32 in the file; measured growth of private memory while reading: 0.0 MB mapped, 64.0 MB not."""
    torch.save({"proj_model": {"proj.weight": torch.zeros(4096, 4096)}, "audio_processor": {}}, tmp_path / "big.ckpt")
    before = _anonymous_memory()
    state = read_adapter_weights(tmp_path / "big.ckpt")
    grown = _anonymous_memory() - before
    assert state["audio_proj.proj.weight"].shape == (4096, 4096)
    assert grown < 8 * 2**20, f"{grown / 2**20:.1f} MB"


@pytest.mark.parametrize("count, listed", [
    (6, "k0, k1, k2, k3, k4, k5."),
    (7, "k0, k1, k2, k3, k4, k5 (+1 more)."),
    (9, "k0, k1, k2, k3, k4, k5 (+3 more)."),
])
def test_long_key_lists_show_six_and_count_the_rest(count, listed):
    with pytest.raises(CheckpointMismatch,
                       match=f"^src: expected exactly {count} adapter tensors, 0 matched\\. Missing {count}: {re.escape(listed)}$"):
        check_adapter_keys({}, {f"k{i}": (1,) for i in range(count)}, "src")


def test_an_unexpected_key_alone_is_refused():
    with pytest.raises(CheckpointMismatch, match=r"^src: expected exactly 1 adapter tensors, 1 matched\. Unexpected 1: extra\.$"):
        check_adapter_keys({"a": torch.zeros(1), "extra": torch.zeros(1)}, {"a": (1,)}, "src")


def test_convert_names_the_one_missing_tensor_only(tmp_path):
    """blocks.0's k_proj missing: the inner width comes from the other block tensors, so nothing else is blamed."""
    ckpt = official_layout()
    del ckpt["audio_processor"]["blocks.0.cross_attn.processor.k_proj.weight"]
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"^model\.ckpt: expected exactly 7 adapter tensors, 6 matched\. "
                                                 r"Missing 1: blocks\.0\.attn2\.processor\.k_proj\.weight\.$"):
        convert_checkpoint(tmp_path / "model.ckpt", tmp_path / "model.safetensors")


@pytest.mark.parametrize("drop", ["proj_model", "audio_processor"])
def test_convert_refuses_a_checkpoint_without_projection_or_blocks(tmp_path, drop):
    ckpt = official_layout()
    ckpt[drop] = {}
    torch.save(ckpt, tmp_path / "model.ckpt")
    with pytest.raises(CheckpointMismatch, match=r"^model\.ckpt: no audio projection or no adapter blocks found$"):
        convert_checkpoint(tmp_path / "model.ckpt", tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == [tmp_path / "model.ckpt"]


def test_convert_a_one_block_checkpoint_into_a_new_folder_with_our_metadata(tmp_path):
    torch.save(official_layout(num_blocks=1), tmp_path / "model.ckpt")
    target = tmp_path / "new" / "folder" / "model.safetensors"
    assert convert_checkpoint(tmp_path / "model.ckpt", target) == 5
    with safe_open(str(target), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "layout": "fantasy-talking-studio/adapter-v1"}
        assert sorted(f.keys()) == sorted(expected_keys(1))


def test_a_failed_write_leaves_no_partial_file_and_the_old_target(tmp_path, monkeypatch):
    """The half-written file is `<target>.partial` in the target's folder, and is removed when the write fails."""
    from fantasy.weights import adapter_weights

    torch.save(official_layout(), tmp_path / "model.ckpt")
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous version")
    written = []

    def disk_full(tensors, filename, metadata=None):
        written.append(Path(filename))
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adapter_weights, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        convert_checkpoint(tmp_path / "model.ckpt", target)
    assert written == [tmp_path / "model.safetensors.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "model.safetensors"]
    assert target.read_bytes() == b"previous version"


class LeavesAMark:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_code_in_a_checkpoint_never_runs_even_where_torch_defaults_to_full_unpickling(tmp_path, monkeypatch,
                                                                                     zip_format):
    """weights_only=True is passed explicitly: torch's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only flips its default."""
    mark = tmp_path / "code-ran"
    torch.save({"proj_model": LeavesAMark(mark), "audio_processor": {}}, tmp_path / "evil.ckpt",
               _use_new_zipfile_serialization=zip_format)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointMismatch, match=r"^evil\.ckpt is not a readable tensor checkpoint \(UnpicklingError: "):
        read_adapter_weights(tmp_path / "evil.ckpt")
    assert not mark.exists()


def test_only_the_projection_matrix_decides_an_old_conversion(tmp_path):
    """bf16 `audio_proj.proj.weight` marks a file converted before the projection stayed fp32; a file that is not
    safetensors at all is left to the loader to explain."""
    tensors = {"audio_proj.proj.weight": torch.zeros(2, 2, dtype=torch.bfloat16), "audio_proj.norm.weight": torch.zeros(2)}
    save_file(tensors, tmp_path / "old.safetensors")
    assert has_low_precision_projection(tmp_path / "old.safetensors")
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    assert not has_low_precision_projection(tmp_path / "text.safetensors")
