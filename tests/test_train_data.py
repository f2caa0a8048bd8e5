"""fantasy.train data side: clip discovery, samples, landmarks, motion labels, lip tokens, feature cache."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from fantasy.errors import (
    ClipTooShort,
    InputFileNotFound,
    InvalidSetting,
    NoFaceFound,
    SilentAudio,
    TrainingDataError,
    WeightsMissing,
)
from fantasy.face import shared_analyzer
from fantasy.media.audio import SAMPLE_RATE, feature_length
from fantasy.metrics.frames import read_video
from fantasy.train import tracks
from fantasy.train.cache import CachedClip, cache_dataset, encode_sample, encode_text, read_metadata
from fantasy.train.clips import DEFAULT_PROMPT, SampleSpec, discover_clips, load_sample
from fantasy.train.dataset import TrainingSet
from fantasy.train.fingerprint import cache_fingerprint, pipeline_fingerprint
from fantasy.train.labels import body_score, expression_score, lip_token_mask, motion_labels, rank_normalise
from tests.synthetic_clips import speech_samples, syllable_envelope, talking_frames, write_mp4, write_wav
from tests.synthetic_faces import draw_face, measured_landmarks, template_landmarks

SPEC = SampleSpec(num_frames=17, fps=25, width=64, height=64)


def _speech(path, frames: int, seed: int = 0):
    return write_wav(path, speech_samples(syllable_envelope(frames, seed=seed), seed=seed))


def _talking_clip(folder, name: str, frames: int = 20, head_motion: float = 0.0, talking: bool = True,
                  speech: str | None = "wav", size: int = 96):
    """NAME.mp4 of a drawn face; speech in NAME.wav ("wav"), in the video's track ("track") or nowhere (None)."""
    env = syllable_envelope(frames) if talking else np.full(frames, 0.4)
    video = talking_frames(env, size=size, head_motion=head_motion)
    wav = _speech(folder / f"{name}.wav", frames) if speech else None
    path = write_mp4(folder / f"{name}.mp4", video, audio=wav if speech == "track" else None)
    if speech == "track":
        wav.unlink()
    return path


def _mouth_centre(points: np.ndarray) -> np.ndarray:
    return points[[62, 66]].mean(axis=0)


# ---------------------------------------------------------------- discovery


@pytest.mark.slow
def test_discover_pairs_each_video_with_its_speech_prompt_and_landmarks(tmp_path) -> None:
    _talking_clip(tmp_path, "b_talk")
    _talking_clip(tmp_path, "a_track", speech="track")
    (tmp_path / "b_talk.txt").write_text("A woman is talking.\n")
    np.save(tmp_path / "b_talk.landmarks.npy", np.zeros((20, 68, 2)))
    (tmp_path / "notes.md").write_text("not a clip")
    _speech(tmp_path / "orphan.wav", 10)  # speech without a video is not a clip
    clips = discover_clips(tmp_path)
    assert [c.name for c in clips] == ["a_track", "b_talk"]
    track, talk = clips
    assert track.speech is None and track.prompt == DEFAULT_PROMPT and track.landmarks_file is None
    assert talk.speech == tmp_path / "b_talk.wav" and talk.prompt == "A woman is talking."
    assert talk.landmarks_file == tmp_path / "b_talk.landmarks.npy"


def test_discover_rejects_missing_empty_and_ambiguous_folders(tmp_path) -> None:
    with pytest.raises(InputFileNotFound, match="not found"):
        discover_clips(tmp_path / "nowhere")
    with pytest.raises(TrainingDataError, match="No training clips"):
        discover_clips(tmp_path)
    _speech(tmp_path / "lonely.wav", 10)
    with pytest.raises(TrainingDataError, match="No training clips"):
        discover_clips(tmp_path)
    _talking_clip(tmp_path, "x")
    shutil.copy(tmp_path / "x.wav", tmp_path / "x.flac")
    with pytest.raises(TrainingDataError, match="several speech files"):
        discover_clips(tmp_path)
    (tmp_path / "x.flac").unlink()
    shutil.copy(tmp_path / "x.mp4", tmp_path / "x.mov")
    with pytest.raises(TrainingDataError, match="Two videos for clip 'x'"):
        discover_clips(tmp_path)


