"""`generate()` as a conductor: every setting reaches the pipeline, progress is reported in order, the result
says what was made. A recording stand-in for the pipeline makes each of these a fact, in a second."""

import dataclasses
import time

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
    """Stands in for the pipeline: keeps every call's arguments, reports each step, decodes grey frames."""

    motion_mode = "trained motion module"

    def __init__(self, steps: int, motion: bool = True, identity: bool = True):
        self.steps, self.calls, self.decodes = steps, [], []
        self.motion_context = object() if motion else None
        self.identity_context = object() if identity else None

    def project_audio(self, samples):
        self.samples = samples
        return torch.arange(len(samples) // 320, dtype=torch.float32).view(1, -1, 1)

    def encode_audio(self, samples, num_frames):
        raise AssertionError("a long video takes its audio from the whole track")

    def __call__(self, **kw):
        self.calls.append(kw)
        for done in range(1, self.steps + 1):
            kw["step_callback"](done, self.steps)
        return kw["num_frames"]

    def decode_frames(self, num_frames, **kw):
        """Frame i of a window is flat grey 10 + i."""
        self.decodes.append(kw)
        yield np.broadcast_to(np.arange(10, 10 + num_frames, dtype=np.uint8)[:, None, None, None],
                              (num_frames, 64, 64, 3)).copy()


class RecordingPreview:
    def for_window(self, index, count):
        return ("preview", index, count)


@pytest.fixture
def four_seconds(tmp_path):
    speech = tmp_path / "four.wav"
    soundfile.write(speech, speech_like(4.0), 16_000)
    return speech


SETTINGS = Settings(prompt="a prompt", negative_prompt="a negative", seed=7, steps=3, text_guidance=4.5,
                    audio_guidance=3.5, audio_weight=1.25, longest_edge=64, motion=(0.25, 0.75), identity_scale=0.5)


def test_every_setting_reaches_the_pipeline_in_every_window(four_seconds, tmp_path):
    pipe, progress, face = RecordingPipe(steps=3), [], Image.new("RGB", (32, 32))
    result = generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"),
                      progress=lambda stage, fraction: progress.append((stage, fraction)), face_image=face,
                      preview=RecordingPreview())
    portrait = prepare_inputs(EXAMPLE_IMAGE, four_seconds, SETTINGS.resolved(get_preset("tiny"))).portrait
    assert len(pipe.calls) == 2  # 97 frames: windows of 81 and 21 (16 new after 5 motion frames)
    generator = pipe.calls[0]["generator"]
    for index, (call, frames) in enumerate(zip(pipe.calls, (81, 21), strict=True)):
        assert call.keys() == {
            "image", "audio_windows", "audio_lengths", "prompt", "negative_prompt", "num_frames",
            "num_inference_steps", "text_guidance_scale", "audio_guidance_scale", "audio_weight", "generator",
            "step_callback", "motion_frames", "motion", "face_image", "identity_scale", "preview_callback"}
        assert (call["prompt"], call["negative_prompt"], call["num_frames"], call["num_inference_steps"],
                call["text_guidance_scale"], call["audio_guidance_scale"], call["audio_weight"], call["motion"],
                call["identity_scale"], call["preview_callback"]) == (
            "a prompt", "a negative", frames, 3, 4.5, 3.5, 1.25, (0.25, 0.75), 0.5, ("preview", index, 2))
        assert call["face_image"] is face and call["generator"] is generator
        assert list(call["image"].getdata()) == list(portrait.getdata())
        assert call["audio_windows"].shape[1] == call["audio_lengths"].shape[0] == (frames - 1) // 4 + 1
    # The audio: the whole track, as float32, zero-padded to the video's 97 frames.
    speech = soundfile.read(four_seconds, dtype="float32")[0]
    assert pipe.samples.dtype == np.float32 and len(pipe.samples) == int(97 / 23 * 16_000) == 67_478
    assert np.array_equal(pipe.samples[:64_000], speech) and not pipe.samples[64_000:].any()
    # One generator seeded once with the seed, shared by the windows (so window 2 continues its stream).
    assert isinstance(generator, torch.Generator) and generator.initial_seed() == 7
    assert pipe.calls[0]["motion_frames"] is None
    # Window 2 starts from the last 5 written frames (greys 86..90), in pixels [-1, 1] as [1, 3, 5, H, W].
    motion_frames = pipe.calls[1]["motion_frames"]
    expected = (torch.arange(86, 91, dtype=torch.float64) / 127.5 - 1).view(1, 1, 5, 1, 1).expand(1, 3, 5, 64, 64)
    assert motion_frames.dtype == torch.float32
    torch.testing.assert_close(motion_frames.double(), expected, rtol=0, atol=1e-7)  # float32 rounding: 6e-8
    assert pipe.decodes == [{}, {}]  # the long-video decode, not the release's
    assert progress == [("denoise", (0 + 1 / 3) / 2), ("denoise", (0 + 2 / 3) / 2), ("denoise", 0.5),
                        ("decode", 81 / 97),
                        ("denoise", (1 + 1 / 3) / 2), ("denoise", (1 + 2 / 3) / 2), ("denoise", 1.0),
                        ("decode", 1.0)]
    assert dataclasses.replace(result, seconds_taken=0.0) == Result(
        path=tmp_path / "o.mp4", num_frames=97, fps=23, width=64, height=64, seconds_taken=0.0, speech_seconds=4.0,
        passes_per_step=3, windows=2, speech_cut=False, motion_mode="trained motion module", release=False)
    info = probe(tmp_path / "o.mp4")
    assert (info.frames, info.has_audio) == (97, True)


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


