"""Spaces support: the ZeroGPU decorator is a no-op here, the GPU-time request, Hub weights as a weights dir."""

from __future__ import annotations

import importlib

import pytest

from fantasy import space


def test_gpu_decorator_is_a_no_op_off_zero_gpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    module = importlib.reload(space)

    def work(x):
        yield x * 2

    assert module.gpu(duration=lambda x: 60)(work) is work
    assert not module.on_zero_gpu()


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("1", True), ("false", False), ("", False)])
def test_zero_gpu_switch(monkeypatch, value, expected):
    monkeypatch.setenv("SPACES_ZERO_GPU", value)
    assert space.on_zero_gpu() is expected


def test_gpu_seconds_grow_with_frames_steps_passes_and_size():
    reference = space.estimate_gpu_seconds(81, 30, 3, 512)
    assert reference == 60 + 30 * 3 * 5.5  # the reference clip: overhead + steps x passes x seconds per pass
    assert space.estimate_gpu_seconds(41, 30, 3, 512) < reference  # fewer frames
    assert space.estimate_gpu_seconds(81, 10, 3, 512) < reference  # fewer steps
    assert space.estimate_gpu_seconds(81, 30, 2, 512) < reference  # text guidance 1: two passes
    assert space.estimate_gpu_seconds(81, 30, 3, 256) < reference  # smaller frames
    assert space.estimate_gpu_seconds(5, 1, 2, 64) >= 60  # never below the fixed overhead
    assert space.estimate_gpu_seconds(1601, 50, 3, 1024) == space.MAX_GPU_SECONDS  # capped
    # 157 frames are two 81-frame windows (5 overlap): twice the denoising of one clip
    assert space.estimate_gpu_seconds(157, 30, 3, 512) == 60 + 2 * 30 * 3 * 5.5


def test_link_hub_weights_builds_the_weights_layout(monkeypatch, tmp_path):
    import huggingface_hub

    from fantasy.weights import WAN_REPO, WAV2VEC_REPO

    cache = tmp_path / "cache"
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append(repo_id)
        folder = cache / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append(f"{repo_id}/{filename}")
        path = cache / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ckpt")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    root = space.link_hub_weights(tmp_path / "weights")
    assert (root / "Wan2.1-I2V-14B-720P-Diffusers").resolve() == cache / WAN_REPO.replace("/", "--")
    assert (root / "wav2vec2-base-960h").resolve() == cache / WAV2VEC_REPO.replace("/", "--")
    assert (root / "fantasytalking_model.ckpt").read_bytes() == b"ckpt"
    assert calls == [WAN_REPO, WAV2VEC_REPO, "acvlab/FantasyTalking/fantasytalking_model.ckpt"]
    space.link_hub_weights(root)  # second start: links exist, nothing is fetched again
    assert len(calls) == 3