def test_sample_spec_rejects_shapes_the_model_cannot_take() -> None:
    with pytest.raises(InvalidSetting, match="4k\\+1"):
        SampleSpec(num_frames=16)
    with pytest.raises(InvalidSetting, match="multiples of 16"):
        SampleSpec(width=60)
    with pytest.raises(InvalidSetting, match="fps"):
        SampleSpec(fps=0)


# ---------------------------------------------------------------- samples


@pytest.mark.slow
def test_read_video_stops_after_max_seconds(tmp_path) -> None:
    path = write_mp4(tmp_path / "v.mp4", talking_frames(np.zeros(20), size=32))
    assert read_video(path, max_seconds=0.5).num_frames == 13  # frames shown in [0, 0.5 s) at 25 fps
    assert read_video(path, max_seconds=0.48).num_frames == 12  # exactly 12 frames' time: no extra frame
    assert read_video(path, max_seconds=10.0).num_frames == 20


def test_sample_takes_nearest_source_frames_at_the_training_rate(tmp_path) -> None:
    levels = 10 + 6 * np.arange(40)  # frame i is a flat grey of level 10 + 6i: its index can be read back
    frames = np.repeat(levels[:, None, None, None], 72 * 96 * 3, axis=1).reshape(40, 72, 96, 3).astype(np.uint8)
    write_mp4(tmp_path / "ramp.mp4", frames, fps=30)
    _speech(tmp_path / "ramp.wav", 40)
    np.save(tmp_path / "ramp.landmarks.npy", np.tile(template_landmarks(0.3, (48, 36), 30), (40, 1, 1)))
    sample = load_sample(discover_clips(tmp_path)[0], SPEC)
    assert sample.frames.shape == (17, 64, 64, 3) and sample.frames.dtype == np.uint8
    assert sample.fps == 25 and sample.filled_frames == 0
    expected = levels[np.floor(np.arange(17) * 30 / 25 + 0.5).astype(int)]  # 0, 1, 2, 4, 5, 6, 7, 8, 10, ...
    assert np.abs(sample.frames.reshape(17, -1).mean(axis=1) - expected).max() < 3  # levels are 6 apart


@pytest.mark.slow
def test_speech_is_cut_or_padded_to_exactly_the_sample_span(tmp_path) -> None:
    _talking_clip(tmp_path, "long", frames=30)  # 1.2 s of speech for a 0.68 s sample: cut
    samples, rate = soundfile.read(tmp_path / "long.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    long_sample = load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)
    n = int(17 / 25 * SAMPLE_RATE)
    assert SPEC.num_samples == n == 10880
    assert long_sample.speech.shape == (n,) and long_sample.speech.dtype == np.float32
    np.testing.assert_array_equal(long_sample.speech, samples[:n])

    (tmp_path / "long.wav").unlink()
    short = _speech(tmp_path / "long.wav", 10)  # 0.4 s of speech: zero-padded to the span
    short_samples, _ = soundfile.read(short, dtype="float32")
    padded = load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks).speech
    assert padded.shape == (n,)
    np.testing.assert_array_equal(padded[: short_samples.size], short_samples)
    assert not padded[short_samples.size :].any()


@pytest.mark.slow
def test_speech_from_the_video_track_has_the_exact_length(tmp_path) -> None:
    _talking_clip(tmp_path, "muxed", speech="track")
    sample = load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)
    assert sample.speech.shape == (SPEC.num_samples,)
    assert np.abs(sample.speech).max() > 0.05


