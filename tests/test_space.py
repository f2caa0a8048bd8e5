"""Spaces support: the ZeroGPU decorator is a no-op here, the GPU-time request, Hub weights as a weights dir."""

from __future__ import annotations

import importlib

import pytest

from fantasy.app import space


def test_gpu_decorator_is_a_no_op_off_zero_gpu(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    module = importlib.reload(space)

    def work(x):
        yield x * 2

    assert module.gpu(duration=lambda x: 60)(work) is work
    assert not module.on_zero_gpu()


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("false", False), ("", False)])
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
