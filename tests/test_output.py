"""The output's rules one by one (`fantasy.media.output`): the room a video needs, how an ffmpeg failure is
told, what reading a file back says. The fault tests (`test_faults_output.py`) run them end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fantasy.errors import OutputError
from fantasy.media.audio import ffmpeg_executable
from fantasy.media.output import check_target, ffmpeg_failure, read_stream, verify_mp4, video_bytes
from fantasy.media.video import Mp4Writer


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
