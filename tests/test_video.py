"""What the mp4 writer really puts in the file."""

import os
import re
import signal

import numpy as np
import pytest
import soundfile

import fantasy.media.video
from fantasy.errors import OutputError
from fantasy.media.audio import ffmpeg_executable, load_audio
from fantasy.media.video import Mp4Writer, mux_audio
from fantasy.stop import StopRequested, stop_on_signals
from tests.mp4_probe import moov_before_mdat, probe

from .conftest import speech_like
from .faults import ffmpeg_script


def frames(n, h=64, w=96):
    return (np.random.default_rng(0).integers(0, 255, (n, h, w, 3))).astype(np.uint8)


def fake_ffmpeg(tmp_path, body: str, monkeypatch) -> None:
    """The writer's ffmpeg replaced by a bash script (`tests.faults.ffmpeg_script`)."""
    fake = ffmpeg_script(tmp_path, body)
    monkeypatch.setattr("fantasy.media.video.ffmpeg_executable", lambda: fake)


def test_h264_yuv420p_with_aac_audio_padded_to_the_video(tmp_path):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(2.0), 16_000)
    out = tmp_path / "out.mp4"
    with Mp4Writer(out, 23, 96, 64, audio_path=speech) as writer:
        writer.write(frames(1))
        for _ in range(20):
            writer.write(frames(4))
    info = probe(out)
    assert (info.frames, info.fps, info.width, info.height) == (81, 23.0, 96, 64)
    assert (info.video_codec, info.pix_fmt, info.audio_codec) == ("h264", "yuv420p", "aac")
    # 2 s of speech under 81/23 = 3.52 s of video: the audio is padded, no frame is lost.
    assert info.duration == pytest.approx(81 / 23, abs=6e-4)  # measured 0.26 ms off (ffprobe reports µs)
    assert info.audio_duration == pytest.approx(81 / 23, abs=6e-4)  # measured 0.26 ms
    assert moov_before_mdat(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "s.wav"]


def test_longer_audio_is_cut_to_the_video(tmp_path):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(6.0), 16_000)
    out = tmp_path / "out.mp4"
    with Mp4Writer(out, 25, 96, 64, audio_path=speech) as writer:
        writer.write(frames(50))
    info = probe(out)
    assert info.frames == 50
    assert info.audio_duration == 2.0  # measured exact: the mux cuts at 50 frames / 25 fps


def test_failure_leaves_no_file(tmp_path):
    out = tmp_path / "out.mp4"

    def write_then_fail():
        with Mp4Writer(out, 23, 96, 64) as writer:
            writer.write(frames(5))
            raise RuntimeError("decoder broke")

    with pytest.raises(RuntimeError, match="decoder broke"):
        write_then_fail()
    assert list(tmp_path.iterdir()) == []


