"""The output's rules one by one (`fantasy.media.output`): the room a video needs, how an ffmpeg failure is
told, what reading a file back says. The fault tests (`test_faults_output.py`) run them end to end."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile

from fantasy.errors import OutputError
from fantasy.media.audio import ffmpeg_executable
from fantasy.media.output import (
    StreamCheck,
    check_target,
    ffmpeg_failure,
    read_stream,
    remove_quietly,
    verify_mp4,
    video_bytes,
)
from fantasy.media.video import Mp4Writer

from .conftest import speech_like
from .faults import ffmpeg_script


def test_the_room_a_video_needs_is_an_upper_bound_with_its_slack():
    # 0.75 byte a pixel, AAC at 24,000 bytes a second, and 1 MiB of slack on top
    assert video_bytes(10, 64, 32, 2.5) == 10 * 64 * 32 * 3 // 4 + 60_000 + 1_048_576
    assert video_bytes(10, 64, 32, 2.5, audio=False) == 10 * 64 * 32 * 3 // 4 + 1_048_576


def test_too_little_room_says_how_much_in_megabytes(tmp_path):
    with pytest.raises(OutputError, match=rf"^not enough free space in '{re.escape(str(tmp_path))}' for the video: "
                                          r"about 1000000000\.0 MB needed, [0-9]+\.[0-9] MB free$"):
        check_target(tmp_path / "o.mp4", 10**15)
    assert list(tmp_path.iterdir()) == []  # the write probe is gone too


@pytest.mark.parametrize("returncode, stderr, reason", [
    (0, "", None),
    (0, "[aac @ 0x1] Too many bits per frame requested, clamping to max\n", None),  # a warning, not a failure
    (1, "", "ffmpeg exited with status 1"),
    (1, "first\n\n  last line  \n\n", "last line"),
    # a known failure is told even when ffmpeg exits 0, and before later lines
    (0, "x: No space left on device\nConversion failed!\n", "x: No space left on device"),
    (1, "E" * 400, "E" * 300),
])
def test_an_ffmpeg_failure_is_told_in_one_line(returncode, stderr, reason):
    assert ffmpeg_failure(returncode, stderr) == reason


def test_an_ffmpeg_failure_names_files_as_the_user_knows_them(tmp_path):
    tmp = tmp_path / ".o.1234.mux.partial.mp4"
    stderr = f"[mp4 @ 0x5581] Error writing trailer of {tmp}: Disk quota exceeded\n"
    assert ffmpeg_failure(0, stderr, {tmp: "o.mp4"}) == "[mp4 @ 0x5581] Error writing trailer of o.mp4: Disk quota exceeded"


def test_a_file_that_is_no_video_does_not_read_back_and_the_message_has_no_folder(tmp_path):
    broken = tmp_path / "v.mp4"
    broken.write_bytes(b"\0\0\0\x18ftypisom" + bytes(200))
    with pytest.raises(OutputError, match=r"^the finished video does not read back: v\.mp4: .+$") as error:
        read_stream(ffmpeg_executable(), broken, "v:0")
    assert str(tmp_path) not in str(error.value)


def test_a_video_without_its_audio_track_is_refused(tmp_path):
    out = tmp_path / "silent.mp4"
    with Mp4Writer(out, 23, 64, 64) as writer:
        writer.write(np.zeros((3, 64, 64, 3), np.uint8))
    verify_mp4(ffmpeg_executable(), out, 3, 23, audio=False)
    with pytest.raises(OutputError, match=r"^the finished video has no audio track$"):
        verify_mp4(ffmpeg_executable(), out, 3, 23, audio=True)
    with pytest.raises(OutputError, match=r"^the finished video holds 3 of its 4 frames$"):
        verify_mp4(ffmpeg_executable(), out, 4, 23, audio=False)


def test_missing_folders_are_made_and_a_wrong_suffix_is_named(tmp_path):
    assert check_target(tmp_path / "a" / "b" / "o.mp4") == tmp_path / "a" / "b" / "o.mp4"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    with pytest.raises(OutputError, match=r"^the output must end in \.mp4, got 'o\.mov'$"):
        check_target(tmp_path / "a" / "o.mov")


def test_exactly_enough_room_is_enough(tmp_path, monkeypatch):
    monkeypatch.setattr("fantasy.media.output.shutil.disk_usage", lambda folder: SimpleNamespace(free=5_000))
    check_target(tmp_path / "o.mp4", 5_000)
    monkeypatch.setattr("fantasy.media.output.shutil.disk_usage", lambda folder: SimpleNamespace(free=0))
    check_target(tmp_path / "o.mp4")  # by default nothing is needed (the caller says how much)
    monkeypatch.setattr("fantasy.media.output.shutil.disk_usage", lambda folder: SimpleNamespace(free=5_000))
    with pytest.raises(OutputError, match=r"about 0\.0 MB needed, 0\.0 MB free$"):
        check_target(tmp_path / "o.mp4", 5_001)


@pytest.mark.parametrize("body, message", [
    ("exit 1", "ffmpeg exited with status 1"),  # a failure with nothing said
    ("printf '%0400d\\n' 0 >&2; exit 1", "0" * 300),  # one line, at most 300 characters of it
])
def test_a_read_back_failure_is_one_bounded_line(tmp_path, body, message):
    with pytest.raises(OutputError, match=rf"^the finished video does not read back: {message}$"):
        read_stream(ffmpeg_script(tmp_path, body), tmp_path / "v.mp4", "v:0")


def test_read_back_counts_from_ffmpegs_progress_lines(tmp_path):
    ffmpeg = ffmpeg_script(tmp_path, "printf 'frame=7\\nout_time_us=1250000\\nprogress=end\\n'")
    assert read_stream(ffmpeg, tmp_path / "v.mp4", "v:0") == StreamCheck(7, 1.25)
    assert read_stream(ffmpeg_script(tmp_path, "echo progress=end"), tmp_path / "v.mp4", "v:0") == StreamCheck(0, 0.0)


def test_the_audio_track_is_read_back_to_its_end(tmp_path):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(1.0), 16_000)
    with Mp4Writer(tmp_path / "o.mp4", 23, 64, 64, audio_path=speech) as writer:
        writer.write(np.zeros((3, 64, 64, 3), np.uint8))
    sound = read_stream(ffmpeg_executable(), tmp_path / "o.mp4", "a:0")
    assert abs(sound.end_s - 3 / 23) < 0.07  # the mux cuts at the video's end, to an AAC frame (64 ms at 16 kHz)


def test_a_file_without_video_holds_none_of_its_frames(tmp_path):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, speech_like(1.0), 16_000)
    audio_only = tmp_path / "a.mp4"
    subprocess.run([ffmpeg_executable(), "-v", "error", "-i", str(speech), "-c:a", "aac", str(audio_only)], check=True)
    with pytest.raises(OutputError, match=r"^the finished video holds 0 of its 3 frames$"):
        verify_mp4(ffmpeg_executable(), audio_only, 3, 23, audio=True)


@pytest.mark.parametrize("end_s, message", [(1.0, None), (0.99, "the finished video's audio stops at 0.99 s of 1.25 s")])
def test_audio_may_end_a_quarter_second_early_and_no_more(tmp_path, monkeypatch, end_s, message):
    """25 frames at 20 fps last 1.25 s; AAC ends on a frame boundary, so up to 0.25 s short is accepted."""
    checks = {"v:0": StreamCheck(25, 1.25), "a:0": StreamCheck(40, end_s)}
    monkeypatch.setattr("fantasy.media.output.read_stream", lambda ffmpeg, path, stream: checks[stream])
    if message is None:
        verify_mp4("ffmpeg", tmp_path / "v.mp4", 25, 20, audio=True)
    else:
        with pytest.raises(OutputError, match=f"^{re.escape(message)}$"):
            verify_mp4("ffmpeg", tmp_path / "v.mp4", 25, 20, audio=True)


def test_removing_temporaries_is_quiet_and_goes_on(tmp_path):
    """What cannot be removed (here a directory) is no new error on the way out; the next path still goes."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "f").write_bytes(b"x")
    remove_quietly(tmp_path / "dir", tmp_path / "missing", tmp_path / "f")
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def owned_name(stem: str, tag: str, pid: int, host: str | None = None) -> str:
    from fantasy.media.output import _host

    return f".{stem}.{tag}.{host or _host()}.{pid}.0123abcd.partial.mp4"


