"""Where the real preset's files live, and the errors when they do not (no models are loaded here)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fantasy.cli import main
from fantasy.errors import FantasyError, InvalidSetting, WeightsMissing
from fantasy.weights.adapter_weights import OFFICIAL_FILE, OFFICIAL_REPO
from fantasy.weights.presets import load_pipeline
from fantasy.weights.real import (
    ADAPTER_PART,
    ADAPTER_SAFETENSORS,
    DIT_FILES,
    WAN_PART,
    WAV2VEC_PART,
    adapter_file,
    check_real_weights,
    download_plan,
)

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, NO_CUDA
from .test_adapter_weights import official_layout

# Nothing may come from this machine's Hugging Face cache (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("empty_hf_cache")


SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def touch_required(folder, part) -> None:
    """Placeholders for every file `part` requires; an index names two shards, which are written too."""
    for entry in part.required:
        path = folder / entry.split("|")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".index.json"):
            path.write_text(json.dumps({"weight_map": {"a.weight": SHARDS[0], "b.weight": SHARDS[1]}}))
            for shard in SHARDS:
                (path.parent / shard).write_bytes(b"x")
        else:
            path.write_bytes(b"x")


@pytest.fixture
def complete(tmp_path):
    """A weights dir where every file the real preset checks for exists (as placeholders)."""
    root = tmp_path / "weights"
    for part in (WAN_PART, *DIT_FILES.values(), WAV2VEC_PART):
        touch_required(root / part.folder, part)
    (root / ADAPTER_SAFETENSORS).write_bytes(b"x")
    return root


def test_complete_dir_resolves_every_path(complete):
    paths = check_real_weights(complete, "q8_0")
    assert paths["wan"] == complete / WAN_PART.folder
    assert paths["dit"] == complete / DIT_FILES["q8_0"].folder / "wan2.1-i2v-14b-720p-Q8_0.gguf"
    assert paths["adapter"] == complete / ADAPTER_SAFETENSORS
    assert check_real_weights(complete, "bf16-int8")["dit"].name == "wan2.1_i2v_720p_14B_bf16.safetensors"


REQUIRED = [(part, entry) for part in (WAN_PART, DIT_FILES["q8_0"], WAV2VEC_PART) for entry in part.required]


@pytest.mark.parametrize("part, entry", REQUIRED, ids=[f"{p.folder}/{e}" for p, e in REQUIRED])
def test_each_missing_file_names_file_repo_and_command(complete, monkeypatch, part, entry):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for alternative in entry.split("|"):
        (complete / part.folder / alternative).unlink(missing_ok=True)
    with pytest.raises(WeightsMissing, match=r"^Missing weight file ") as info:
        check_real_weights(complete, "q8_0")
    message = str(info.value)
    assert entry.split("|")[0].split("/")[-1] in message
    assert f"'{part.repo}'" in message
    assert f"python -m fantasy download --dit q8_0 --dir {complete}" in message
    assert "HF_HUB_OFFLINE" not in message


def test_bf16_modes_point_at_the_bf16_download(complete):
    (complete / DIT_FILES["bf16"].folder / DIT_FILES["bf16"].required[0]).unlink()
    with pytest.raises(WeightsMissing, match=r"^Missing weight file ") as info:
        check_real_weights(complete, "bf16-fp8")
    assert "wan2.1_i2v_720p_14B_bf16.safetensors" in str(info.value)
    assert "Comfy-Org/Wan_2.1_ComfyUI_repackaged" in str(info.value)
    assert "python -m fantasy download --dit bf16 " in str(info.value)


def test_missing_adapter_names_the_released_file(complete, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (complete / ADAPTER_SAFETENSORS).unlink()
    with pytest.raises(WeightsMissing, match=r"^Missing weight file ") as info:
        check_real_weights(complete, "q4_k_m")
    message = str(info.value)
    assert ADAPTER_SAFETENSORS in message and OFFICIAL_FILE in message and f"'{OFFICIAL_REPO}'" in message
    assert "python -m fantasy download --dit q4_k_m" in message and "HF_HUB_OFFLINE" not in message


@pytest.mark.parametrize("missing", [WAV2VEC_PART.folder + "/config.json", ADAPTER_SAFETENSORS])
def test_offline_error_says_the_download_needs_the_network(complete, monkeypatch, missing):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (complete / missing).unlink()
    with pytest.raises(WeightsMissing, match="HF_HUB_OFFLINE=1 is set: unset it for the download"):
        check_real_weights(complete, "q8_0")


def test_hugging_face_cache_is_used_without_network(complete, empty_hf_cache, monkeypatch):
    """Files fetched by other tools (e.g. `hf download`) are found in the cache, HF_HUB_OFFLINE or not."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for path in sorted((complete / WAV2VEC_PART.folder).iterdir()):
        path.unlink()
    repo = empty_hf_cache / "models--facebook--wav2vec2-base-960h"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    touch_required(snapshot, WAV2VEC_PART)
    assert check_real_weights(complete, "q8_0")["wav2vec"] == snapshot