def test_landmarks_are_moved_with_the_resize_and_centre_crop(tmp_path) -> None:
    frame, lm = draw_face(96, 128, 0.6, center=(70.0, 50.0), size=40.0)  # wide source: the crop cuts the sides
    write_mp4(tmp_path / "wide.mp4", np.repeat(frame[None], 20, axis=0))
    _speech(tmp_path / "wide.wav", 20)
    np.save(tmp_path / "wide.landmarks.npy", np.tile(lm, (20, 1, 1)))
    sample = load_sample(discover_clips(tmp_path)[0], SPEC)
    # Scale 2/3 covers 64 px of height: 128x96 -> 85x64, crop 10 px off the left. Mouth centre (70, 62):
    expected = np.array([70.5 * 85 / 128 - 0.5 - 10, 62.5 * 64 / 96 - 0.5])
    np.testing.assert_allclose(_mouth_centre(sample.landmarks[0]), expected, atol=1e-9)
    np.testing.assert_allclose(sample.landmarks[5], sample.landmarks[0])
    # The picture moved the same way: the mouth found in the cropped frame is where the points say.
    seen = measured_landmarks(sample.frames[0])
    assert np.abs(_mouth_centre(seen) - expected).max() < 1.5


@pytest.mark.slow
def test_clip_exactly_one_sample_long_loads_and_one_frame_less_is_too_short(tmp_path) -> None:
    _talking_clip(tmp_path, "exact", frames=17)
    assert load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks).frames.shape[0] == 17
    for path in tmp_path.iterdir():
        path.unlink()
    _talking_clip(tmp_path, "short", frames=16)
    with pytest.raises(ClipTooShort, match=r"'short\.mp4' lasts 0\.64 s .* needs 0\.68 s"):
        load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)


def test_clip_without_speech_or_with_silence_is_an_error(tmp_path) -> None:
    _talking_clip(tmp_path, "mute", speech=None)
    with pytest.raises(TrainingDataError, match=r"'mute\.mp4' has no usable speech.*mute\.wav"):
        load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)
    write_wav(tmp_path / "mute.wav", np.zeros(16000, dtype=np.float32))
    with pytest.raises(SilentAudio, match="mute.wav"):
        load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)


def test_clip_without_any_face_is_an_error_naming_it(tmp_path) -> None:
    write_mp4(tmp_path / "blank.mp4", np.full((20, 96, 96, 3), 90, dtype=np.uint8))
    _speech(tmp_path / "blank.wav", 20)
    with pytest.raises(NoFaceFound, match="blank.mp4"):
        load_sample(discover_clips(tmp_path)[0], SPEC, measured_landmarks)


def test_frames_without_a_face_are_interpolated_from_their_neighbours(tmp_path) -> None:
    _talking_clip(tmp_path, "flaky")
    calls = []

    def flaky(frame):  # misses the face on every odd frame
        calls.append(1)
        return None if len(calls) % 2 == 0 else measured_landmarks(frame)

    sample = load_sample(discover_clips(tmp_path)[0], SPEC, flaky)
    assert len(calls) == 17 and sample.filled_frames == 8
    assert np.isfinite(sample.landmarks).all()
    np.testing.assert_allclose(sample.landmarks[1], (sample.landmarks[0] + sample.landmarks[2]) / 2)

    points = np.arange(4 * 68 * 2, dtype=np.float64).reshape(4, 68, 2)
    gappy = points.copy()
    gappy[[0, 2]] = np.nan
    filled, count = tracks.fill_missing(gappy, "x.mp4")
    assert count == 2
    np.testing.assert_allclose(filled[0], points[1])  # before the first face: held
    np.testing.assert_allclose(filled[2], (points[1] + points[3]) / 2)


def test_landmarks_from_the_chosen_face_alignment_backend_need_its_weights(tmp_path, monkeypatch) -> None:
    _talking_clip(tmp_path, "plain")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FANTASY_FACE_BACKEND", "face-alignment")  # the default, dlib, ships its models
    shared_analyzer.cache_clear()
    try:
        with pytest.raises(WeightsMissing, match="2DFAN4"):
            load_sample(discover_clips(tmp_path)[0], SPEC)
    finally:
        shared_analyzer.cache_clear()


@pytest.mark.slow
def test_bad_landmark_file_is_an_error_naming_it(tmp_path) -> None:
    _talking_clip(tmp_path, "pts")
    np.save(tmp_path / "pts.landmarks.npy", np.zeros((20, 5, 2)))
    with pytest.raises(TrainingDataError, match=r"'pts\.landmarks\.npy' has shape \(20, 5, 2\)"):
        load_sample(discover_clips(tmp_path)[0], SPEC)
    np.save(tmp_path / "pts.landmarks.npy", np.zeros((10, 68, 2)))
    with pytest.raises(TrainingDataError, match="has 10 frames"):
        load_sample(discover_clips(tmp_path)[0], SPEC)


