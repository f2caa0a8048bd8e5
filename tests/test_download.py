"""`python -m fantasy download` against a fake Hugging Face Hub (tests never reach the network).

The fake records every `model_info` and `snapshot_download` call (repo id, allow_patterns, local_dir)
and "downloads" by writing the matching files of an in-memory repo, so what lands on disk is exactly
what the allow-patterns select.
"""

from __future__ import annotations

import fnmatch
import io
import json
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import load_file

from fantasy.cli import main
from fantasy.errors import FantasyError, WeightsMissing
from fantasy.weights.download import download, human_size
from fantasy.weights.real import (
    ADAPTER_SAFETENSORS,
    DIT_FILES,
    WAN_PART,
    WAV2VEC_PART,
    check_real_weights,
    files_read,
)

from .test_adapter_weights import official_layout

WAN = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"
GGUF = "city96/Wan2.1-I2V-14B-720P-gguf"
COMFY = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
ADAPTER = "acvlab/FantasyTalking"
WAV2VEC = "facebook/wav2vec2-base-960h"


def _ckpt_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(official_layout(), buffer)
    return buffer.getvalue()


def fake_repos() -> dict[str, dict[str, bytes]]:
    blob = b"w" * 700
    return {
        WAN: {
            "model_index.json": b"{}", "README.md": b"readme", "examples/i2v_input.JPG": b"jpg" * 50,
            "tokenizer/tokenizer_config.json": b"{}", "tokenizer/spiece.model": b"s" * 40,
            "tokenizer/tokenizer.json": b"{}", "tokenizer/special_tokens_map.json": b"{}",
            "text_encoder/config.json": b"{}", "text_encoder/model-00001-of-00002.safetensors": blob,
            "text_encoder/model-00002-of-00002.safetensors": blob,
            "text_encoder/model.safetensors.index.json": json.dumps({"weight_map": {
                "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}).encode(),
            "image_encoder/config.json": b"{}", "image_encoder/model.safetensors": blob,
            "image_processor/preprocessor_config.json": b"{}", "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": blob, "scheduler/scheduler_config.json": b"{}",
            "transformer/config.json": b"{}",
            "transformer/diffusion_pytorch_model-00001-of-00014.safetensors": b"t" * 5000,
            "transformer/diffusion_pytorch_model.safetensors.index.json": b"{}",
        },
        GGUF: {"wan2.1-i2v-14b-720p-Q8_0.gguf": b"8" * 3000, "wan2.1-i2v-14b-720p-Q4_K_M.gguf": b"4" * 2000,
               "wan2.1-i2v-14b-720p-Q3_K_S.gguf": b"3" * 1500, "README.md": b"readme"},
        COMFY: {"split_files/diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors": b"b" * 6000,
                "split_files/diffusion_models/wan2.1_i2v_480p_14B_bf16.safetensors": b"b" * 6000,
                "split_files/vae/wan_2.1_vae.safetensors": blob},
        ADAPTER: {"fantasytalking_model.ckpt": _ckpt_bytes(), "README.md": b"readme"},
        WAV2VEC: {"config.json": b"{}", "preprocessor_config.json": b"{}", "model.safetensors": b"m" * 900,
                  "pytorch_model.bin": b"p" * 900, "tf_model.h5": b"h" * 900, "vocab.json": b"{}"},
    }


class FakeHub:
    def __init__(self, repos=None, cached: dict[str, Path] | None = None):
        self.repos = repos or fake_repos()
        self.cached = cached or {}
        self.info_calls: list[tuple[str, bool]] = []
        self.downloads: list[tuple[str, list[str], Path]] = []
        self.events: list[str] = []
        self.api = SimpleNamespace(model_info=self.model_info)

    def model_info(self, repo_id, files_metadata=False, **_):
        self.info_calls.append((repo_id, files_metadata))
        files = self.repos[repo_id]
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=k, size=len(v)) for k, v in files.items()])

    def snapshot_download(self, repo_id, allow_patterns=None, local_dir=None, local_files_only=False, **_):
        if local_files_only:
            if repo_id in self.cached:
                return str(self.cached[repo_id])
            raise LocalEntryNotFoundError("not cached")
        self.downloads.append((repo_id, list(allow_patterns), Path(local_dir)))
        self.events.append(f"download {repo_id}")
        for name, data in self.repos[repo_id].items():
            if any(fnmatch.fnmatchcase(name, p) for p in allow_patterns):
                target = Path(local_dir) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return str(local_dir)

    def out(self, line: str) -> None:
        self.events.append(line)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: fake.api)
    return fake


