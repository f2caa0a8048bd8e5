"""Speech loading, validation, the frame-count rule and wav2vec2 feature lengths."""

import re
import subprocess

import numpy as np
import pytest
import soundfile
import soxr

from fantasy.errors import AudioTooShort, InputFileNotFound, SilentAudio, UnsupportedAudio
from fantasy.generation import Settings, prepare_inputs
from fantasy.long_video import plan_windows
from fantasy.media.audio import (
    SAMPLE_RATE,
    clip_samples,
    feature_length,
    ffmpeg_executable,
    frame_count,
    load_audio,
)
from fantasy.weights.tiny import tiny_speech_encoder

from .conftest import EXAMPLE_IMAGE, speech_like


def encode(src, dst, *args):
    subprocess.run([ffmpeg_executable(), "-v", "error", "-y", "-i", str(src), *args, str(dst)], check=True)


@pytest.fixture
def stereo_44k(tmp_path):
    left = speech_like(1.5, 44_100, seed=1)
    right = speech_like(1.5, 44_100, seed=2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 44_100, subtype="FLOAT")
    return path, (left + right) / 2


def test_wav_is_mixed_to_mono_and_resampled_like_librosa(stereo_44k):
    path, mono = stereo_44k
    samples = load_audio(path)
    expected = soxr.resample(mono.astype(np.float32), 44_100, SAMPLE_RATE, quality="HQ")
    assert samples.dtype == np.float32
    assert samples.shape == expected.shape == (24_000,)
    np.testing.assert_array_equal(samples, expected)  # the same soxr call on the same mix: bit for bit


@pytest.mark.parametrize("suffix, args", [
    (".mp3", ["-c:a", "libmp3lame"]),
    (".flac", []),
    (".ogg", ["-c:a", "libvorbis"]),
    (".m4a", ["-c:a", "aac"]),
    (".aac", ["-c:a", "aac"]),
])
def test_compressed_formats_decode_to_the_same_speech(stereo_44k, tmp_path, suffix, args):
    wav, _ = stereo_44k
    reference = load_audio(wav)
    out = tmp_path / f"speech{suffix}"
    encode(wav, out, *args)
    samples = load_audio(out)
    assert abs(len(samples) - len(reference)) <= 0.06 * SAMPLE_RATE  # codec padding/priming only
    # Lossy codecs colour the signal and raw ADTS keeps the encoder delay: the syllable envelope must
    # still match once aligned within 0.1 s.
    def envelope(x):
        return np.convolve(np.abs(x), np.ones(400) / 400, mode="valid")[::40]

    a, b = envelope(samples), envelope(reference)
    n = min(len(a), len(b)) - 40
    best = max(np.corrcoef(a[lag : lag + n], b[:n])[0, 1] for lag in range(0, 41))
    assert best > 0.9


def test_audio_track_of_a_video_is_used(stereo_44k, tmp_path):
    wav, _ = stereo_44k
    video = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_executable(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1.5",
                    "-i", str(wav), "-shortest", "-c:v", "libx264", "-c:a", "aac", str(video)], check=True)
    samples = load_audio(video)
    assert 1.4 * SAMPLE_RATE < len(samples) < 1.6 * SAMPLE_RATE


