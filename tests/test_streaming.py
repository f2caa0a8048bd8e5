"""Streaming chunks: >= 1 s each, every frame exactly once, each chunk carrying its own slice of the speech."""

from __future__ import annotations

import math
import subprocess
import threading

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

from fantasy.app.streaming import (
    ChunkReady,
    ChunkWriter,
    Finished,
    StageProgress,
    plan_chunks,
    stream_generate,
)
from fantasy.errors import GenerationCancelled, InvalidSetting
from fantasy.generation import Settings
from fantasy.weights.presets import get_preset
from tests.mp4_probe import probe

FPS = 23
RATE = 16_000


def chirp(seconds: float) -> np.ndarray:
    """Frequency rises 200 Hz + 400 Hz/s, so the pitch at any moment tells where in the track we are."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * (200 * t + 200 * t**2))).astype(np.float32)


def chirp_time(freq: float) -> float:
    return (freq - 200) / 400


def decode_audio(path) -> np.ndarray:
    out = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar", str(RATE),
         "-f", "f32le", "-"], capture_output=True, check=True,
    ).stdout
    return np.frombuffer(out, dtype=np.float32)


def dominant_freq(samples: np.ndarray) -> float:
    window = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window, n=16 * len(samples)))
    return float(np.fft.rfftfreq(16 * len(samples), 1 / RATE)[np.argmax(spectrum)])


def coded_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame n is flat grey 10 + 3n, so a decoded frame says which frame it was."""
    values = 10 + 3 * np.arange(count, dtype=np.uint8)
    return np.broadcast_to(values[:, None, None, None], (count, height, width, 3)).copy()


def frame_ids(path) -> list[int]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    ids = [int(round((np.frombuffer(f, np.uint8).reshape(h, w, 3).mean() - 10) / 3)) for f in reader]
    return ids


# ---- planning -------------------------------------------------------------------------------------


def test_plan_for_the_release_clip():
    assert plan_chunks(81, 23) == [27, 27, 27]
    assert plan_chunks(49, 23) == [25, 24]
    assert plan_chunks(45, 23) == [45]  # two chunks would make one shorter than 1 s
    assert plan_chunks(5, 23) == [5]  # the whole video is shorter than 1 s: one chunk


@pytest.mark.parametrize("fps", [16, 23, 25, 30])
def test_plan_covers_every_frame_with_long_even_chunks(fps):
    for total in range(5, 402, 4):
        sizes = plan_chunks(total, fps)
        assert sum(sizes) == total
        assert max(sizes) - min(sizes) <= 1
        if total >= fps:
            assert min(sizes) >= fps  # >= 1 s each
        else:
            assert sizes == [total]


# ---- chunk writer ---------------------------------------------------------------------------------


@pytest.fixture
def chirp_wav(tmp_path):
    path = tmp_path / "chirp.wav"
    soundfile.write(path, chirp(4.0), RATE)
    return path


def test_chunks_have_their_audio_slice_and_every_frame_once(tmp_path, chirp_wav):
    total = 81
    frames = coded_frames(total)
    writer = ChunkWriter(tmp_path / "chunks", total, FPS, chirp_wav)
    finished = writer.add(frames[:1])
    for start in range(1, total, 4):  # the causal VAE's rhythm: 1 frame, then 4 at a time
        finished += writer.add(frames[start:start + 4])
    assert [c.index for c in finished] == [0, 1, 2]
    assert writer.finish() == finished

    seen: list[int] = []
    for chunk in finished:
        info = probe(chunk.path)
        assert info.frames == chunk.num_frames == 27
        assert info.duration >= 1.0
        assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
        assert info.has_audio and info.audio_codec == "aac"
        assert info.audio_duration == pytest.approx(chunk.duration_s, abs=2e-4)  # measured 0.09 ms off
        # the chunk's audio starts where its video starts: read the chirp's pitch 0.05-0.15 s in
        audio = decode_audio(chunk.path)
        freq = dominant_freq(audio[int(0.05 * RATE):int(0.15 * RATE)])
        assert chirp_time(freq) == pytest.approx(chunk.start_s + 0.1, abs=2.2e-3), chunk  # measured 1.1 ms off
        seen += frame_ids(chunk.path)
    assert seen == list(range(total))
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["chunk000.mp4", "chunk001.mp4", "chunk002.mp4"]


def test_chunk_boundaries_need_not_match_arrival_batches(tmp_path, chirp_wav):
    total = 49  # chunks of 25 and 24 frames: the boundary falls inside a 4-frame batch
    frames = coded_frames(total)
    writer = ChunkWriter(tmp_path, total, FPS, chirp_wav)
    done = writer.add(frames[:1])
    for start in range(1, total, 4):
        done += writer.add(frames[start:start + 4])
    assert [c.num_frames for c in done] == [25, 24]
    assert [c.first_frame for c in done] == [0, 25]
    assert frame_ids(done[0].path) + frame_ids(done[1].path) == list(range(total))


def test_audio_shorter_than_the_video_is_padded_with_silence(tmp_path):
    short = tmp_path / "short.wav"
    soundfile.write(short, chirp(0.5), RATE)
    writer = ChunkWriter(tmp_path / "c", 49, FPS, short)
    chunks = writer.add(coded_frames(49))
    second = probe(chunks[1].path)
    assert second.has_audio and second.audio_duration == pytest.approx(chunks[1].duration_s, abs=1.1e-3)  # 0.52 ms
    assert np.abs(decode_audio(chunks[1].path)).max() < 1e-3  # past the speech: silence, not an error