def test_with_an_identity_module_the_face_crop_comes_from_the_portrait(four_seconds, tmp_path, monkeypatch):
    crops = []
    crop = Image.new("RGB", (16, 16))
    monkeypatch.setattr("fantasy.generation.portrait_face_crop", lambda portrait: crops.append(portrait) or crop)
    pipe = RecordingPipe(steps=1)
    generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"))
    assert len(crops) == 1 and crops[0].size == (64, 64)  # the resized portrait the model sees
    assert [call["face_image"] for call in pipe.calls] == [crop, crop]
    no_identity = RecordingPipe(steps=1, identity=False)
    generate(no_identity, EXAMPLE_IMAGE, four_seconds, tmp_path / "p.mp4", SETTINGS, get_preset("tiny"))
    assert len(crops) == 1 and [call["face_image"] for call in no_identity.calls] == [None, None]


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


def test_windows_follow_the_max_frames_setting(four_seconds, tmp_path):
    pipe = RecordingPipe(steps=1)
    settings = dataclasses.replace(SETTINGS, max_frames=41)
    result = generate(pipe, EXAMPLE_IMAGE, four_seconds, tmp_path / "o.mp4", settings, get_preset("tiny"),
                      face_image=Image.new("RGB", (32, 32)))
    assert [call["num_frames"] for call in pipe.calls] == [41, 41, 25] and result.windows == 3  # 97 frames


def test_one_window_takes_the_releases_clip_audio(tmp_path):
    """Up to one window, the audio is the release's: features of the clip [0, frames / fps), not of the track."""
    speech = tmp_path / "two.wav"
    soundfile.write(speech, speech_like(2.0), 16_000)

    class ClipPipe(RecordingPipe):
        def project_audio(self, samples):
            raise AssertionError("one clip takes its audio from encode_audio, as the release")

        def encode_audio(self, samples, num_frames):
            self.clip = (len(samples), num_frames)
            return torch.zeros(1, (num_frames - 1) // 4 + 1, 4, 8), torch.full(((num_frames - 1) // 4 + 1,), 4)

    pipe = ClipPipe(steps=1)
    generate(pipe, EXAMPLE_IMAGE, speech, tmp_path / "o.mp4", SETTINGS, get_preset("tiny"),
             face_image=Image.new("RGB", (32, 32)))
    # [0, 49 / 23 s) of a 2 s track is all of its 32,000 samples (the release does not pad the clip)
    assert pipe.clip == (32_000, 49) and len(pipe.calls) == 1


def test_the_room_asked_for_counts_the_audio_only_when_there_is_audio(four_seconds):
    inputs = prepare_inputs(EXAMPLE_IMAGE, four_seconds, SETTINGS.resolved(get_preset("tiny")))
    assert inputs.output_bytes(23) == video_bytes(97, 64, 64, 97 / 23)
    assert inputs.output_bytes(23, audio=False) == video_bytes(97, 64, 64, 97 / 23, audio=False)