def test_video_without_audio_track_is_rejected(tmp_path):
    video = tmp_path / "mute.mp4"
    subprocess.run([ffmpeg_executable(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=1",
                    "-c:v", "libx264", str(video)], check=True)
    with pytest.raises(UnsupportedAudio, match=r"^'mute.mp4' has no audio track: upload a speech recording\.$"):
        load_audio(video)


def test_missing_file(tmp_path):
    with pytest.raises(InputFileNotFound, match="Speech file not found: .*nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_non_audio_file(tmp_path):
    junk = tmp_path / "notes.wav"
    junk.write_text("this is not audio at all\n" * 20)
    with pytest.raises(UnsupportedAudio, match="Could not read 'notes.wav' as audio") as refused:
        load_audio(junk)
    from fantasy.media.audio import AUDIO_EXTENSIONS

    message = str(refused.value)
    kinds = ", ".join(e[1:] for e in AUDIO_EXTENSIONS)
    whole = re.fullmatch(rf"Could not read 'notes.wav' as audio \((.+)\)\. Use a speech file in one of: "
                         rf"{re.escape(kinds)}, or a video with an audio track\.", message)
    assert whole, message
    assert whole[1] != "unknown decoder error" and str(tmp_path) not in message  # ffmpeg's last line, the name only


def test_another_rate_is_asked_of_the_decoder(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, speech_like(1.0), 16_000)
    assert load_audio(path, 8_000).shape == (8_000,) and load_audio(path).shape == (16_000,)


def test_silent_audio(tmp_path):
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(16_000, dtype=np.float32), 16_000)
    with pytest.raises(SilentAudio, match="'silence.wav' is silent"):
        load_audio(path)


def test_too_short_audio(tmp_path):
    path = tmp_path / "blip.wav"
    soundfile.write(path, speech_like(0.15), 16_000)
    with pytest.raises(AudioTooShort, match="0.15 s long; at least 0.2 s"):
        load_audio(path)


@pytest.mark.parametrize("duration, fps, expected", [
    (10.0, 23, 81),  # the release's 10 s example: capped at 81 frames
    (3.0, 23, 73),  # 69 // 4 = 17 -> 17*4 + 5
    (0.2, 23, 9),
    (2.0, 16, 37),
    (3.6, 23, 81),  # 82.8 // 4 = 20 -> 85, capped at 81
])
def test_frame_count_rule(tmp_path, duration, fps, expected):
    """The release's `min(int(fps*d // 4)*4 + 5, 81)`: `frame_count` (release mode) and the first clip generation
    makes from this speech (the frame count `prepare_inputs` decides, cut into windows)."""
    assert frame_count(duration, fps, 81) == expected
    speech = tmp_path / "speech.wav"
    soundfile.write(speech, speech_like(duration), 16_000)
    inputs = prepare_inputs(EXAMPLE_IMAGE, speech, Settings(fps=fps, longest_edge=64))
    assert plan_windows(inputs.num_frames)[0].length == expected
    assert (inputs.num_frames - 1) % 4 == 0 and inputs.num_frames >= expected


@pytest.mark.parametrize("max_frames", [80, 1])
def test_frame_count_rejects_max_frames_that_break_4k_plus_1_or_are_below_5(max_frames):
    with pytest.raises(ValueError, match=rf"^max_frames must be 4k\+1 and at least 5, got {max_frames}$"):
        frame_count(3.0, 23, max_frames)


def test_five_frames_is_the_smallest_clip():
    assert frame_count(3.0, 23, 5) == 5


def test_clip_length_must_keep_4k_plus_1():
    with pytest.raises(ValueError, match=r"frames must be 4k\+1 with motion < clip: total=233 clip=80 motion=5"):
        plan_windows(233, clip_frames=80)


def test_81_frames_at_23_fps_give_175_wav2vec_tokens():
    model = tiny_speech_encoder()
    samples = clip_samples(np.ones(10 * SAMPLE_RATE, dtype=np.float32), 81, 23)
    assert len(samples) == 56_347
    assert feature_length(model, len(samples)) == 175
    from fantasy.media.audio import speech_features
    from fantasy.weights.tiny import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True)
    assert speech_features(model, fe, speech_like(56_347 / SAMPLE_RATE)).shape == (1, 175, model.config.hidden_size)


@pytest.mark.parametrize("count, rate", [(44_101, 44_100), (144_007, 48_000), (12_345, 22_050), (999, 11_025),
                                         (8_000, 8_000), (16_000, 16_000)])
def test_resampled_length_is_librosas(count, rate):
    """librosa.resample(fix=True): `ceil(n * sr_out / sr_in)` samples, soxr's output zero-padded or trimmed."""
    from fantasy.media.audio import resample_like_librosa

    x = np.random.default_rng(count).standard_normal(count).astype(np.float32)
    out = resample_like_librosa(x, rate)
    assert out.dtype == np.float32 and len(out) == int(np.ceil(count * (16_000 / rate)))
    plain = soxr.resample(x, rate, 16_000, quality="HQ") if rate != 16_000 else x
    shared = min(len(out), len(plain))
    np.testing.assert_array_equal(out[:shared], plain[:shared])  # the same samples: only the length is fixed
    assert not out[shared:].any()


def test_load_audio_pads_soxrs_short_output_to_librosas_length(tmp_path):
    path = tmp_path / "odd.wav"
    soundfile.write(path, speech_like(44_101 / 44_100, 44_100)[:44_101], 44_100, subtype="FLOAT")
    assert len(soxr.resample(soundfile.read(path, dtype="float32")[0], 44_100, 16_000, quality="HQ")) == 16_000
    samples = load_audio(path)
    assert len(samples) == 16_001 and samples[-1] == 0.0


@pytest.fixture(scope="module")
def whole_files(tmp_path_factory):
    """2.9 s of stereo 44.1 kHz speech as WAV (read by libsndfile), FLAC (libsndfile), and an m4a whose index comes
    first (ffmpeg; +faststart, so a cut-off copy still opens)."""
    folder = tmp_path_factory.mktemp("whole")
    wav = folder / "speech.wav"
    soundfile.write(wav, np.stack([speech_like(2.9, 44_100, 1), speech_like(2.9, 44_100, 2)], 1), 44_100,
                    subtype="FLOAT")
    flac, m4a = folder / "speech.flac", folder / "speech.m4a"
    encode(wav, flac)
    encode(wav, m4a, "-c:a", "aac", "-movflags", "+faststart")
    return {"wav": wav, "flac": flac, "m4a": m4a}