def test_fetches_exactly_the_files_the_real_preset_reads(hub, tmp_path):
    root = tmp_path / "weights"
    download("q8_0", root, out=hub.out, api=hub.api)
    assert hub.info_calls == [(WAN, True), (GGUF, True), (ADAPTER, True), (WAV2VEC, True)]
    assert hub.downloads == [
        (WAN, list(WAN_PART.patterns), root / "Wan2.1-I2V-14B-720P-Diffusers"),
        (GGUF, ["wan2.1-i2v-14b-720p-Q8_0.gguf"], root / "Wan2.1-I2V-14B-720P-gguf"),
        (ADAPTER, ["fantasytalking_model.ckpt"], root / "FantasyTalking"),
        (WAV2VEC, ["config.json", "preprocessor_config.json", "model.safetensors"], root / "wav2vec2-base-960h"),
    ]
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert "Wan2.1-I2V-14B-720P-Diffusers/transformer/config.json" in on_disk
    # Exactly what the loader reads, nothing else (no spiece.model, scheduler, model_index, README).
    read = files_read(check_real_weights(root, "q8_0"))
    assert on_disk == {str(p.relative_to(root)) for p in read}
    assert not any("diffusion_pytorch_model-0000" in p or "README" in p or "examples/" in p for p in on_disk)
    assert not any("Q4_K_M" in p or "Q3_K_S" in p or "tf_model" in p or "pytorch_model.bin" in p for p in on_disk)
    # The adapter pickle was converted once and removed; every path the loader checks is there.
    assert ADAPTER_SAFETENSORS in on_disk and "FantasyTalking/fantasytalking_model.ckpt" not in on_disk
    assert len(load_file(root / ADAPTER_SAFETENSORS)) == 3 + 2 * 2
    assert check_real_weights(root, "q8_0")["dit"].name == "wan2.1-i2v-14b-720p-Q8_0.gguf"


def test_sizes_are_printed_before_anything_is_downloaded(hub, tmp_path):
    download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)
    first_download = next(i for i, e in enumerate(hub.events) if e.startswith("download "))
    printed = "\n".join(hub.events[:first_download])
    assert f"{human_size(3000)}  wan2.1-i2v-14b-720p-Q8_0.gguf" in printed
    assert "900 B  model.safetensors" in printed and "tf_model.h5" not in printed
    repos = fake_repos()
    unread = {"model_index.json", "tokenizer/spiece.model", "scheduler/scheduler_config.json"}  # the loader reads none
    expected = (sum(len(v) for k, v in repos[WAN].items() if k.split("/")[0] in {
        "tokenizer", "text_encoder", "image_encoder", "image_processor", "vae"} and k not in unread)
        + len(b"{}") + 3000 + len(repos[ADAPTER]["fantasytalking_model.ckpt"]) + 2 + 2 + 900)
    assert f"To download: {human_size(expected)}" in printed


def test_second_run_downloads_nothing(hub, tmp_path):
    root = tmp_path / "weights"
    download("q8_0", root, out=hub.out, api=hub.api)
    hub.downloads.clear()
    hub.events.clear()
    download("q8_0", root, out=hub.out, api=hub.api)
    assert hub.downloads == []
    text = "\n".join(hub.events)
    assert "To download: 0 B" in text and "skip: already converted" in text and "[have]" in text


