"""Video out: H.264 yuv420p mp4 with the speech muxed as AAC, written so a failure leaves no file.

Frames are piped to ffmpeg as they are decoded. The finished stream is muxed with the speech:
the audio is padded with silence to the video's length (`apad` + `-shortest`), so every generated
frame is kept and audio longer than the video is cut at its end. `+faststart` puts the index first
so browsers start playing before the download ends. Every ffmpeg run is checked (exit status and its
error lines), the muxed file is read back (frames, duration, audio) and only then renamed onto the
target (`fantasy.media.output`); temporary files have unique names and are removed on every way out.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import numpy as np

from fantasy.errors import OutputError
from fantasy.media.audio import ffmpeg_executable
from fantasy.media.output import ffmpeg_failure, publish, remove_quietly, temp_path, verify_mp4
from fantasy.media.tethered import die_with_parent
from fantasy.stop import StopRequested, held_signals

CRF = 18  # visually lossless for faces; the default 23 smears lips


class FrameEncoder:
    """One ffmpeg process turning raw RGB frames on its stdin into an H.264 mp4, with its errors checked.

    Replaces imageio-ffmpeg's `write_frames`, which lets ffmpeg print to our console, never reads its exit
    status and polls with sleeps when closing. ffmpeg runs in its own session, so a Ctrl-C reaches only us
    and we decide what happens to its file, and dies with us (`fantasy.media.tethered`): killed with SIGKILL, we
    leave a cut-off temporary (removed by the next run into the folder), never a video ffmpeg finished alone.
    """

    def __init__(self, path: Path, fps: float, width: int, height: int, name: str):
        self.path, self.name = path, name
        rate = str(Fraction(fps).limit_denominator())
        cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", rate, "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-crf", str(CRF), str(path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True, preexec_fn=die_with_parent())
        self._errors: list[bytes] = []
        self._reader = threading.Thread(target=self._read_errors, name="ffmpeg-stderr", daemon=True)
        self._reader.start()

    def _read_errors(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the pipe closed under us: nothing more to read
            for line in self._proc.stderr:
                self._errors.append(line)

    def _failure(self) -> str | None:
        self._reader.join(timeout=10)
        stderr = b"".join(self._errors).decode(errors="replace")
        return ffmpeg_failure(self._proc.returncode, stderr, {self.path: self.name})

    def send(self, frame: np.ndarray) -> None:
        try:
            self._proc.stdin.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise OutputError(f"could not encode '{self.name}': {self._failure() or 'ffmpeg stopped'}") from None

    def finish(self) -> None:
        """Close the input and wait; raise `OutputError` on any failure ffmpeg reports."""
        with contextlib.suppress(OSError):  # BrokenPipeError: ffmpeg is gone; its stderr says why
            self._proc.stdin.close()
        self._proc.wait()
        problem = self._failure()
        if problem:
            raise OutputError(f"could not encode '{self.name}': {problem}")

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join(timeout=10)
        for stream in (self._proc.stdin, self._proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()


class Mp4Writer:
    """Append uint8 RGB frames; `close()` muxes the audio, verifies the file and moves it into place atomically.

    `verify=False` skips reading the file back (for intermediate files that are verified later).
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, audio_path: str | Path | None = None,
                 verify: bool = True):
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
        self.path = Path(path)
        self.fps, self.width, self.height = fps, width, height
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.verify = verify
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_tmp = temp_path(self.path, "video")
        self._final_tmp = temp_path(self.path, "mux")
        self._encoder = FrameEncoder(self._video_tmp, fps, width, height, self.path.name)
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Frames [n, H, W, 3] (or one [H, W, 3]) uint8."""
        frames = frames[None] if frames.ndim == 3 else frames
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames of {self.height}x{self.width}x3, got {frames.dtype} {frames.shape[1:]}")
        for frame in frames:
            self._encoder.send(frame)
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Finish, mux, verify, rename. On any failure (or a stop signal) nothing is left and the target is untouched."""
        try:
            if self.frames_written == 0:
                raise ValueError("no frames were written")
            self._encoder.finish()
            seconds = self.frames_written / self.fps
            mux_audio(self._video_tmp, self.audio_path, self._final_tmp, duration_s=seconds, name=self.path.name)
            if self.verify:
                verify_mp4(ffmpeg_executable(), self._final_tmp, self.frames_written, self.fps,
                           audio=self.audio_path is not None)
            try:
                with held_signals():
                    publish(self._final_tmp, self.path)
            except StopRequested as stop:
                stop.written = self.path
                raise
        finally:
            self._encoder.kill()
            remove_quietly(self._video_tmp, self._final_tmp)
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete every partial file; the target path is never created."""
        self._encoder.kill()
        remove_quietly(self._video_tmp, self._final_tmp)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def mux_audio(
    video_path: Path, audio_path: Path | None, out_path: Path, start_s: float = 0.0, duration_s: float | None = None,
    name: str | None = None,
) -> None:
    """Copy the H.264 stream, add the audio (from `start_s`) as AAC padded/cut to the video, +faststart.

    Pass `duration_s` (frames / fps): `apad` + `-shortest` alone overshoots by a few AAC frames. Raises
    `OutputError` when ffmpeg fails, including the failures it reports with exit status 0 (`name`: what the
    messages call the file). A partly written `out_path` is removed.
    """
    cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-i", str(video_path)]
    if audio_path is not None:
        cmd += ["-ss", f"{start_s:.6f}", "-i", str(audio_path), "-map", "0:v:0", "-map", "1:a:0",
                "-c:a", "aac", "-b:a", "192k", "-af", "apad", "-shortest"]
        if duration_s is not None:
            cmd += ["-t", f"{duration_s:.6f}"]
    cmd += ["-c:v", "copy", "-movflags", "+faststart", str(out_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True, preexec_fn=die_with_parent())
    shown = name or out_path.name
    problem = ffmpeg_failure(proc.returncode, proc.stderr, {
        out_path: shown, video_path: shown, **({audio_path: audio_path.name} if audio_path else {})})
    if problem:
        remove_quietly(out_path)
        raise OutputError(f"could not write '{shown}': {problem}")