@pytest.mark.parametrize("kind, decoded", [("wav", "0.97"), ("flac", "0.[89][0-9]"), ("m4a", "0.[89][0-9]")])
def test_a_file_that_ends_before_its_header_says_is_refused(whole_files, tmp_path, kind, decoded):
    """A third of each file (an interrupted upload): libsndfile reads a cut WAV as a shorter one, a cut FLAC goes
    to ffmpeg, which exits 0 with what it could decode. Each decode is checked against the header (issue 25)."""
    whole = whole_files[kind]
    cut = tmp_path / whole.name
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(UnsupportedAudio, match=f"^'speech.{kind}' ends after {decoded} s although its header says "
                                               "2.90 s: the file is damaged or incomplete \\(an interrupted upload "
                                               "or copy\\?\\); use the whole file.$"):
        load_audio(cut)
    assert len(load_audio(whole)) >= 2.9 * SAMPLE_RATE  # whole, each decodes (the check refuses only the cut)


def test_a_cut_past_the_limit_is_not_refused(whole_files, tmp_path):
    """Only what is used must be whole: a file cut after the first second still gives its first 0.5 s (+ margin)."""
    from fantasy.media.audio import load_speech

    cut = tmp_path / "speech.wav"
    data = whole_files["wav"].read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert len(load_speech(cut, 0.5).samples) == int(1.5 * SAMPLE_RATE)


def test_the_shortfall_allowed_is_a_tenth_of_a_second_and_one_percent():
    from fantasy.media.audio import check_complete

    check_complete("a.m4a", 2.87, 3.0, None)  # 3.0 - 0.1 - 0.03
    with pytest.raises(UnsupportedAudio, match="^'a.m4a' ends after 2.87 s although its header says 3.00 s"):
        check_complete("a.m4a", 2.8699, 3.0, None)
    check_complete("a.m4a", 0.89, 3.0, 1.0)  # the limit: 1.0 - 0.1 - 0.01
    with pytest.raises(UnsupportedAudio, match="ends after 0.89 s although its header says 3.00 s"):
        check_complete("a.m4a", 0.8899, 3.0, 1.0)
    check_complete("a.m4a", 0.5, None, None)  # nothing stated, nothing to check


def test_a_video_whose_audio_is_shorter_is_not_refused(stereo_44k, tmp_path):
    """The container's duration is the longest stream's: with a video stream it says nothing about the audio."""
    from fantasy.media.audio import stated_audio_duration

    wav, _ = stereo_44k
    video = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_executable(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:d=3",
                    "-i", str(wav), "-c:v", "libx264", "-c:a", "aac", str(video)], check=True)
    assert 1.4 * SAMPLE_RATE < len(load_audio(video)) < 1.6 * SAMPLE_RATE
    log = "  Duration: 00:01:02.50, start: 0.000000, bitrate: 2 kb/s\n  Stream #0:0: Audio: aac (LC), 44100 Hz\n"
    assert stated_audio_duration(log) == 62.5
    assert stated_audio_duration(log + "  Stream #0:1: Video: mjpeg, 600x600 (attached pic)\n") == 62.5  # cover art
    assert stated_audio_duration(log + "  Stream #0:1: Video: h264, 64x64, 25 fps\n") is None
    assert stated_audio_duration("[mp3 @ 0x1] Estimating duration from bitrate, this may be inaccurate\n" + log) is None


def test_a_killed_decoder_is_not_blamed_on_the_file(whole_files, tmp_path, monkeypatch):
    from tests.faults import ffmpeg_script

    fake = ffmpeg_script(tmp_path / "bin", "kill -9 $$")
    monkeypatch.setattr("fantasy.media.audio.ffmpeg_executable", lambda: fake)
    with pytest.raises(UnsupportedAudio, match="^decoding 'speech.m4a' was stopped by signal 9: try again$"):
        load_audio(whole_files["m4a"])


def wav_bytes(data_size: int, extra: bytes = b"") -> bytes:
    """A float stereo WAV header (8 bytes a frame) stating `data_size` bytes of data, `extra` chunks before it."""
    fmt = b"".join(v.to_bytes(n, "little") for v, n in ((3, 2), (2, 2), (44_100, 4), (352_800, 4), (8, 2), (32, 2)))
    chunks = b"fmt " + len(fmt).to_bytes(4, "little") + fmt + extra + b"data" + data_size.to_bytes(4, "little")
    return b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks + b"\0" * 64


@pytest.mark.parametrize("size, extra, frames", [
    (800, b"", 100),  # 8 bytes a frame (two float channels)
    (804, b"", 100),
    (800, b"LIST" + (3).to_bytes(4, "little") + b"abc\0", 100),  # an odd chunk before the data: padded to even
    (0, b"", None), (0xFFFFFFFF, b"", None),  # streamed: no size stated
])
def test_the_wav_header_states_the_frames_of_its_data(tmp_path, size, extra, frames):
    from fantasy.media.audio import wav_header_frames

    path = tmp_path / "h.wav"
    path.write_bytes(wav_bytes(size, extra))
    assert wav_header_frames(path) == frames
    path.write_bytes(b"RIFX" + path.read_bytes()[4:])
    assert wav_header_frames(path) is None


def test_a_file_with_no_samples_says_so(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros(0, np.float32), 16_000)
    with pytest.raises(AudioTooShort, match=r"^'empty.wav' contains no audio samples\.$"):
        load_audio(path)
