"""Spaces support: the ZeroGPU decorator is a no-op here, the GPU-time request, Hub weights as a weights dir."""

from __future__ import annotations

import importlib
import json
import math
import re

import pytest

from fantasy.app import space
from fantasy.errors import InvalidSetting


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


# ---- the GPU-time model, its measured constants, ZeroGPU's defaults and refusals ------------------------------

GPU_CHECK = {  # the shape of bench/gpu_check.py's gpu_check.json (figures made up for the test)
    "tiny": False, "environment": {"device": "NVIDIA H100 80GB HBM3"}, "tokens": 21504,
    "dit_modes": [{"mode": "q8_0", "pass_s": 2.0}, {"mode": "bf16", "pass_s": 1.5}, {"mode": "bf16-fp8", "pass_s": None}],
    "switches": [{"switches": "plain", "pieces": [{"key": "text", "seconds": 1.0}, {"key": "vae_decode", "seconds": 9.0},
                                                  {"key": "image", "seconds": None}]}],
}


def test_measured_timings_replace_the_assumed_constants(tmp_path, monkeypatch):
    assumed = space.GpuTimeModel.load(path=tmp_path / "absent.json")
    assert assumed == space.GpuTimeModel() and assumed.source == "assumed (no GPU measurement yet)"
    (tmp_path / "gpu_check.json").write_text(json.dumps(GPU_CHECK))
    monkeypatch.setenv("FANTASY_GPU_TIMINGS", str(tmp_path / "gpu_check.json"))
    measured = space.GpuTimeModel.load("q8_0")
    assert measured == space.GpuTimeModel(2.0, 21504, space.MEASURED_FIXED_S + 10.0,
                                          "measured on NVIDIA H100 80GB HBM3 (q8_0 DiT)")
    assert measured.seconds(81, 30, 3, 512) == math.ceil(30.0 + 30 * 3 * 2.0)
    assert space.GpuTimeModel.load("bf16").seconds_per_pass == 1.5
    assert space.GpuTimeModel.load("bf16-fp8").seconds_per_pass == 1.5  # not measured: the fastest that was
    (tmp_path / "gpu_check.json").write_text(json.dumps({**GPU_CHECK, "tiny": True}))
    with pytest.raises(InvalidSetting, match="cannot use the GPU timings in 'gpu_check.json': the GPU check holds "
                                             "no full-size DiT timing"):
        space.GpuTimeModel.load()


def test_zero_gpu_defaults_fit_one_call():
    model, cap = space.GpuTimeModel(), space.ZERO_GPU_CAP_S
    release = space.PageDefaults(steps=30, text_guidance=5.0, audio_guidance=5.0, max_duration_s=10.0)
    fitted = space.zero_gpu_defaults(release, 512, model, cap)
    assert fitted.max_duration_s == 3.4  # one clip: 81 frames at 23 fps (3.5 s would make 85, a second window)
    assert fitted.gpu_seconds <= cap < model.seconds(81, fitted.steps + 1, 3, 512)  # the most steps that fit
    assert (fitted.steps, fitted.gpu_seconds) == (8, 192)
    few_step = space.PageDefaults(steps=4, text_guidance=1.0, audio_guidance=1.0, max_duration_s=10.0)
    assert space.zero_gpu_defaults(few_step, 512, model, cap) == space.PageDefaults(4, 1.0, 1.0, 3.4, 82)


def test_zero_gpu_cap_from_the_environment(monkeypatch):
    assert space.zero_gpu_cap() == space.ZERO_GPU_CAP_S
    monkeypatch.setenv("FANTASY_ZERO_GPU_CAP_S", "280")
    assert space.zero_gpu_cap() == 280
    monkeypatch.setenv("FANTASY_ZERO_GPU_CAP_S", "5 min")
    with pytest.raises(InvalidSetting, match=r"^FANTASY_ZERO_GPU_CAP_S=5 min: give the per-call cap in whole "
                                             r"seconds \(at least 30\)$"):
        space.zero_gpu_cap()


class _Job:
    def __init__(self, frames: int, **settings):
        from fantasy.settings import Settings

        self.settings = Settings(**{"steps": 30, "longest_edge": 512, **settings})
        self.checked = type("Checked", (), {"num_frames": frames})()


def test_the_longest_duration_of_a_frame_count_follows_the_release_rule():
    assert (space.one_clip_seconds(), space.longest_duration(85), space.longest_duration(25)) == (3.4, 3.6, 1.0)


def test_a_request_over_the_cap_is_refused_saying_what_to_change():
    model = space.GpuTimeModel()
    assert space.check_fits(_Job(81, steps=8), model, 200) == 192
    message = ("This video needs about 1545 s of GPU time; a ZeroGPU call may take at most 200 s. To fit, use 2 "
               "steps or fewer, or lower the resolution to 144 px.")  # (no duration of 1 s or more fits at 30 steps)
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$") as refused:
        space.check_fits(_Job(233, steps=30), model, 200)  # the release's defaults on 10 s of speech: 3 windows
    assert refused.value.concerns == "steps"
    message = ("This video needs about 456 s of GPU time; a ZeroGPU call may take at most 200 s. To fit, shorten the "
               "maximum duration to 3.4 s, or use 2 steps or fewer, or lower the resolution to 304 px.")
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$") as refused:
        space.check_fits(_Job(233, steps=8), model, 200)
    assert refused.value.concerns == "max_duration"
