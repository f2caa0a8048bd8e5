"""`generate()` as a conductor: every setting reaches the pipeline, progress is reported in order, the result
says what was made. A recording stand-in for the pipeline makes each of these a fact, in a second."""

import dataclasses
import time
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.generation import Result, Settings, generate, prepare_inputs
from fantasy.media.output import video_bytes
from fantasy.weights.presets import get_preset
from tests.mp4_probe import probe

from .conftest import EXAMPLE_IMAGE, speech_like


class RecordingPipe:
    """Stands in for the pipeline's call: keeps its arguments, runs the step callback as `windows` windows of
    `steps` steps would, and hands out grey frames (frame i of the video is flat grey 10 + i) through `on_frames`,
    one latent frame's worth at a time."""

    motion_mode = "trained motion module"
    config = SimpleNamespace(default_longest_edge=64)

    def __init__(self, steps: int, new_frames: tuple[int, ...] = (81, 16), motion: bool = True, identity: bool = True):
        self.steps, self.new_frames, self.calls = steps, new_frames, []
        self.motion_context = object() if motion else None
        self.identity_context = object() if identity else None
        self.window_index, self.num_windows, self.num_timesteps = 0, 1, steps

    def __call__(self, **kw):
        self.calls.append(kw)
        x0 = torch.zeros(1, 16, 3, 8, 8)
        written = 0
        for index, count in enumerate(self.new_frames):
            self.window_index, self.num_windows = index, len(self.new_frames)
            for step in range(self.steps):
                tensors = {"x0": x0} if "x0" in kw["callback_on_step_end_tensor_inputs"] else {}
                assert kw["callback_on_step_end"](self, step, 1000.0 - step, tensors) == {}
            for start in range(0, count, 4):
                frames = np.arange(10 + written + start, 10 + written + min(count, start + 4), dtype=np.uint8)
                kw["on_frames"](np.broadcast_to(frames[:, None, None, None], (len(frames), 64, 64, 3)).copy())
            written += count


class RecordingPreview:
    def __init__(self):
        self.windows, self.steps = [], []

    def for_window(self, index, count):
        self.windows.append((index, count))
        return lambda step, steps, x0: self.steps.append((index, step, steps, tuple(x0.shape)))


@pytest.fixture
def four_seconds(tmp_path):
    speech = tmp_path / "four.wav"
    soundfile.write(speech, speech_like(4.0), 16_000)
    return speech


SETTINGS = Settings(prompt="a prompt", negative_prompt="a negative", seed=7, steps=3, text_guidance=4.5,
                    audio_guidance=3.5, audio_weight=1.25, longest_edge=64, motion=(0.25, 0.75), identity_scale=0.5)