def test_wrong_frame_size_is_refused(tmp_path):
    message = r"^expected uint8 frames of 64x96x3, got uint8 \(32, 32, 3\)$"
    with pytest.raises(ValueError, match=message), Mp4Writer(tmp_path / "o.mp4", 23, 96, 64) as w:
        w.write(frames(1, 32, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("width, height", [(95, 64), (96, 63)])
def test_odd_sides_are_refused_before_ffmpeg_starts(tmp_path, width, height):
    with pytest.raises(ValueError, match=rf"^yuv420p needs even sides, got {width}x{height}$"):
        Mp4Writer(tmp_path / "o.mp4", 23, width, height)
    assert list(tmp_path.iterdir()) == []


def test_one_frame_at_a_time_into_missing_folders_through_hidden_named_temporaries(tmp_path, monkeypatch):
    out = tmp_path / "a" / "b" / "o.mp4"
    muxed_into = []
    real_mux = fantasy.media.video.mux_audio
    monkeypatch.setattr("fantasy.media.video.mux_audio",
                        lambda video, audio, target, **kw: muxed_into.append(target.name) or real_mux(video, audio, target, **kw))
    with Mp4Writer(out, 23, 96, 64) as writer:
        for frame in frames(3):
            writer.write(frame)  # [H, W, 3]: one frame
        assert re.fullmatch(r"\.o\.video\.[A-Za-z0-9-]+\.\d+\.[0-9a-f]{8}\.partial\.mp4", writer._video_tmp.name)
    assert re.fullmatch(r"\.o\.mux\.[A-Za-z0-9-]+\.\d+\.[0-9a-f]{8}\.partial\.mp4", muxed_into[0])
    assert writer.frames_written == 3 and probe(out).frames == 3 and list(out.parent.iterdir()) == [out]


def test_abort_after_the_encoder_died_with_frames_buffered_is_quiet(tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, "exit 1", monkeypatch)
    writer = Mp4Writer(tmp_path / "videos" / "o.mp4", 23, 2, 2)
    writer.write(np.zeros((3, 2, 2, 3), np.uint8))  # buffered
    writer._encoder._proc.wait()
    writer.abort()  # closing the pipe flushes into a dead process: that error is no news
    assert list((tmp_path / "videos").iterdir()) == []


def test_closing_without_frames_is_refused_and_leaves_nothing(tmp_path):
    writer = Mp4Writer(tmp_path / "out.mp4", 23, 96, 64)
    with pytest.raises(ValueError, match="^no frames were written$"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_faststart_means_the_index_before_the_first_media_data(tmp_path):
    """The first `mdat` box decides: a later one (or the bytes 'mdat' inside the media) does not make it faststart."""
    boxes = {"faststart.mp4": b"\0\0\0\x08ftyp\0\0\0\x08moov\0\0\0\x08mdat", "plain.mp4": b"\0\0\0\x08mdat\0\0\0\x08moov..mdat",
             "no index.mp4": b"\0\0\0\x08mdat"}
    for name, data in boxes.items():
        (tmp_path / name).write_bytes(data)
    assert [moov_before_mdat(tmp_path / n) for n in boxes] == [True, False, False]
    # The first of each counts: an index at the very start, the bytes 'moov' again inside the media.
    (tmp_path / "first.mp4").write_bytes(b"moov\0\0\0\x08mdat..moov..")
    (tmp_path / "late.mp4").write_bytes(b"\0\0\0\x08mdat..moov..mdat")
    assert (moov_before_mdat(tmp_path / "first.mp4"), moov_before_mdat(tmp_path / "late.mp4")) == (True, False)


def test_abort_removes_every_temporary_file(tmp_path):
    """Aborted while muxing: the encoded stream and the half-muxed copy both go; the target never appears."""
    writer = Mp4Writer(tmp_path / "out.mp4", 23, 96, 64)
    writer.write(frames(3))
    writer._final_tmp.write_bytes(b"half a mux")  # what a stop during the mux leaves
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_undecodable_ffmpeg_errors_are_still_told(tmp_path, monkeypatch):
    """ffmpeg's stderr is bytes in the console's encoding, not always UTF-8: the failure is still one line."""
    fake_ffmpeg(tmp_path, "cat > /dev/null; printf 'caf\\xe9: No space left on device\\n' >&2; exit 1", monkeypatch)
    out = tmp_path / "videos" / "out.mp4"
    message = "^could not encode 'out.mp4': caf\ufffd: No space left on device$"
    with pytest.raises(OutputError, match=message), Mp4Writer(out, 23, 96, 64) as writer:
        writer.write(frames(3))
    assert list(out.parent.iterdir()) == []


def test_the_speech_starts_with_the_video(tmp_path):
    """One second of tone, then silence: the muxed track is loud at its start and quiet after."""
    speech = tmp_path / "tone.wav"
    t = np.arange(32_000) / 16_000
    soundfile.write(speech, np.where(t < 1.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32), 16_000)
    with Mp4Writer(tmp_path / "o.mp4", 23, 96, 64, audio_path=speech) as writer:
        writer.write(frames(46))
    muxed = load_audio(tmp_path / "o.mp4")
    rms = [float(np.sqrt(np.mean(muxed[a:b] ** 2))) for a, b in ((1_600, 14_400), (17_600, 30_400))]
    assert rms[0] > 0.3 and rms[1] < 0.01  # measured 0.353 and 0.0


def test_a_mux_failure_names_the_speech_file_not_its_folder(tmp_path):
    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF" + bytes(40))
    writer = Mp4Writer(tmp_path / "o.mp4", 23, 96, 64)
    writer.write(frames(2))
    writer._encoder.finish()
    with pytest.raises(OutputError, match=r"^could not write 'o\.mp4': speech\.wav: .+$") as error:
        mux_audio(writer._video_tmp, bad, tmp_path / "m.mp4", name="o.mp4")
    assert str(tmp_path) not in str(error.value) and not (tmp_path / "m.mp4").exists()
    writer.abort()


def test_an_encoder_that_died_with_frames_still_buffered_is_told(tmp_path, monkeypatch):
    """Tiny frames stay in the pipe's buffer until `finish` flushes them into an ffmpeg already gone; its last
    line is the reason, with its temporary file called by the target's name."""
    fake_ffmpeg(tmp_path, 'echo "first line" >&2; echo "${@: -1}: Invalid argument" >&2; exit 1', monkeypatch)
    out = tmp_path / "videos" / "o.mp4"
    writer = Mp4Writer(out, 23, 2, 2)
    writer.write(np.zeros((3, 2, 2, 3), np.uint8))  # 36 bytes: buffered, not yet written
    writer._encoder._proc.wait()  # gone before the flush (it never reads its input)
    with pytest.raises(OutputError, match=r"^could not encode 'o\.mp4': o\.mp4: Invalid argument$"):
        writer.close()
    assert list(out.parent.iterdir()) == []


def test_an_encoder_that_stopped_without_a_word_is_told(tmp_path, monkeypatch):
    fake_ffmpeg(tmp_path, "exit 0", monkeypatch)
    out = tmp_path / "videos" / "o.mp4"
    writer = Mp4Writer(out, 23, 96, 64)
    writer._encoder._proc.wait()
    with pytest.raises(OutputError, match=r"^could not encode 'o\.mp4': ffmpeg stopped$"):
        writer.write(frames(1))  # 18 KB: written straight into the closed pipe
    writer.abort()
    assert list(out.parent.iterdir()) == []


def test_every_ffmpeg_of_the_writer_runs_in_its_own_session(tmp_path, monkeypatch):
    """A terminal's Ctrl-C goes to the whole foreground process group: ffmpeg must not get it, so that we
    decide what happens to its file (`fantasy.stop`)."""
    sessions = tmp_path / "sessions"
    fake_ffmpeg(tmp_path, f'echo "$$ $(cut -d" " -f6 /proc/$$/stat) $*" >> {sessions}; exec {ffmpeg_executable()} "$@"',
                monkeypatch)
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(1.0), 16_000)
    with Mp4Writer(tmp_path / "o.mp4", 23, 96, 64, audio_path=speech) as writer:
        writer.write(frames(3))
    runs = [line.split(" ", 2) for line in sessions.read_text().splitlines()]
    writes = [(pid, sid) for pid, sid, args in runs if "rawvideo" in args or "+faststart" in args]
    assert len(writes) == 2 and all(pid == sid for pid, sid in writes)  # the encoder and the mux


def test_a_mux_that_drops_the_speech_is_caught(tmp_path, monkeypatch):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(1.0), 16_000)
    monkeypatch.setattr("fantasy.media.video.mux_audio",
                        lambda video, audio, out, **kw: mux_audio(video, None, out, **kw))
    out = tmp_path / "videos" / "o.mp4"
    with pytest.raises(OutputError, match=r"^the finished video has no audio track$"), \
            Mp4Writer(out, 23, 96, 64, audio_path=speech) as writer:
        writer.write(frames(3))
    assert list(out.parent.iterdir()) == []


def test_a_stop_during_the_final_rename_says_the_video_is_complete(tmp_path, monkeypatch):
    """The rename runs with signals held: the stop comes after it, and says the file is in place."""
    real_publish = fantasy.media.video.publish

    def publish_while_stopped(tmp, target):
        # SIGTERM, not SIGINT: a shell starts background jobs with SIGINT ignored, and an ignored signal stays so
        os.kill(os.getpid(), signal.SIGTERM)  # held until the rename is done
        return real_publish(tmp, target)

    monkeypatch.setattr("fantasy.media.video.publish", publish_while_stopped)
    out = tmp_path / "o.mp4"
    with stop_on_signals(), pytest.raises(StopRequested, match="^SIGTERM$") as stop, \
            Mp4Writer(out, 23, 96, 64) as writer:
        writer.write(frames(3))
    assert stop.value.written == out and probe(out).frames == 3
    assert list(tmp_path.iterdir()) == [out]