def test_released_checkpoint_is_converted_once(tmp_path):
    root = tmp_path / "weights"
    (root / ADAPTER_PART.folder).mkdir(parents=True)
    torch.save(official_layout(), root / ADAPTER_PART.folder / OFFICIAL_FILE)
    converted = adapter_file(root)
    assert converted == root / ADAPTER_SAFETENSORS
    state = load_file(converted)
    assert len(state) == 3 + 2 * 2
    assert all(t.dtype == (torch.float32 if k.startswith("audio_proj.") else torch.bfloat16) for k, t in state.items())
    stamp = converted.stat().st_mtime_ns
    (root / ADAPTER_PART.folder / OFFICIAL_FILE).unlink()  # the app never needs the pickle again
    assert adapter_file(root) == converted and converted.stat().st_mtime_ns == stamp


def test_download_plan_per_dit_mode():
    assert [p.repo for p in download_plan("q8_0")] == [
        "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", "city96/Wan2.1-I2V-14B-720P-gguf", "acvlab/FantasyTalking",
        "facebook/wav2vec2-base-960h"]
    assert download_plan("q4_k_m")[1].patterns == ("wan2.1-i2v-14b-720p-Q4_K_M.gguf",)
    for dit in ("bf16", "bf16-int8", "bf16-fp8", "bf16-fp8-storage"):
        assert download_plan(dit)[1] is DIT_FILES["bf16"]
    # Configs only from the diffusers repo: never its 14B transformer weights.
    assert "transformer/config.json" in WAN_PART.patterns
    assert not any(p.startswith("transformer/") and p != "transformer/config.json" for p in WAN_PART.patterns)


@NO_CUDA
def test_real_preset_without_cuda_fails_clearly_before_touching_weights(tmp_path):
    with pytest.raises(FantasyError, match="needs a CUDA GPU"):
        load_pipeline("real", weights=tmp_path / "nothing-here")
    with pytest.raises(FantasyError, match="torch sees no CUDA GPU"):
        load_pipeline("real", device="cuda", weights=tmp_path)
    with pytest.raises(FantasyError, match="CUDA GPU only"):
        load_pipeline("real", device="cpu", weights=tmp_path)


def test_unknown_modes_are_rejected(tmp_path):
    with pytest.raises(InvalidSetting, match="bf16-int8"):
        load_pipeline("real", dit="int3", weights=tmp_path)
    with pytest.raises(InvalidSetting, match="group-offload"):
        load_pipeline("real", vram="everywhere", weights=tmp_path)


@NO_CUDA
def test_cli_real_preset_without_gpu_is_one_line_and_status_2(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code = main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
                 "--preset", "real", "--dit", "bf16-int8", "--vram", "group-offload", "--weights", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: The real preset needs a CUDA GPU") and "Traceback" not in err
    assert not out.exists()


def test_dit_in_the_hf_cache_is_found_without_a_link(complete, empty_hf_cache):
    """A Space preloads city96's GGUF into the Hub cache; `weights/` then needs no copy of it."""
    part = DIT_FILES["q8_0"]
    (complete / part.folder / part.required[0]).unlink()
    repo = empty_hf_cache / "models--city96--Wan2.1-I2V-14B-720P-gguf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("feedbeef")
    touch_required(repo / "snapshots" / "feedbeef", part)
    assert check_real_weights(complete, "q8_0")["dit"] == repo / "snapshots" / "feedbeef" / part.required[0]
