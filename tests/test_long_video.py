"""Long speech: frame rule, window plan, absolute-time audio, seamless stitching, colour match."""

import numpy as np
import pytest
import soundfile
import torch

from fantasy.generation import Settings, generate
from fantasy.long_video import ColourMatch, Window, plan_windows, total_frame_count
from fantasy.media.audio import load_audio
from fantasy.model.windows import split_into_windows
from fantasy.weights.presets import get_preset
from tests.mp4_probe import probe

from .conftest import EXAMPLE_IMAGE, speech_like


@pytest.mark.parametrize("duration, max_duration, frames, cut", [
    (10.0, 10.0, 233, False),  # int(230 // 4)*4 + 5: 10.13 s of video for 10 s of speech
    (3.0, 10.0, 73, False),  # short speech: exactly the release's single clip
    (30.0, 10.0, 233, True),
    (30.0, 60.0, 693, False),
])
def test_total_frame_rule(duration, max_duration, frames, cut):
    assert total_frame_count(duration, 23, max_duration) == (frames, cut)
    assert 0 <= frames / 23 - min(duration, max_duration) <= 5 / 23


def test_window_plan_covers_every_frame_once():
    windows = plan_windows(233)
    assert windows == [Window(0, 81, 0), Window(76, 81, 5), Window(152, 81, 5)]
    new = [f for w in windows for f in w.new_frames]
    assert new == list(range(233))
    assert plan_windows(73) == [Window(0, 73, 0)]
    last = plan_windows(85)[-1]  # 4 new frames -> a 9-frame window
    assert last == Window(76, 9, 5) and (last.length - 1) % 4 == 0


@pytest.mark.parametrize("total, clip, motion", [(232, 81, 5), (233, 76, 5), (233, 81, 4), (233, 81, 81)])
def test_window_plan_refuses_what_the_vae_cannot_chain(total, clip, motion):
    """Each condition alone: a total, a window or a motion length that is not 4k+1, or motion filling the window."""
    message = f"^frames must be 4k\\+1 with motion < clip: total={total} clip={clip} motion={motion}$"
    with pytest.raises(ValueError, match=message):
        plan_windows(total, clip, motion)


def test_each_window_gets_the_audio_at_its_absolute_time():
    total = 233
    tokens = torch.randn(1, 507, 8)
    rate = tokens.shape[1] / total
    everything, all_lengths = split_into_windows(tokens, total, tokens_per_frame=rate)  # the whole video at once
    for window in plan_windows(total):
        windows, lengths = split_into_windows(tokens, window.length, start_frame=window.start, tokens_per_frame=rate)
        first_latent = window.start // 4
        # Latent frames 1.. of every window are the same latent frames of the whole video, exactly.
        assert torch.equal(windows[:, 1:], everything[:, first_latent + 1 : first_latent + windows.shape[1]])
        assert torch.equal(lengths[1:], all_lengths[first_latent + 1 : first_latent + windows.shape[1]])


@pytest.fixture
def stub(tiny_pipe, monkeypatch):
    """The tiny pipeline with some of its steps replaced for one test: `stub(denoise=..., decode_frames=...)`.

    Its call then runs for real around them: sizing, speech, frame rule, window plan, audio windows, stitching."""
    tiny_pipe.set_progress_bar_config(disable=True)

    def replace(**methods):
        for name, method in methods.items():
            monkeypatch.setattr(tiny_pipe, name, method)
        return tiny_pipe

    return replace


def zeros_decode(latents, release=False):
    num_frames = latents[0] if isinstance(latents, tuple) else latents
    yield np.zeros((1, 64, 64, 3), np.uint8)
    for start in range(1, num_frames, 4):
        yield np.zeros((min(4, num_frames - start), 64, 64, 3), np.uint8)


