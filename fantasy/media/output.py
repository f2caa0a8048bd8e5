"""Where a finished video goes: the target is checked before any work, temporary files get unique names
beside it (so the final rename is atomic and two runs never share one), ffmpeg's failures are recognised
even when it exits 0, and the finished file is verified before it is moved into place.

A temporary's name says whose it is (`.o.video.<host>.<pid>.<random>.partial.mp4`): a process killed with
SIGKILL cleans nothing up, so each new temporary first removes the folder's stale ones, those of processes of
this machine that no longer run, and any older than a day (another machine's, on a shared folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fantasy.errors import OutputError
from fantasy.media.tethered import die_with_parent

# Room a video needs, as an upper bound: H.264 at CRF 18 takes 0.63-0.66 byte per pixel for uniform random noise
# (the worst case; the tiny preset's output takes 0.1, faces far less; see docs/reliability.md); AAC at
# 192 kbit/s; plus a fixed slack.
BYTES_PER_PIXEL = 0.75
AUDIO_BYTES_PER_S = 192_000 // 8
SLACK_BYTES = 1 << 20
# Lines ffmpeg prints for a failed write; Debian's ffmpeg 5.1 can exit 0 after "Error writing trailer".
FFMPEG_FAILURES = (
    "No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
    "Error writing trailer", "Error muxing", "Error closing file", "Error submitting", "Conversion failed",
    "av_interleaved_write_frame", "Input/output error", "File too large",
)


def video_bytes(frames: int, width: int, height: int, seconds: float, audio: bool = True) -> int:
    """An upper bound on one mp4 of this size (see BYTES_PER_PIXEL)."""
    return int(frames * width * height * BYTES_PER_PIXEL + (AUDIO_BYTES_PER_S * seconds if audio else 0)) + SLACK_BYTES


def check_target(path: str | Path, needed_bytes: int = 0) -> Path:
    """Refuse an output path that cannot work, before any work: wrong suffix, a directory, a directory we
    cannot write in (tried with a real file, so read-only mounts count, even for root), or too little room.

    Creates missing parent directories. `needed_bytes`: room for everything written before the final rename.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise OutputError(f"the output must end in .mp4, got '{path.name or path}'")
    if path.is_dir():
        raise OutputError(f"the output '{path}' is a directory: give a file name ending in .mp4")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in '{folder}': {exc.strerror or exc}") from None
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise OutputError(
            f"not enough free space in '{folder}' for the video: about {_mb(needed_bytes)} needed, {_mb(free)} free"
        )
    return path


def temp_path(target: Path, tag: str) -> Path:
    """A hidden, unique name beside `target` (same directory, so `os.replace` onto the target is atomic) that names
    this process; the folder's stale temporaries are removed first (see the module docstring)."""
    remove_stale_temporaries(target.parent)
    owner = f"{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return target.with_name(f".{target.stem}.{tag}.{owner}{TEMP_MARK}{target.suffix}")


TEMP_MARK = ".partial"
STALE_AFTER_S = 24 * 3600  # a temporary of another machine, or one without an owner, is left alone for a day
_OWNED = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.partial\.\w+$")
_UNOWNED = re.compile(r"^\..+\.[0-9a-f]{12}\.\w+\.partial\.mp4$")  # written before names had owners


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "localhost"


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether a temporary (named by `temp_path`) was left by a run that is gone; anything else is not."""
    owned, unowned = _OWNED.match(path.name), _UNOWNED.match(path.name)
    if not (owned or unowned):
        return False
    try:
        modified = path.stat().st_mtime
    except OSError:
        return False
    if owned and owned["host"] == _host():
        return not running_since(int(owned["pid"]), modified)
    return (time.time() if now is None else now) - modified > STALE_AFTER_S


def running_since(pid: int, moment: float) -> bool:
    """Whether process `pid` runs and already ran at `moment` (a newer process with a reused pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it runs
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, StopIteration):
        return True  # no /proc (macOS): alive is all that is known
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started <= moment + 2.0  # btime has whole seconds


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the folder's stale temporaries (`is_stale`); returns what was removed."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.startswith(".") and TEMP_MARK in entry.name]
    except OSError:
        return []
    now = time.time()
    stale = [folder / name for name in names if is_stale(folder / name, now)]
    remove_quietly(*stale)
    return stale


def ffmpeg_failure(returncode: int, stderr: str, paths: dict[Path, str] | None = None) -> str | None:
    """Why an ffmpeg run failed (one line, temporary paths replaced by what they stand for), or None."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    known = next((line for line in lines for marker in FFMPEG_FAILURES if marker in line), None)
    if returncode == 0 and known is None:
        return None
    reason = known or (lines[-1] if lines else f"ffmpeg exited with status {returncode}")
    for path, name in (paths or {}).items():
        reason = reason.replace(str(path), name)
    return reason[:300]


def publish(tmp: Path, target: Path) -> Path:
    """Move the verified file into place in one step; an existing target is replaced only now."""
    os.replace(tmp, target)
    return target


@dataclass(frozen=True)
class StreamCheck:
    """What ffmpeg can read back from one stream of a file: packets (= frames for video) and end time."""

    packets: int
    end_s: float


def read_stream(ffmpeg: str, path: Path, stream: str) -> StreamCheck | None:
    """Demux one stream (`v:0` or `a:0`) to nothing and count it; None when the file has no such stream.

    ffmpeg rather than ffprobe, so this works with imageio-ffmpeg's bundled binary too. Raises
    `OutputError` when the file cannot be read to its end (e.g. "moov atom not found", a truncated file).
    """
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy", "-f", "null",
           "-progress", "pipe:1", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=die_with_parent())
    if "matches no streams" in proc.stderr:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0 or lines:  # any error line about a file we just wrote means it is damaged
        reason = (lines[-1] if lines else f"ffmpeg exited with status {proc.returncode}").replace(str(path), path.name)
        raise OutputError(f"the finished video does not read back: {reason[:300]}")
    values = dict(re.findall(r"^(\w+)=(.*)$", proc.stdout, flags=re.M))
    return StreamCheck(int(values.get("frame", "0")), max(0.0, int(values.get("out_time_us", "0")) / 1e6))


def verify_mp4(ffmpeg: str, path: Path, frames: int, fps: float, audio: bool) -> None:
    """The file holds exactly `frames` video frames, lasts frames/fps, and has its audio track when expected."""
    video = read_stream(ffmpeg, path, "v:0")
    if video is None or video.packets != frames:
        found = 0 if video is None else video.packets
        raise OutputError(f"the finished video holds {found} of its {frames} frames")
    if not audio:
        return
    sound = read_stream(ffmpeg, path, "a:0")
    if sound is None:
        raise OutputError("the finished video has no audio track")
    if sound.end_s < frames / fps - 0.25:  # AAC ends on a 1024-sample frame; a real cut is far larger
        raise OutputError(f"the finished video's audio stops at {sound.end_s:.2f} s of {frames / fps:.2f} s")


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.1f} MB"