def test_bf16_fetches_the_single_bf16_file(hub, tmp_path):
    root = tmp_path / "weights"
    download("bf16", root, out=hub.out, api=hub.api)
    assert hub.downloads[1] == (COMFY, [DIT_FILES["bf16"].patterns[0]], root / "Wan_2.1_ComfyUI_repackaged")
    assert (root / "Wan_2.1_ComfyUI_repackaged" / DIT_FILES["bf16"].patterns[0]).is_file()
    assert not list(root.rglob("*480p*")) and not list(root.rglob("wan_2.1_vae*"))
    assert check_real_weights(root, "bf16-fp8")["dit"].name == "wan2.1_i2v_720p_14B_bf16.safetensors"


def test_wav2vec_without_safetensors_falls_back_to_bin(hub, tmp_path):
    del hub.repos[WAV2VEC]["model.safetensors"]
    root = tmp_path / "weights"
    download("q8_0", root, out=hub.out, api=hub.api)
    assert hub.downloads[-1][:2] == (WAV2VEC, ["config.json", "preprocessor_config.json", "pytorch_model.bin"])
    assert check_real_weights(root)["wav2vec"] == root / WAV2VEC_PART.folder


def test_parts_already_in_the_hf_cache_are_not_downloaded_again(hub, tmp_path):
    snapshot = tmp_path / "hf-cache" / "wav2vec-snapshot"
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"{}")
    hub.cached[WAV2VEC] = snapshot
    root = tmp_path / "weights"
    download("q8_0", root, out=hub.out, api=hub.api)
    assert WAV2VEC not in [repo for repo, _, _ in hub.downloads]
    assert f"skip: already in the Hugging Face cache: {snapshot}" in "\n".join(hub.events)
    assert check_real_weights(root)["wav2vec"] == snapshot


def test_dry_run_downloads_nothing(hub, tmp_path):
    root = tmp_path / "weights"
    download("q4_k_m", root, dry_run=True, out=hub.out, api=hub.api)
    assert hub.downloads == [] and not [p for p in root.rglob("*") if p.is_file()]
    assert "wan2.1-i2v-14b-720p-Q4_K_M.gguf" in "\n".join(hub.events) and hub.events[-1].startswith("Dry run")


def test_offline_never_contacts_the_hub_and_names_what_is_missing(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match=r"^4 of the real preset's parts are missing\. ") as info:
        download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)
    message = str(info.value)
    assert hub.info_calls == [] and hub.downloads == []
    for repo in (WAN, GGUF, ADAPTER, WAV2VEC):
        assert f"'{repo}'" in message
    assert "4 of the real preset's parts are missing" in message and "HF_HUB_OFFLINE=1 is set" in message


def test_offline_with_everything_present_is_fine(hub, tmp_path, monkeypatch):
    root = tmp_path / "weights"
    download("q8_0", root, out=hub.out, api=hub.api)
    hub.info_calls.clear()
    hub.events.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    download("q8_0", root, out=hub.out, api=hub.api)
    assert hub.info_calls == [] and hub.events[-1] == "All weights are present; nothing to download."


def test_unreachable_hub_is_a_clear_error(hub, tmp_path, capsys):
    def refuse(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    hub.api.model_info = refuse
    with pytest.raises(FantasyError, match="Could not reach the Hugging Face Hub for 'Wan-AI/"):
        download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)
    assert main(["download", "--dir", str(tmp_path / "weights")]) == 2
    assert capsys.readouterr().err.startswith("error: Could not reach the Hugging Face Hub")


def test_not_enough_disk_space_stops_before_downloading(hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("fantasy.weights.download.shutil.disk_usage", lambda path: usage(10, 9, 1))
    with pytest.raises(FantasyError, match="Not enough disk space"):
        download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)
    assert hub.downloads == []


def test_a_repo_that_lost_its_file_is_reported(hub, tmp_path):
    del hub.repos[GGUF]["wan2.1-i2v-14b-720p-Q8_0.gguf"]
    with pytest.raises(FantasyError, match="'city96/Wan2.1-I2V-14B-720P-gguf' has no file matching 'wan2.1-i2v"):
        download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)


