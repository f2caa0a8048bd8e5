"""`FantasyTalkingPipeline.__call__` as a diffusers call, on the tiny preset: portrait and speech in (paths, PIL
images, arrays), frames out in every `output_type`, `callback_on_step_end` by diffusers' contract, long speech."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from fantasy.errors import InvalidSetting, SilentAudio
from fantasy.media.audio import resample_like_librosa
from fantasy.media.image import resize_portrait
from fantasy.model.decode import decode_release_tiles
from fantasy.model.pipeline_output import FantasyTalkingPipelineOutput, uint8_frames
from tests.mp4_probe import probe

from .conftest import EXAMPLE_IMAGE, speech_like

SPEECH = speech_like(1.0)  # 25 frames at 23 fps


@pytest.fixture(scope="module")
def pipe(tiny_pipe):
    tiny_pipe.set_progress_bar_config(disable=True)
    return tiny_pipe


def call(pipe, seed=3, **kw):
    args = dict(image=EXAMPLE_IMAGE, audio=SPEECH, sampling_rate=16_000, longest_edge=64, num_frames=9,
                num_inference_steps=2, generator=torch.Generator().manual_seed(seed)) | kw
    return pipe(**args)


# ---- outputs ------------------------------------------------------------------------------------------


def test_every_output_type_holds_the_same_video(pipe):
    np_out = call(pipe)
    pt_out, pil_out, latent_out = (call(pipe, output_type=kind) for kind in ("pt", "pil", "latent"))
    assert isinstance(np_out, FantasyTalkingPipelineOutput)
    assert np_out.frames.shape == (1, 9, 64, 64, 3) and np_out.frames.dtype == np.float32
    assert np_out.frames.min() >= 0 and np_out.frames.max() <= 1
    assert pt_out.frames.shape == (1, 9, 3, 64, 64) and pt_out.frames.dtype == torch.float32
    assert len(pil_out.frames) == 1 and len(pil_out.frames[0]) == 9 and pil_out.frames[0][0].size == (64, 64)
    assert latent_out.frames.shape == (1, 16, 3, 8, 8)  # normalised latents, as diffusers' "latent" output
    frames = uint8_frames(np_out.frames, "np")
    assert np.array_equal(frames, uint8_frames(pt_out.frames, "pt"))
    assert np.array_equal(frames, np.stack([np.asarray(image) for image in pil_out.frames[0]]))
    assert np.array_equal(np_out.frames, pipe.decode_latents(latent_out.frames))  # "latent", decoded later
    assert torch.equal(pt_out.frames, torch.from_numpy(np_out.frames).permute(0, 1, 4, 2, 3))
    assert np.array_equal((np_out.frames[0] * 255).astype(np.uint8), frames)  # diffusers' export_to_video truncates
    assert frames.std() > 5  # a real video, not a constant


def test_a_long_videos_latents_decode_to_the_same_video(pipe):
    """17 frames in 9-frame windows: 3 windows, chained by motion frames; their latents, decoded and stitched
    again, are the video the call returned."""
    video = call(pipe, num_frames=17, window_frames=9)
    latents = call(pipe, num_frames=17, window_frames=9, output_type="latent")
    assert video.frames.shape == (1, 17, 64, 64, 3)
    assert [tuple(w.shape) for w in latents.frames] == [(1, 16, 3, 8, 8)] * 3
    assert np.array_equal(pipe.decode_latents(latents.frames), video.frames)
    with pytest.raises(InvalidSetting, match=r"not the windows of one video \(window lengths \[9, 5\]\)"):
        pipe.decode_latents([latents.frames[0], latents.frames[1][:, :, :2]])


def test_return_dict_false_and_the_audio_it_used(pipe):
    frames, audio = call(pipe, output_type="pt", return_dict=False)
    assert frames.shape == (1, 9, 3, 64, 64)
    assert np.array_equal(audio, SPEECH[: int(9 / 23 * 16_000)])  # the speech the 9 frames animate


def test_on_frames_streams_the_frames_in_order_and_output_type_none_keeps_none(pipe):
    chunks = []
    kept = call(pipe, num_frames=17, window_frames=9)
    streamed = call(pipe, num_frames=17, window_frames=9, output_type=None, on_frames=chunks.append)
    assert streamed.frames is None
    assert [len(c) for c in chunks] == [1, 4, 4, 4, 4]  # window 1: 1 + 4 + 4; windows 2, 3: 4 new each
    assert np.array_equal(np.concatenate(chunks), uint8_frames(kept.frames, "np"))


def test_save_writes_the_video_with_its_speech(pipe, tmp_path):
    out = call(pipe, output_type="pil")
    path = out.save(tmp_path / "talking.mp4")
    info = probe(path)
    assert (info.frames, info.width, info.height, info.fps) == (9, 64, 64, 23.0) and info.has_audio
    assert info.audio_duration == pytest.approx(9 / 23, abs=0.05)
    with pytest.raises(ValueError, match=r"holds no frames \(output_type 'latent'\); decode it first"):
        call(pipe, output_type="latent").save(tmp_path / "no.mp4")


# ---- inputs ---------------------------------------------------------------------------------------------


def test_an_odd_sized_image_is_resized_like_the_release(pipe):
    odd = Image.open(EXAMPLE_IMAGE).convert("RGB").resize((97, 131))
    out = call(pipe, image=odd, output_type="latent")
    assert out.frames.shape == (1, 16, 3, 64 // 8, 48 // 8)  # 64 x 47 -> sides up to multiples of 16: 48 x 64
    resized = resize_portrait(odd, 64)
    assert resized.size == (48, 64)
    same = call(pipe, image=resized, output_type="latent")  # the release's sizing, done beforehand
    assert torch.equal(out.frames, same.frames)
    explicit = call(pipe, image=odd, height=70, width=50, output_type="np")  # up to 80 x 64
    assert explicit.frames.shape == (1, 9, 80, 64, 3)
    with pytest.raises(InvalidSetting, match="^give both height and width, or neither"):
        call(pipe, image=odd, height=64)


def test_an_image_array_equals_the_image(pipe):
    image = resize_portrait(Image.open(EXAMPLE_IMAGE).convert("RGB"), 64)
    pixels = np.array(image)
    reference = call(pipe, image=image, output_type="latent").frames
    for array in (pixels, pixels.transpose(2, 0, 1), pixels.astype(np.float32) / 255, torch.from_numpy(pixels)):
        assert torch.equal(call(pipe, image=array, output_type="latent").frames, reference)
    with pytest.raises(InvalidSetting, match=r"must hold values in \[0, 1\]"):
        call(pipe, image=pixels.astype(np.float32))


def test_speech_as_samples_equals_speech_as_a_file(pipe, tmp_path):
    mono = tmp_path / "mono.wav"
    soundfile.write(mono, SPEECH, 16_000, subtype="FLOAT")
    from_file = call(pipe, audio=mono, sampling_rate=None, output_type="latent")
    from_array = call(pipe, audio=SPEECH, output_type="latent")
    from_tensor = call(pipe, audio=torch.from_numpy(SPEECH), output_type="latent")
    assert torch.equal(from_file.frames, from_array.frames) and torch.equal(from_file.frames, from_tensor.frames)
    assert np.array_equal(from_file.audio, from_array.audio)
    # 44.1 kHz stereo: the file's samples ([n, 2]) and the channels-first array give the file's video
    stereo = np.stack([SPEECH, 0.5 * SPEECH], axis=1)
    stereo = np.stack([resample_like_librosa(stereo[:, c], 16_000, 44_100) for c in range(2)], axis=1)
    wav = tmp_path / "stereo.wav"
    soundfile.write(wav, stereo, 44_100, subtype="FLOAT")
    from_wav = call(pipe, audio=wav, sampling_rate=None, output_type="latent")
    read, rate = soundfile.read(wav, dtype="float32")
    assert torch.equal(call(pipe, audio=read, sampling_rate=rate, output_type="latent").frames, from_wav.frames)
    assert torch.equal(call(pipe, audio=read.T, sampling_rate=rate, output_type="latent").frames, from_wav.frames)
    assert not torch.equal(from_wav.frames, from_file.frames)  # the mix and resampling do change the speech
    pcm = (np.clip(SPEECH, -1, 1) * 32767).astype(np.int16)
    soundfile.write(tmp_path / "pcm.wav", pcm, 16_000, subtype="PCM_16")
    assert torch.equal(call(pipe, audio=pcm, output_type="latent").frames,
                       call(pipe, audio=tmp_path / "pcm.wav", output_type="latent").frames)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"sampling_rate": None}, InvalidSetting, r"^speech given as samples needs its sampling_rate \(e.g."),
    ({"audio": np.zeros(32_000, np.float32)}, SilentAudio, "is silent"),
    ({"audio": np.zeros((3, 4, 5), np.float32)}, InvalidSetting, r"must be \[n\], \[channels, n\] or \[n, channels\]"),
    ({"num_frames": 10}, InvalidSetting, r"^num_frames must be 4k\+1 and at least 5 \(e.g. 81\), got 10$"),
    ({"num_frames": 85, "release": True}, InvalidSetting, "one clip of at most 81 frames, got num_frames=85"),
    ({"window_frames": 5}, InvalidSetting, r"^window_frames must be 4k\+1 and more than 5"),
    ({"output_type": "mp4"}, InvalidSetting, r"^output_type must be one of 'np', 'pt', 'pil', 'latent', None"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, InvalidSetting, "can name latents, prompt_embeds, "
                                                                        "negative_prompt_embeds, x0; got noise"),
    ({"motion": (0.5, 0.5)}, InvalidSetting, r"^motion coefficients need trained motion-module weights"),
    ({"face_image": Image.new("RGB", (32, 32))}, InvalidSetting, "no identity module is installed"),
])
def test_bad_arguments_are_refused_before_any_model_work(pipe, kwargs, error, message):
    from tests.faults import model_work

    with model_work(pipe) as ran, pytest.raises(error, match=message):
        call(pipe, **kwargs)
    assert ran == []


def test_the_whole_speech_by_default_and_the_release_clip_in_release_mode(pipe, monkeypatch):
    """No num_frames: the whole speech (4.3 s: 101 frames, 2 windows); release: its one clip of 81 frames."""
    lengths = []
    original = pipe.denoise
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: lengths.append(k["num_frames"]) or original(
        *a, **k | {"num_inference_steps": 1}))
    speech = speech_like(4.3)
    long = pipe(image=EXAMPLE_IMAGE, audio=speech, sampling_rate=16_000, longest_edge=64, output_type="latent")
    assert lengths == [81, 25] and len(long.frames) == 2  # int(23 * 4.3 // 4) * 4 + 5 = 101 = 81 + 20 new
    clip = pipe(image=EXAMPLE_IMAGE, audio=speech, sampling_rate=16_000, longest_edge=64, release=True,
                output_type="latent")
    assert lengths[2:] == [81] and clip.frames.shape[2] == 21 and len(clip.audio) == int(81 / 23 * 16_000)


def test_release_mode_decodes_as_the_release(pipe):
    video = call(pipe, release=True)
    latents = call(pipe, release=True, output_type="latent").frames
    with torch.no_grad():
        release_frames = np.concatenate(list(decode_release_tiles(pipe.vae, latents)))
    assert np.array_equal(uint8_frames(video.frames, "np"), release_frames)
    assert np.array_equal(pipe.decode_latents(latents, release=True), video.frames)
    rounded = uint8_frames(pipe.decode_latents(latents), "np").astype(int)
    assert set(np.unique(rounded - release_frames)) <= {0, 1} and (rounded != release_frames).any()  # truncation


# ---- callback_on_step_end ------------------------------------------------------------------------------


def test_the_callback_sees_every_step_and_its_returned_latents_replace_the_pipelines(pipe):
    seen = []

    def observe(p, step, timestep, tensors):
        seen.append((p is pipe, step, float(timestep), p.num_timesteps, p.window_index, p.num_windows,
                     sorted(tensors)))
        return {}

    plain = call(pipe, output_type="latent", num_inference_steps=3).frames
    observed = call(pipe, output_type="latent", num_inference_steps=3, callback_on_step_end=observe,
                    callback_on_step_end_tensor_inputs=["latents", "x0", "prompt_embeds"]).frames
    timesteps = [float(t) for t in pipe.scheduler.timesteps]
    assert seen == [(True, i, timesteps[i], 3, 0, 1, ["latents", "prompt_embeds", "x0"]) for i in range(3)]
    assert torch.equal(observed, plain)  # reading changes nothing

    def zero_at_the_end(p, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 2 else {}

    assert not call(pipe, output_type="latent", num_inference_steps=3, callback_on_step_end=zero_at_the_end).frames.any()

    # Halving the latents after step 1: step 2's transformer passes start from exactly those halved latents.
    after_step_one, inputs = [], []

    def halve_after_step_one(p, step, timestep, tensors):
        if step == 0:
            after_step_one.append(tensors["latents"].clone())
            return {"latents": tensors["latents"] / 2}
        return {}

    forward = pipe.transformer.forward

    def recording(*args, **kwargs):
        inputs.append(kwargs["hidden_states"][:, :16].clone())
        return forward(*args, **kwargs)

    pipe.transformer.forward = recording
    try:
        changed = call(pipe, output_type="latent", num_inference_steps=2, callback_on_step_end=halve_after_step_one)
    finally:
        del pipe.transformer.forward
    assert len(inputs) == 6 and torch.equal(inputs[3], after_step_one[0] / 2)  # step 2's first pass
    assert not torch.equal(changed.frames, call(pipe, output_type="latent", num_inference_steps=2).frames)


def test_interrupt_stops_after_the_current_step_and_runs_no_further_window(pipe):
    steps = []

    def stop(p, step, timestep, tensors):
        steps.append((p.window_index, step))
        p._interrupt = True
        return {}

    out = call(pipe, num_frames=17, window_frames=9, num_inference_steps=3, callback_on_step_end=stop)
    assert steps == [(0, 0)]
    assert out.frames.shape == (1, 9, 64, 64, 3)  # the first window, as far as it got
    assert pipe.interrupt  # until the next call, which starts afresh:
    assert call(pipe, num_frames=17, window_frames=9).frames.shape == (1, 17, 64, 64, 3) and not pipe.interrupt


# ---- modules ----------------------------------------------------------------------------------------------


def test_an_identity_module_gets_the_portraits_face_crop_by_default(monkeypatch):
    from fantasy.model.identity import install_identity_module
    from fantasy.weights.presets import load_pipeline

    fresh = load_pipeline("tiny")
    fresh.set_progress_bar_config(disable=True)
    fresh.identity_context = install_identity_module(fresh.transformer, 16)
    crops, faces = [], []
    crop = Image.new("RGB", (32, 32), (200, 150, 120))
    monkeypatch.setattr("fantasy.model.pipeline.portrait_face_crop", lambda portrait: crops.append(portrait) or crop)
    original = fresh.denoise
    monkeypatch.setattr(fresh, "denoise", lambda *a, **k: faces.append(k["face_image"]) or original(*a, **k))
    call(fresh, num_frames=17, window_frames=9, output_type="latent")
    assert len(crops) == 1 and crops[0].size == (64, 64)  # the resized portrait the model sees, cropped once
    assert faces == [crop] * 3
    given = Image.new("RGB", (32, 32), (10, 20, 30))
    call(fresh, face_image=given, output_type="latent")
    assert len(crops) == 1 and faces[-1] is given