def test_the_call_gives_each_window_the_audio_at_its_absolute_time(stub, tmp_path):
    speech = tmp_path / "ten.wav"
    soundfile.write(speech, speech_like(10.0), 16_000)
    seen, audio = {}, []

    def numbered(samples):  # token i of the whole track is the number i + 1, 50 tokens a second as wav2vec2
        seen["samples"] = samples
        count = len(samples) // 320
        seen["tokens"] = torch.arange(1, count + 1, dtype=torch.float32).view(1, count, 1)
        return seen["tokens"]

    def record(image, audio_windows, audio_lengths, num_frames, **kw):
        audio.append((audio_windows, audio_lengths))
        return num_frames

    def one_clip_only(samples, num_frames):
        raise AssertionError("a long video must take its audio from the whole track, not from a clip")

    pipe = stub(project_audio=numbered, encode_audio=one_clip_only, denoise=record, decode_frames=zeros_decode)
    pipe(image=EXAMPLE_IMAGE, audio=speech, longest_edge=64, output_type=None)
    # The whole track, zero-padded to the video's 233 frames.
    track = soundfile.read(speech, dtype="float32")[0]
    assert seen["samples"].dtype == np.float32 and len(seen["samples"]) == int(233 / 23 * 16_000)
    assert np.array_equal(seen["samples"][:160_000], track) and not seen["samples"][160_000:].any()
    tokens = seen["tokens"]
    assert tokens.shape[1] == int(233 / 23 * 16_000) // 320 == 506  # the whole video's length of speech
    everything, all_lengths = split_into_windows(tokens, 233, tokens_per_frame=506 / 233)
    assert len(audio) == 3
    for window, (windows, lengths) in zip(plan_windows(233), audio, strict=True):
        first = window.start // 4
        count = windows.shape[1]
        assert count == (window.length - 1) // 4 + 1
        # Latent frames 1.. of every window are those latent frames of the whole video, token for token.
        assert torch.equal(windows[:, 1:], everything[:, first + 1 : first + count])
        assert torch.equal(lengths[1:], all_lengths[first + 1 : first + count])
        # The same fact without the windowing code: a full window is centred on the speech at its latent
        # frame's time (whole-video latent frame a is centred on video frame 4a-1, token number ~ 4a-1 x rate).
        full = [j for j in range(1, count) if lengths[j] == windows.shape[2]]
        assert len(full) >= count - 2
        for j in full:
            assert abs(float(windows[0, j, windows.shape[2] // 2, 0]) - (4 * (first + j) - 1) * 506 / 233) <= 1


def test_one_window_takes_the_releases_clip_audio(stub, tmp_path):
    """Up to one window, the audio is the release's: features of the clip [0, frames / fps), not of the track."""
    speech = tmp_path / "two.wav"
    soundfile.write(speech, speech_like(2.0), 16_000)
    seen = {}

    def whole_track(samples):
        raise AssertionError("one clip takes its audio from encode_audio, as the release")

    def clip(samples, num_frames):
        seen["clip"] = (samples, num_frames)
        return torch.zeros(1, (num_frames - 1) // 4 + 1, 4, 8), torch.full(((num_frames - 1) // 4 + 1,), 4)

    pipe = stub(project_audio=whole_track, encode_audio=clip, denoise=lambda *a, num_frames, **k: num_frames,
                decode_frames=zeros_decode)
    pipe(image=EXAMPLE_IMAGE, audio=speech, longest_edge=64, output_type=None)
    # [0, 49 / 23 s) of a 2 s track is all of its 32,000 samples (the release does not pad the clip)
    samples, frames = seen["clip"]
    assert (len(samples), frames) == (32_000, 49)
    assert np.array_equal(samples, soundfile.read(speech, dtype="float32")[0])


def test_colour_match_undoes_a_channel_shift():
    rng = np.random.default_rng(0)
    reference = rng.integers(40, 200, (5, 16, 16, 3)).astype(np.uint8)
    shifted = np.clip(reference.astype(int) * [1.0, 1.0, 1.0] + [30, -20, 0], 0, 255).astype(np.uint8)
    match = ColourMatch.fit(shifted, reference)
    assert np.abs(match.apply(shifted).astype(int) - reference).max() <= 1
    same = ColourMatch.fit(reference, reference)
    assert np.array_equal(same.apply(reference), reference)


def test_colour_match_undoes_a_gain_and_an_offset():
    """A darker, lower-contrast regeneration (gain 0.7, offset -10) is mapped back onto the original."""
    rng = np.random.default_rng(1)
    reference = rng.integers(40, 220, (5, 16, 16, 3)).astype(np.uint8)
    darker = np.clip(reference * np.array([0.7, 0.8, 0.6]) - 10, 0, 255).round().astype(np.uint8)
    match = ColourMatch.fit(darker, reference)
    # The +1 in the fit pulls the gain slightly towards 1: gains measured 1.42, 1.24, 1.65 (exact: 1/0.7, 1/0.8,
    # 1/0.6); error measured max 2, mean 0.43 grey levels.
    assert np.all(match.gain > 1.2) and np.all(match.gain < 1.7)
    error = np.abs(match.apply(darker).astype(int) - reference)
    assert error.max() <= 3 and error.mean() < 0.85


def test_colour_match_gain_is_the_ratio_of_spreads_plus_one_grey_level_within_half_to_double():
    """gain = (std(ref) + 1) / (std(gen) + 1), clipped to [0.5, 2]; offset maps the means onto each other."""
    def stripes(low, high):  # half the pixels at each level: std = (high - low) / 2
        frame = np.empty((1, 4, 4, 3), np.uint8)
        frame[:, ::2], frame[:, 1::2] = low, high
        return frame

    match = ColourMatch.fit(stripes(100, 106), stripes(90, 100))  # stds 3 and 5: (5 + 1) / (3 + 1)
    assert match.gain.tolist() == [1.5] * 3 and match.offset.tolist() == [95 - 1.5 * 103] * 3
    assert match.apply(stripes(100, 106)).tolist() == stripes(90, 100).tolist()
    assert ColourMatch.fit(stripes(100, 100), stripes(0, 200)).gain.tolist() == [2.0] * 3  # 101 / 1, clipped
    assert ColourMatch.fit(stripes(0, 200), stripes(100, 100)).gain.tolist() == [0.5] * 3  # 1 / 101, clipped
    assert match.apply(np.array([[[0, 255, 129]]], np.uint8)).tolist() == [[[0, 255, 134]]]  # clipped to 0..255


STILL = np.random.default_rng(2).integers(40, 220, (64, 64, 3)).astype(np.uint8)


def test_colour_is_continuous_across_the_window_seams(stub, tmp_path):
    """Every window after the first comes out darker and flatter (gain 0.75, offset -12) than the portrait's
    colours, as a drifting model would; the content itself is one still, textured frame."""
    speech = tmp_path / "seven.wav"
    soundfile.write(speech, speech_like(7.0), 16_000)
    motion = []

    def denoise(image, audio_windows, audio_lengths, num_frames, motion_frames=None, **kw):
        motion.append(motion_frames)
        return num_frames, motion_frames is not None

    def decode_frames(latents, release=False):
        num_frames, later = latents
        frame = np.clip(STILL * 0.75 - 12, 0, 255).round().astype(np.uint8) if later else STILL
        yield frame[None]
        for start in range(1, num_frames, 4):
            yield np.repeat(frame[None], min(4, num_frames - start), axis=0)

    pipe, seen = stub(denoise=denoise, decode_frames=decode_frames), []
    result = generate(pipe, EXAMPLE_IMAGE, speech, tmp_path / "o.mp4", Settings(longest_edge=64, steps=1),
                      get_preset("tiny"), on_frames=seen.append)
    frames = np.concatenate(seen).astype(int)
    assert result.windows == 3 and len(frames) == result.num_frames == 165
    # Windows 2 and 3 are matched onto the colours of what was written before them (measured: max 2, mean 0.20
    # grey levels off the still; unmatched they would be ~45 levels darker).
    error = np.abs(frames - STILL)
    assert error.max() <= 3 and error.mean() < 0.4
    for seam in (81, 157):  # the first frame of each later window against the last one before it (0.36, 0.28)
        assert np.abs(frames[seam] - frames[seam - 1]).mean() < 0.7
    # ... and the motion frames each later window is conditioned on are the corrected ones (measured max 0, 1).
    for frames_given in motion[1:]:
        pixels = ((frames_given[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round()
        assert np.abs(pixels - STILL).max() <= 2


def index_frame(index: int, size: int = 64) -> np.ndarray:
    """Video frame `index` in the index tests: a flat image whose colour encodes its number."""
    return np.full((size, size, 3), [index % 256, index // 256, 7], dtype=np.uint8)


def index_of(pixels) -> int:
    return int(pixels[0, 0, 0]) + 256 * int(pixels[1, 0, 0])


def index_pipe(stub):
    """Frame i of the video is `index_frame(i)`; a window's start is read back from the motion frames it is
    given, so a test sees exactly which frames the call hands over and which it keeps. `calls`: (start,
    frames, motion frames given)."""
    calls = []

    def denoise(image, audio_windows, audio_lengths, num_frames, motion_frames=None, **kw):
        start = 0 if motion_frames is None else index_of(((motion_frames[0, :, 0] + 1) * 127.5).round())
        assert audio_windows.shape[1] == (num_frames - 1) // 4 + 1
        if motion_frames is not None:  # the last 5 frames handed out, as pixels in [-1, 1], float32 [1, 3, 5, H, W]
            expected = np.stack([index_frame(start + i) for i in range(5)])
            assert motion_frames.dtype == torch.float32 and motion_frames.shape == (1, 3, 5, 64, 64)
            assert torch.equal(motion_frames, torch.from_numpy(expected).float().div(127.5).sub(1.0)
                               .permute(3, 0, 1, 2)[None])
        calls.append((start, num_frames, None if motion_frames is None else motion_frames.shape[2]))
        return start, num_frames

    def decode_frames(latents, release=False):
        start, num_frames = latents
        frames = [index_frame(start + i) for i in range(num_frames)]
        yield np.stack(frames[:1])
        for i in range(1, num_frames, 4):
            yield np.stack(frames[i : i + 4])

    return stub(denoise=denoise, decode_frames=decode_frames), calls


def test_stitching_never_duplicates_or_skips_a_frame(stub, tmp_path):
    speech = tmp_path / "ten.wav"
    soundfile.write(speech, speech_like(10.0), 16_000)
    (pipe, calls), seen = index_pipe(stub), []
    result = generate(pipe, EXAMPLE_IMAGE, speech, tmp_path / "o.mp4", Settings(longest_edge=64, steps=1),
                      get_preset("tiny"), on_frames=lambda f: seen.extend(index_of(x.transpose(2, 0, 1)) for x in f))
    assert calls == [(0, 81, None), (76, 81, 5), (152, 81, 5)]
    assert seen == list(range(233))
    assert (result.num_frames, result.windows, result.speech_cut) == (233, 3, False)


def test_the_call_returns_the_stitched_video_or_each_windows_latents(stub, tmp_path):
    """The call itself chains the windows: 2 s of speech in 21-frame windows is 49 frames, each once; with
    `output_type="latent"` it returns the windows' latents, a list (decoding them: `test_pipeline.py`)."""
    speech = tmp_path / "two.wav"
    soundfile.write(speech, speech_like(2.0), 16_000)
    pipe, calls = index_pipe(stub)
    video = pipe(image=EXAMPLE_IMAGE, audio=speech, longest_edge=64, window_frames=21, output_type="pil")
    assert [index_of(np.asarray(f).transpose(2, 0, 1)) for f in video.frames[0]] == list(range(49))
    latents = pipe(image=EXAMPLE_IMAGE, audio=speech, longest_edge=64, window_frames=21, output_type="latent")
    assert calls[3:] == calls[:3] == [(0, 21, None), (16, 21, 5), (32, 17, 5)]
    assert latents.frames == [(0, 21), (16, 21), (32, 17)]


@pytest.fixture(scope="module")
def ten_second_video(tmp_path_factory, tiny_pipe):
    d = tmp_path_factory.mktemp("long")
    speech = d / "ten.wav"
    soundfile.write(speech, speech_like(10.0, seed=4), 16_000, subtype="FLOAT")
    result = generate(tiny_pipe, EXAMPLE_IMAGE, speech, d / "long.mp4", Settings(longest_edge=64, steps=2),
                      get_preset("tiny"))
    return speech, result


@pytest.mark.slow
def test_ten_seconds_of_speech_on_the_tiny_preset(ten_second_video):
    speech, result = ten_second_video
    info = probe(result.path)
    assert (info.frames, info.fps, result.windows) == (233, 23.0, 3)
    assert info.duration == pytest.approx(233 / 23, abs=1.2e-3)  # measured 0.57 ms off
    assert info.duration >= 10.0


def test_the_whole_speech_is_in_the_output(ten_second_video):
    speech, result = ten_second_video
    original = load_audio(speech)
    muxed = load_audio(result.path)  # the mp4's AAC track
    assert len(muxed) >= len(original)
    # AAC is lossy and delays by its priming; the syllable envelope must line up over all 10 s.
    def envelope(x):
        return np.convolve(np.abs(x), np.ones(320) / 320, mode="valid")[::160]

    a, b = envelope(muxed), envelope(original)
    n = len(b) - 20
    best = max(np.corrcoef(a[lag : lag + n], b[:n])[0, 1] for lag in range(0, 20))
    assert best > 0.95
    assert np.abs(muxed[len(original) + 2000 :]).max() < 0.01  # the padding past the speech is silence


def test_speech_longer_than_the_maximum_is_cut_and_reported(stub, tmp_path):
    speech = tmp_path / "long.wav"
    soundfile.write(speech, speech_like(4.0), 16_000)
    pipe, _ = index_pipe(stub)
    result = generate(pipe, EXAMPLE_IMAGE, speech, tmp_path / "o.mp4",
                      Settings(longest_edge=64, steps=1, max_duration=2.0), get_preset("tiny"))
    assert result.speech_cut and result.num_frames == 49  # int(46 // 4)*4 + 5
    assert probe(result.path).audio_duration == pytest.approx(49 / 23, abs=1.2e-3)  # measured 0.57 ms off