def test_cli_download_dry_run(hub, tmp_path, capsys):
    assert main(["download", "--dit", "q4_k_m", "--dir", str(tmp_path / "w"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "city96/Wan2.1-I2V-14B-720P-gguf" in out and "wan2.1-i2v-14b-720p-Q4_K_M.gguf" in out
    assert "Dry run: nothing downloaded." in out and hub.downloads == []


def test_human_sizes():
    assert human_size(17_400_000_000) == "17.40 GB"
    assert human_size(380_000_000) == "380.00 MB"
    assert human_size(512) == "512 B"


def test_face_weights_only_when_asked(hub, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("fantasy.face.fan_backend.ensure_weights", lambda *a, **k: calls.append(k) or tmp_path / "torch-hub")
    download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api)
    assert calls == []
    download("q8_0", tmp_path / "weights", out=hub.out, api=hub.api, face=True)
    assert len(calls) == 1 and any(e.startswith("face-alignment weights (2DFAN4") for e in hub.events)


def test_face_weights_offline_are_checked_not_fetched(hub, tmp_path, monkeypatch):
    from fantasy.face import fan_backend

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(fan_backend, "checkpoints_dir", lambda: tmp_path / "empty-torch-hub")
    root = tmp_path / "weights"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    download("q8_0", root, out=hub.out, api=hub.api)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match="2DFAN4.*download --face"):
        download("q8_0", root, out=hub.out, api=hub.api, face=True)


def test_with_a_comfyui_folder_only_what_it_lacks_is_fetched(hub, tmp_path):
    """Comfy-Org's umT5 carries its tokenizer: wav2vec2 and the adapter are all that is fetched; a folder whose
    umT5 has none (kijai's) adds the three tokenizer files, and a folder without a DiT the chosen DiT file."""
    from safetensors.torch import save_file

    def touch(path, tensors=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors or {"x": torch.zeros(1)}, str(path))

    comfy = tmp_path / "ComfyUI" / "models"
    for name in ("diffusion_models/wan2.1_i2v_720p_14B_fp8_scaled.safetensors", "clip_vision/clip_vision_h.safetensors",
                 "vae/wan_2.1_vae.safetensors"):
        touch(comfy / name)
    touch(comfy / "text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors",
          {"shared.weight": torch.zeros(1), "spiece_model": torch.zeros(4, dtype=torch.uint8)})
    root = tmp_path / "weights"
    download(None, root, out=hub.out, api=hub.api, comfy=comfy)
    assert [repo for repo, _, _ in hub.downloads] == [ADAPTER, WAV2VEC]
    assert hub.events[0] == (f"From the ComfyUI folder {comfy}: dit wan2.1_i2v_720p_14B_fp8_scaled.safetensors, text "
                             "encoder umt5_xxl_fp8_e4m3fn_scaled.safetensors, clip vision clip_vision_h.safetensors, vae "
                             "wan_2.1_vae.safetensors (not downloaded)")
    assert hub.events[-2].endswith(f"--dit bf16 --weights {root} --comfy-models {comfy} ...")
    paths = check_real_weights(root, "bf16", comfy=comfy)
    assert paths["wan"] is None and paths["dit"] == comfy / "diffusion_models/wan2.1_i2v_720p_14B_fp8_scaled.safetensors"

    kijai = tmp_path / "kijai"
    touch(kijai / "text_encoders/umt5-xxl-enc-bf16.safetensors", {"token_embedding.weight": torch.zeros(1)})
    hub.downloads.clear()
    download(None, root, out=hub.out, api=hub.api, comfy=kijai)  # no DiT there: the default GGUF
    assert [(repo, patterns) for repo, patterns, _ in hub.downloads] == [
        (WAN, ["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
               "image_encoder/config.json", "image_encoder/model.safetensors",
               "image_processor/preprocessor_config.json", "vae/config.json",
               "vae/diffusion_pytorch_model.safetensors", "transformer/config.json"]),
        (GGUF, ["wan2.1-i2v-14b-720p-Q8_0.gguf"])]
    assert not (root / WAN_PART.folder / "text_encoder").exists()  # umT5 comes from the ComfyUI folder