def test_writer_rejects_extra_frames_and_reports_missing_ones(tmp_path, chirp_wav):
    writer = ChunkWriter(tmp_path, 9, FPS, chirp_wav)
    with pytest.raises(ValueError, match="more than the 9 frames"):
        writer.add(coded_frames(10))
    writer = ChunkWriter(tmp_path / "b", 9, FPS, chirp_wav)
    writer.add(coded_frames(5))
    with pytest.raises(ValueError, match="after 5 of 9 frames"):
        writer.finish()
    assert not list((tmp_path / "b").glob(".*"))  # the partial chunk was removed


# ---- a generation as a stream ----------------------------------------------------------------------


def small_settings(**overrides) -> Settings:
    return Settings(**{"steps": 2, "longest_edge": 64, **overrides})


def test_stream_generate_yields_chunks_while_decoding_then_the_finished_video(tiny_pipe, speech_wav, tmp_path):
    from tests.conftest import EXAMPLE_IMAGE

    out = tmp_path / "out.mp4"
    events = list(stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, out, small_settings(), get_preset("tiny"),
                                  tmp_path / "chunks"))
    assert isinstance(events[-1], Finished)
    result = events[-1].result
    chunks = [e.chunk for e in events if isinstance(e, ChunkReady)]
    assert result.num_frames == 49  # 2 s of speech at 23 fps
    assert [c.num_frames for c in chunks] == [25, 24] and events[-1].chunks == chunks
    # the first chunk is out before decoding ends: that is what lets the browser start playing early
    first_chunk = next(i for i, e in enumerate(events) if isinstance(e, ChunkReady))
    later_decode = [e.fraction for e in events[first_chunk:] if isinstance(e, StageProgress) and e.stage == "decode"]
    assert later_decode and min(later_decode) < 1.0
    denoise = [e.fraction for e in events if isinstance(e, StageProgress) and e.stage == "denoise"]
    assert denoise == [0.5, 1.0]  # one event per step
    assert events[-1].steps_run == 2
    final = probe(out)
    assert final.frames == 49 and final.has_audio
    assert sum(probe(c.path).frames for c in chunks) == final.frames


def test_cancel_stops_at_the_next_step_and_leaves_no_video(tiny_pipe, speech_wav, tmp_path):
    from tests.conftest import EXAMPLE_IMAGE

    out = tmp_path / "out.mp4"
    cancel = threading.Event()
    stream = stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, out, small_settings(steps=5), get_preset("tiny"),
                             tmp_path / "chunks", cancel=cancel)
    seen = []

    def consume_and_cancel_at_the_first_step():
        for event in stream:
            seen.append(event)
            if isinstance(event, StageProgress) and event.stage == "denoise":
                cancel.set()

    with pytest.raises(GenerationCancelled, match=r"^Generation stopped\.$"):
        consume_and_cancel_at_the_first_step()
    steps_done = [e for e in seen if isinstance(e, StageProgress) and e.stage == "denoise"]
    assert len(steps_done) == 1  # stopped right after the step that saw the flag
    assert not out.exists()
    assert not list(tmp_path.glob("**/*.mp4"))


def test_closing_the_stream_early_stops_the_worker(tiny_pipe, speech_wav, tmp_path):
    from tests.conftest import EXAMPLE_IMAGE

    out = tmp_path / "out.mp4"
    lock = threading.Lock()
    stream = stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, out, small_settings(), get_preset("tiny"),
                             tmp_path / "chunks", lock=lock)
    for event in stream:
        if isinstance(event, ChunkReady):
            break  # a UI closing the generator (Gradio's Stop) lands here
    stream.close()
    assert lock.acquire(timeout=60)  # the worker let go of the device
    lock.release()
    assert not out.exists()  # it stopped before the end: no final file
    assert [p.name for p in (tmp_path / "chunks").glob("*.mp4")] == ["chunk000.mp4"]
    assert not list((tmp_path / "chunks").glob(".*"))


def test_worker_errors_reach_the_consumer(tiny_pipe, speech_wav, tmp_path):
    from tests.conftest import EXAMPLE_IMAGE

    with pytest.raises(InvalidSetting, match="steps must be between 1 and 100"):
        list(stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech_wav, tmp_path / "o.mp4", Settings(steps=0),
                             get_preset("tiny"), tmp_path))


def test_chunk_math_matches_durations():
    sizes = plan_chunks(81, 23)
    assert all(s / 23 >= 1.0 for s in sizes)
    assert math.isclose(sum(sizes) / 23, 81 / 23)


def test_a_long_video_streams_across_windows(tiny_pipe, tmp_path):
    from tests.conftest import EXAMPLE_IMAGE, speech_like

    speech = tmp_path / "long.wav"
    soundfile.write(speech, speech_like(4.5), RATE)  # 105 frames: two windows (81 + 24 new after 5 overlap)
    out = tmp_path / "out.mp4"
    events = list(stream_generate(tiny_pipe, EXAMPLE_IMAGE, speech, out, small_settings(steps=1),
                                  get_preset("tiny"), tmp_path / "chunks"))
    done = events[-1]
    assert isinstance(done, Finished) and done.result.windows == 2 and done.steps_run == 2
    chunks = [e.chunk for e in events if isinstance(e, ChunkReady)]
    assert [c.num_frames for c in chunks] == [27, 26, 26, 26]
    # the first window's chunks are out before the second window is denoised
    second_window = next(i for i, e in enumerate(events)
                         if isinstance(e, StageProgress) and e.stage == "denoise" and e.fraction == 1.0)
    assert sum(isinstance(e, ChunkReady) for e in events[:second_window]) == 3
    assert sum(probe(c.path).frames for c in chunks) == probe(out).frames == 105