# ---------------------------------------------------------------- labels


def _scores(frames: np.ndarray) -> tuple[float, float]:
    points = np.stack([measured_landmarks(f) for f in frames])
    return expression_score(points), body_score(frames, points)


def test_expression_follows_mouth_motion_not_head_motion() -> None:
    talk = _scores(talking_frames(syllable_envelope(17)))
    still = _scores(talking_frames(np.full(17, 0.4)))
    sway = _scores(talking_frames(np.full(17, 0.4), head_motion=8.0))
    assert still[0] < 1e-6, "a still face has no expression motion"
    assert talk[0] > 10 * sway[0], "rigid head sway is removed before measuring expression"
    assert talk[0] > 1e-3


def test_body_follows_head_sway_and_background_motion_not_the_mouth() -> None:
    talk = _scores(talking_frames(syllable_envelope(17)))
    still = _scores(talking_frames(np.full(17, 0.4)))
    sway = _scores(talking_frames(np.full(17, 0.4), head_motion=8.0))
    assert sway[1] > 10 * talk[1] and sway[1] > 10 * still[1]

    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur((rng.random((160, 220, 3)) * 255).astype(np.uint8), (0, 0), 2.0)
    face, lm = draw_face(160, 160, 0.4)
    backdrop = np.all(face == face[0, 0], axis=2)
    panning = []
    for i in range(17):  # the background pans 3 px a frame behind a still face
        frame = np.ascontiguousarray(texture[:, 3 * i : 3 * i + 160])
        frame[~backdrop] = face[~backdrop]
        panning.append(frame)
    pan = body_score(np.stack(panning), np.tile(lm, (17, 1, 1)))  # the drawn landmarks: a textured backdrop
    assert pan > 10 * still[1]  # fools the skin-colour stand-in for FAN