def test_every_setting_reaches_the_pipeline_call(four_seconds, tmp_path):
    pipe, progress, face, preview = RecordingPipe(steps=3), [], Image.new("RGB", (32, 32)), RecordingPreview()
    result = generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"),
                      progress=lambda event: progress.append((event.stage, event.fraction)), face_image=face,
                      preview=preview)
    inputs = prepare_inputs(EXAMPLE_IMAGE, four_seconds, SETTINGS.resolved(get_preset("tiny")))
    (call,) = pipe.calls  # one call makes the whole video, its windows included
    assert call.keys() == {
        "image", "audio", "sampling_rate", "prompt", "negative_prompt", "height", "width", "num_frames", "fps",
        "window_frames", "num_inference_steps", "guidance_scale", "audio_guidance_scale", "audio_weight",
        "generator", "motion", "face_image", "identity_scale", "release", "output_type", "on_frames",
        "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
    assert {k: v for k, v in call.items() if k not in ("image", "audio", "generator", "face_image", "on_frames",
                                                       "callback_on_step_end")} == {
        "sampling_rate": 16_000, "prompt": "a prompt", "negative_prompt": "a negative", "height": 64, "width": 64,
        "num_frames": 97, "fps": 23, "window_frames": 81, "num_inference_steps": 3, "guidance_scale": 4.5,
        "audio_guidance_scale": 3.5, "audio_weight": 1.25, "motion": (0.25, 0.75), "identity_scale": 0.5,
        "release": False, "output_type": None, "callback_on_step_end_tensor_inputs": ["x0"]}
    assert call["face_image"] is face
    assert list(call["image"].getdata()) == list(inputs.portrait.getdata())
    # The speech as prepared: the whole 4 s track at 16 kHz (the pipeline pads it to the video's length).
    assert call["audio"].dtype == np.float32 and np.array_equal(call["audio"], inputs.speech)
    assert np.array_equal(call["audio"], soundfile.read(four_seconds, dtype="float32")[0])
    # One CPU generator seeded once with the seed (so window 2 continues its stream).
    generator = call["generator"]
    assert isinstance(generator, torch.Generator) and generator.initial_seed() == 7 and generator.device.type == "cpu"
    assert progress == [("denoise", (0 + 1 / 3) / 2), ("denoise", (0 + 2 / 3) / 2), ("denoise", 0.5)] + [
        ("decode", n / 97) for n in (*range(4, 81, 4), 81)] + [
        ("denoise", (1 + 1 / 3) / 2), ("denoise", (1 + 2 / 3) / 2), ("denoise", 1.0)] + [
        ("decode", n / 97) for n in range(85, 98, 4)]
    # Each window gets its own preview callback (its throttle starts with the window), with every step's x0.
    assert preview.windows == [(0, 2), (1, 2)]
    assert preview.steps == [(w, s, 3, (1, 16, 3, 8, 8)) for w in (0, 1) for s in (1, 2, 3)]
    assert dataclasses.replace(result, seconds_taken=0.0) == Result(
        path=tmp_path / "o.mp4", num_frames=97, fps=23, width=64, height=64, seconds_taken=0.0, speech_seconds=4.0,
        passes_per_step=3, windows=2, speech_cut=False, motion_mode="trained motion module", release=False)
    info = probe(tmp_path / "o.mp4")
    assert (info.frames, info.has_audio) == (97, True)


def test_without_a_preview_no_estimate_is_asked_for(four_seconds, tmp_path):
    pipe = RecordingPipe(steps=1)
    generate(pipe, EXAMPLE_IMAGE, four_seconds, None, SETTINGS, get_preset("tiny"))
    assert pipe.calls[0]["callback_on_step_end_tensor_inputs"] == [] and pipe.calls[0]["face_image"] is None


def test_settings_and_preset_have_defaults(four_seconds):
    """No settings: `Settings()` (the release's values, our prompt); no preset: the pipeline's own defaults."""
    pipe = RecordingPipe(steps=1)
    result = generate(pipe, EXAMPLE_IMAGE, four_seconds)
    (call,) = pipe.calls
    assert result.path is None and result.num_frames == 97
    assert (call["prompt"], call["num_inference_steps"], call["guidance_scale"], call["audio_guidance_scale"],
            call["width"], call["generator"].initial_seed()) == ("A person is talking.", 30, 5.0, 5.0, 64, 1111)


def test_seconds_taken_is_the_wall_time_of_the_run(four_seconds, tmp_path):
    before = time.perf_counter()
    result = generate(RecordingPipe(steps=1), EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS,
                      get_preset("tiny"), face_image=Image.new("RGB", (32, 32)))
    assert 0 < result.seconds_taken <= time.perf_counter() - before


def test_without_an_output_path_nothing_is_written_and_the_frames_are_counted(four_seconds, tmp_path):
    result = generate(RecordingPipe(steps=1), EXAMPLE_IMAGE, four_seconds, None, SETTINGS, get_preset("tiny"),
                      face_image=Image.new("RGB", (32, 32)))
    assert (result.path, result.num_frames, result.windows) == (None, 97, 2)
    assert list(tmp_path.iterdir()) == [four_seconds]


@pytest.mark.slow
def test_the_output_needs_room_for_the_stream_and_its_muxed_copy(four_seconds, tmp_path, monkeypatch):
    needed = []
    monkeypatch.setattr("fantasy.generation.check_target", lambda path, needed_bytes: needed.append(needed_bytes))
    generate(RecordingPipe(steps=1), EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"),
             face_image=Image.new("RGB", (32, 32)))
    assert needed == [2 * video_bytes(97, 64, 64, 97 / 23)]


def test_motion_coefficients_need_a_motion_module(four_seconds, tmp_path):
    pipe = RecordingPipe(steps=1, motion=False)
    with pytest.raises(InvalidSetting,
                       match=r"^motion coefficients need trained motion-module weights \(see docs/training\.md\)$"):
        generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"))
    assert pipe.calls == [] and list(tmp_path.iterdir()) == [four_seconds]


def test_speech_is_decoded_up_to_what_the_video_can_use(tmp_path):
    """Long videos keep the speech up to the maximum duration; release mode only its one clip (81 / 23 s), each
    plus the decoder's margin. Either way the whole track's duration is known."""
    from fantasy.media.audio import DECODE_MARGIN_S

    speech = tmp_path / "eight.wav"
    soundfile.write(speech, speech_like(8.0), 16_000)
    whole = prepare_inputs(EXAMPLE_IMAGE, speech, Settings(longest_edge=64, max_duration=10.0))
    assert len(whole.speech) == 128_000 and whole.speech_seconds == 8.0 and whole.num_frames == 189
    clip = prepare_inputs(EXAMPLE_IMAGE, speech, Settings(longest_edge=64, release=True))
    assert len(clip.speech) < (81 / 23 + DECODE_MARGIN_S + 0.1) * 16_000 and clip.speech_seconds == 8.0
    assert (clip.num_frames, clip.speech_cut) == (81, True)


@pytest.mark.slow
def test_windows_follow_the_max_frames_setting(four_seconds, tmp_path):
    pipe = RecordingPipe(steps=1, new_frames=(41, 36, 20))  # 97 frames: windows of 41, 41 and 25 (5 repeated)
    settings = dataclasses.replace(SETTINGS, max_frames=41)
    result = generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", settings, get_preset("tiny"),
                      face_image=Image.new("RGB", (32, 32)))
    assert pipe.calls[0]["window_frames"] == 41 and pipe.calls[0]["num_frames"] == 97
    assert result.windows == 3 and result.num_frames == 97


