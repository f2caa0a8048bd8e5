"""Video out: H.264 yuv420p mp4 with the speech muxed as AAC, written so a failure leaves no file.

Frames are piped to ffmpeg as they are decoded. The finished stream is muxed with the speech:
the audio is padded with silence to the video's length (`apad` + `-shortest`), so every generated
frame is kept and audio longer than the video is cut at its end. `+faststart` puts the index first
so browsers start playing before the download ends.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import imageio_ffmpeg
import numpy as np

from fantasy.audio import ffmpeg_executable

CRF = 18  # visually lossless for faces; the default 23 smears lips


class Mp4Writer:
    """Append uint8 RGB frames; `close()` muxes the audio and moves the file into place atomically."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int, audio_path: str | Path | None = None):
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
        self.path = Path(path)
        self.fps, self.width, self.height = fps, width, height
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_tmp = self.path.with_name(f".{self.path.stem}.video.partial.mp4")
        self._final_tmp = self.path.with_name(f".{self.path.stem}.partial.mp4")
        self._pipe = imageio_ffmpeg.write_frames(
            str(self._video_tmp), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", quality=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(CRF)],
        )
        self._pipe.send(None)
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """Frames [n, H, W, 3] (or one [H, W, 3]) uint8."""
        frames = frames[None] if frames.ndim == 3 else frames
        if frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames of {self.height}x{self.width}x3, got {frames.dtype} {frames.shape[1:]}")
        for frame in frames:
            self._pipe.send(np.ascontiguousarray(frame))
        self.frames_written += len(frames)

    def close(self) -> Path:
        self._pipe.close()
        if self.frames_written == 0:
            self.abort()
            raise ValueError("no frames were written")
        try:
            mux_audio(self._video_tmp, self.audio_path, self._final_tmp, duration_s=self.frames_written / self.fps)
            self._final_tmp.replace(self.path)
        finally:
            self._cleanup()
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and delete every partial file; the target path is never created."""
        with contextlib.suppress(Exception):  # ffmpeg may already be gone; cleanup must still happen
            self._pipe.close()
        self._cleanup()

    def _cleanup(self) -> None:
        for tmp in (self._video_tmp, self._final_tmp):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def mux_audio(
    video_path: Path, audio_path: Path | None, out_path: Path, start_s: float = 0.0, duration_s: float | None = None
) -> None:
    """Copy the H.264 stream, add the audio (from `start_s`) as AAC padded/cut to the video, +faststart.

    Pass `duration_s` (frames / fps): `apad` + `-shortest` alone overshoots by a few AAC frames.
    """
    cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-i", str(video_path)]
    if audio_path is not None:
        cmd += ["-ss", f"{start_s:.6f}", "-i", str(audio_path), "-map", "0:v:0", "-map", "1:a:0",
                "-c:a", "aac", "-b:a", "192k", "-af", "apad", "-shortest"]
        if duration_s is not None:
            cmd += ["-t", f"{duration_s:.6f}"]
    cmd += ["-c:v", "copy", "-movflags", "+faststart", str(out_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not mux the video: {proc.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    duration: float
    width: int
    height: int
    video_codec: str
    pix_fmt: str
    audio_codec: str | None
    audio_duration: float | None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def probe(path: str | Path) -> VideoInfo:
    """Read back what a file really contains (frame count decoded, not estimated); needs ffprobe."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise RuntimeError("ffprobe is not installed (apt-get install ffmpeg)")
    out = subprocess.run(
        [ffprobe, "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    info = json.loads(out)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    audio = next((s for s in info["streams"] if s["codec_type"] == "audio"), None)
    num, den = (int(x) for x in video["avg_frame_rate"].split("/"))
    return VideoInfo(
        frames=int(video["nb_read_frames"]),
        fps=num / den,
        duration=float(info["format"]["duration"]),
        width=int(video["width"]),
        height=int(video["height"]),
        video_codec=video["codec_name"],
        pix_fmt=video.get("pix_fmt", ""),
        audio_codec=audio["codec_name"] if audio else None,
        audio_duration=float(audio["duration"]) if audio and "duration" in audio else None,
    )


def moov_before_mdat(path: str | Path) -> bool:
    """True when the mp4 index comes first (`+faststart`), so playback can start while downloading."""
    data = Path(path).read_bytes()
    moov, mdat = data.find(b"moov"), data.find(b"mdat")
    return 0 <= moov < mdat
