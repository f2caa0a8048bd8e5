"""What an mp4 really holds, read back with ffprobe: the tests' instrument (the product verifies its own
output with `fantasy.media.output.verify_mp4`, which needs only ffmpeg)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


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