def test_the_room_asked_for_counts_the_audio_only_when_there_is_audio(four_seconds):
    inputs = prepare_inputs(EXAMPLE_IMAGE, four_seconds, SETTINGS.resolved(get_preset("tiny")))
    assert inputs.output_bytes(23) == video_bytes(97, 64, 64, 97 / 23)
    assert inputs.output_bytes(23, audio=False) == video_bytes(97, 64, 64, 97 / 23, audio=False)


def test_generate_writes_frame_for_frame_what_the_pipeline_call_returns(tiny_pipe, speech_wav, tmp_path):
    """generate() is the file path over `pipe(...)`: 2 s of speech cut at 1 s, 9-frame windows (25 frames, 5
    windows chained by motion frames): the frames it streams and writes are the call's, exactly."""
    from fantasy.model.pipeline_output import uint8_frames

    settings = Settings(longest_edge=64, steps=2, max_frames=9, max_duration=1.0, seed=5)
    seen = []
    result = generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "o.mp4", settings, get_preset("tiny"),
                      on_frames=seen.append)
    out = tiny_pipe(image=str(EXAMPLE_IMAGE), audio=str(speech_wav), longest_edge=64, num_frames=25, window_frames=9,
                    num_inference_steps=2, generator=torch.Generator().manual_seed(5))
    assert (result.num_frames, result.windows, result.speech_cut) == (25, 5, True)
    assert out.frames.shape == (1, 25, 64, 64, 3)
    np.testing.assert_array_equal(np.concatenate(seen), uint8_frames(out.frames, "np"))
    assert probe(tmp_path / "o.mp4").frames == 25
    assert len(out.audio) == int(25 / 23 * 16_000) and out.sampling_rate == 16_000 and out.fps == 23