def a_finished_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_temporary_names_its_owner(tmp_path):
    import os

    from fantasy.media.output import _host, temp_path

    name = temp_path(tmp_path / "my.video.mp4", "mux").name
    assert re.fullmatch(rf"\.my\.video\.mux\.{re.escape(_host())}\.{os.getpid()}\.[0-9a-f]{{8}}\.partial\.mp4", name)
    assert temp_path(tmp_path / "p.webp", "preview").name.endswith(".partial.webp")


def test_the_next_temporary_removes_the_temporaries_of_runs_that_are_gone(tmp_path):
    """SIGKILL runs no cleanup (issue 25): the next run into the folder finds what a dead process left."""
    import os
    import time

    from fantasy.media.output import temp_path

    dead, ours = a_finished_pid(), os.getpid()
    left = {
        owned_name("o", "video", dead): True,  # this machine, its process is gone
        owned_name("o", "mux", ours): False,  # this very process: a run in progress
        owned_name("o", "reused", ours): True,  # our pid, but the file is older than this process: pid reused
        owned_name("o", "video", ours, host="elsewhere"): False,  # another machine's, recent: maybe running
        owned_name("o", "old", ours, host="elsewhere"): True,  # another machine's, over a day old
        ".o.0123456789ab.video.partial.mp4": True,  # an earlier version's name, over a day old
        ".o.0123456789ab.mux.partial.mp4": False,  # an earlier version's name, recent
        ".o.partial.mp4": False, ".notes.txt": False, "o.mp4": False,  # not ours: never touched
    }
    for name in left:
        (tmp_path / name).write_bytes(b"x")
    day_ago = time.time() - 24 * 3600 - 60
    for name in (owned_name("o", "reused", ours), owned_name("o", "old", ours, host="elsewhere"),
                 ".o.0123456789ab.video.partial.mp4"):
        os.utime(tmp_path / name, (day_ago, day_ago))
    new = temp_path(tmp_path / "o.mp4", "video")
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(name for name, stale in left.items() if not stale)