def test_rank_normalisation_exact_values() -> None:
    np.testing.assert_array_equal(rank_normalise([3.0, 1.0, 2.0]), [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(rank_normalise([5.0, 1.0, 1.0, 9.0, 7.0]), [0.5, 0.125, 0.125, 1.0, 0.75])
    np.testing.assert_array_equal(rank_normalise([0.2]), [0.5])
    np.testing.assert_array_equal(rank_normalise([4.0, 4.0]), [0.5, 0.5])
    labels = motion_labels(np.array([[0.1, 30.0], [0.3, 10.0], [0.2, 20.0]]))
    np.testing.assert_array_equal(labels, [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        rank_normalise([1.0, float("nan")])


def test_lip_tokens_follow_the_mouth() -> None:
    centres = [(40.0 + 6 * i, 64.0) for i in range(9)]  # the face slides right, 6 px a frame
    points = np.stack([template_landmarks(0.5, c, 60.0) for c in centres])
    mask = lip_token_mask(points, 128, 128)
    assert mask.shape == (3, 8, 8) and mask.dtype == torch.float32
    latent_of_frame = [0, 1, 1, 1, 1, 2, 2, 2, 2]  # Wan's causal VAE: frame 0 alone, then 4 frames each
    for f, lat in enumerate(latent_of_frame):
        x, y = _mouth_centre(points[f])
        assert mask[lat, int(y // 16), int(x // 16)] == 1, f"frame {f}: mouth token of latent {lat}"
    assert int(points[0, 36:48, 1].max() // 16) == 3  # the eyes lie in token row 3, the lips from row 4
    assert not mask[:, :4].any(), "nothing at or above the eyes is masked"
    mouth_right = points[0, 48:68, 0].max()
    assert not mask[0, :, int(mouth_right // 16) + 2 :].any(), "latent 0 only sees frame 0's mouth"
    assert mask[2, :, int(points[8, 48:68, 0].max() // 16)].any(), "the last latent reaches the moved mouth"


# ---------------------------------------------------------------- cache


CACHE_SPEC = SampleSpec(num_frames=9, fps=25, width=64, height=64)


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_pipe):
    """Two clips cached with the tiny pipeline: 'talk' (mouth moves, own prompt), 'sway' (head sways, track audio)."""
    data = tmp_path_factory.mktemp("train")
    _talking_clip(data, "talk", frames=12)
    (data / "talk.txt").write_text("a woman is talking")
    _talking_clip(data, "sway", frames=12, head_motion=8.0, talking=False, speech="track")
    events = []
    summary = cache_dataset(tiny_pipe, data, CACHE_SPEC, landmarks=lambda: measured_landmarks,
                            progress=lambda *a: events.append(a))
    return {"data": data, "summary": summary, "events": events}


@pytest.mark.slow
def test_cache_holds_every_feature_in_the_shapes_the_pipeline_expects(cached, tiny_pipe) -> None:
    summary = cached["summary"]
    assert summary.encoded == ["sway", "talk"] and summary.reused == []
    assert cached["events"] == [(1, 2, "sway", "encoded"), (2, 2, "talk", "encoded")]
    assert summary.cache_dir == cached["data"] / ".cache"
    audio_tokens = feature_length(tiny_pipe.audio_encoder, CACHE_SPEC.num_samples)
    assert audio_tokens == 17  # 0.36 s at 50 Hz
    for path in summary.clips:
        clip = CachedClip.load(path)
        assert (clip.fps, clip.num_frames, clip.width, clip.height) == (25.0, 9, 64, 64)
        assert clip.latents.shape == (16, 3, 8, 8)
        assert clip.condition.shape == (20, 3, 8, 8)
        assert clip.prompt_embeds.shape == (512, 32)
        assert clip.clip_tokens.shape == clip.face_clip_tokens.shape == (17, 16)
        assert clip.audio_features.shape == (audio_tokens, 32)
        assert clip.lip_mask.shape == (3, 4, 4) and clip.lip_mask.sum() >= 3
        assert clip.landmarks.shape == (9, 68, 2) and clip.motion_scores.shape == (2,)
        # Frame 0 is encoded alone by the causal VAE: the condition's latent channels repeat it, mask 1 there only.
        assert torch.equal(clip.condition[4:, 0], clip.latents[:, 0])
        assert (clip.condition[:4, 0] == 1).all() and not clip.condition[:4, 1:].any()
        assert not torch.allclose(clip.face_clip_tokens, clip.clip_tokens)
    talk, sway = CachedClip.load(summary.clips[1]), CachedClip.load(summary.clips[0])
    assert talk.prompt == "a woman is talking" and sway.prompt == DEFAULT_PROMPT
    torch.testing.assert_close(sway.prompt_embeds, encode_text(tiny_pipe, DEFAULT_PROMPT))
    assert not torch.allclose(talk.prompt_embeds, sway.prompt_embeds)


@pytest.mark.slow
def test_cached_clip_reloads_equal_to_a_fresh_encoding(cached, tiny_pipe) -> None:
    clip = discover_clips(cached["data"])[1]
    fresh = encode_sample(tiny_pipe, load_sample(clip, CACHE_SPEC, measured_landmarks))
    stored = CachedClip.load(cached["summary"].clips[1])
    assert stored.name == fresh.name == "talk"
    for name, tensor in fresh.tensors().items():
        torch.testing.assert_close(stored.tensors()[name], tensor, msg=name)


@pytest.mark.slow
def test_cache_is_reused_until_a_setting_or_a_source_file_changes(cached, tiny_pipe, tmp_path) -> None:
    data = tmp_path / "copy"
    shutil.copytree(cached["data"], data)
    again = cache_dataset(tiny_pipe, data, CACHE_SPEC, landmarks=lambda: measured_landmarks)
    assert again.reused == ["sway", "talk"] and again.encoded == []
    (data / "talk.txt").write_text("a man is talking")
    edited = cache_dataset(tiny_pipe, data, CACHE_SPEC, landmarks=lambda: measured_landmarks)
    assert edited.encoded == ["talk"] and edited.reused == ["sway"]
    assert CachedClip.load(edited.clips[1]).prompt == "a man is talking"
    smaller = SampleSpec(num_frames=5, fps=25, width=64, height=64)
    changed = cache_dataset(tiny_pipe, data, smaller, landmarks=lambda: measured_landmarks)
    assert changed.encoded == ["sway", "talk"] and changed.fingerprint != edited.fingerprint
    assert CachedClip.load(changed.clips[0]).latents.shape == (16, 2, 8, 8)


def test_fingerprint_tracks_spec_dtype_and_model_weights(tiny_pipe) -> None:
    from fantasy.model.assemble import assemble
    from fantasy.weights.tiny import tiny_components

    base = cache_fingerprint(tiny_pipe, CACHE_SPEC, torch.float32)
    assert base == cache_fingerprint(tiny_pipe, CACHE_SPEC, torch.float32)
    assert base != cache_fingerprint(tiny_pipe, SampleSpec(9, 24, 64, 64), torch.float32)
    assert base != cache_fingerprint(tiny_pipe, SampleSpec(9, 25, 64, 48), torch.float32)
    assert base != cache_fingerprint(tiny_pipe, CACHE_SPEC, torch.bfloat16)
    assert pipeline_fingerprint(assemble(tiny_components(seed=0))) == pipeline_fingerprint(tiny_pipe)
    assert pipeline_fingerprint(assemble(tiny_components(seed=5))) != pipeline_fingerprint(tiny_pipe)


@pytest.mark.slow
def test_training_set_serves_batches_with_dataset_motion_labels(cached, tiny_pipe) -> None:
    dataset = TrainingSet.from_cache_dir(cached["summary"].cache_dir)
    assert len(dataset) == 2 and dataset.names == ["sway", "talk"]
    assert (dataset.fps, dataset.num_frames, dataset.width, dataset.height) == (25.0, 9, 64, 64)
    # 'talk' moves its mouth, 'sway' its head: each is top of one label and bottom of the other.
    torch.testing.assert_close(dataset.motion_labels, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(dataset.empty_prompt_embeds, encode_text(tiny_pipe, ""))
    assert dataset.negative_prompt_embeds.shape == (512, 32)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["latents"].shape == (2, 16, 3, 8, 8) and batch["lip_mask"].shape == (2, 3, 4, 4)
    assert batch["name"] == ["sway", "talk"]
    torch.testing.assert_close(batch["motion_labels"], dataset.motion_labels)


def _fake_clip(name: str, scores: tuple[float, float], fingerprint: str = "fp") -> CachedClip:
    z = {k: torch.zeros(1) for k in ("latents", "condition", "prompt_embeds", "clip_tokens", "face_clip_tokens",
                                      "audio_features", "lip_mask", "landmarks")}
    return CachedClip(name=name, prompt="p", fps=25.0, num_frames=9, width=64, height=64,
                      motion_scores=torch.tensor(scores), fingerprint=fingerprint, **z)


def test_training_set_ranks_scores_over_all_clips_and_refuses_mixed_caches(tmp_path) -> None:
    scores = [(0.5, 2.0), (0.1, 2.0), (0.9, 1.0), (0.3, 3.0)]
    paths = [_fake_clip(f"c{i}", s).save(tmp_path / f"c{i}.safetensors") for i, s in enumerate(scores)]
    dataset = TrainingSet(paths)
    expected = [[2 / 3, 0.5], [0.0, 0.5], [1.0, 0.0], [1 / 3, 1.0]]
    torch.testing.assert_close(dataset.motion_labels, torch.tensor(expected))
    assert TrainingSet(paths[:1]).motion_labels.tolist() == [[0.5, 0.5]]
    stale = _fake_clip("old", (0.2, 0.2), fingerprint="other").save(tmp_path / "old.safetensors")
    with pytest.raises(TrainingDataError, match="different settings"):
        TrainingSet([*paths, stale])
    with pytest.raises(TrainingDataError, match="empty"):
        TrainingSet([])
    with pytest.raises(TrainingDataError, match="No training cache"):
        TrainingSet.from_cache_dir(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TrainingDataError, match="junk.safetensors"):
        read_metadata(tmp_path / "junk.safetensors")