def test_a_day_is_the_age_limit_for_temporaries_whose_owner_cannot_be_asked(tmp_path):
    import os

    from fantasy.media.output import STALE_AFTER_S, is_stale

    other = tmp_path / owned_name("o", "video", 1, host="elsewhere")
    other.write_bytes(b"x")
    modified = other.stat().st_mtime
    assert not is_stale(other, now=modified + STALE_AFTER_S)
    assert is_stale(other, now=modified + STALE_AFTER_S + 0.01)
    gone = tmp_path / owned_name("o", "video", os.getpid())  # a name can stop existing between listing and asking
    assert not is_stale(gone)


def test_a_process_runs_since_its_start(tmp_path):
    import os
    import time

    from fantasy.media.output import running_since

    assert running_since(os.getpid(), time.time())
    assert not running_since(os.getpid(), time.time() - 10 * 24 * 3600)  # it did not run ten days ago
    assert not running_since(a_finished_pid(), time.time())
    zombie = subprocess.Popen(["true"])
    time.sleep(0.5)  # exited, not reaped: still in the process table
    assert not running_since(zombie.pid, time.time())
    zombie.wait()


def test_every_ffmpeg_is_tied_to_this_process(tmp_path, monkeypatch):
    """The encoder, the mux, the read-back and the speech decoder all start with the tie (`die_with_parent`)."""
    from fantasy.media.audio import load_audio

    started = []
    popen = subprocess.Popen

    def recording(cmd, *args, **kwargs):  # `subprocess.run` starts its process through this too
        started.append((Path(cmd[0]).name, kwargs.get("preexec_fn") is not None))
        return popen(cmd, *args, **kwargs)

    speech = tmp_path / "s.m4a"
    soundfile.write(tmp_path / "s.wav", speech_like(1.0), 16_000)
    subprocess.check_call([ffmpeg_executable(), "-v", "error", "-i", str(tmp_path / "s.wav"), str(speech)])
    monkeypatch.setattr(subprocess, "Popen", recording)
    with Mp4Writer(tmp_path / "o.mp4", 23, 64, 64, audio_path=tmp_path / "s.wav") as writer:
        writer.write(np.zeros((3, 64, 64, 3), np.uint8))
    load_audio(speech)
    assert started == [("ffmpeg", True)] * 5  # encode, mux, read back video and audio, decode the speech
