"""Helpers for the fault-injection tests: real small file systems (a full disk, a read-only one), long
uploads that cost little to make, files that only pretend to be huge, and the processes a run leaves.

Mounting needs root (CI runs as root). Where it is impossible the tests that need it are skipped with the
reason; nothing here fakes a file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
import torch

from fantasy.media.audio import ffmpeg_executable
from tests.conftest import speech_like

HOURS_2 = 7200


@contextlib.contextmanager
def tmpfs(where: Path, size_kb: int, read_only: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of `size_kb` KiB on `where` (created) for the block; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size_kb}k,mode=0777" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); CI runs as root and can")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file in `folder` until the file system has no room left; returns it."""
    filler = folder / "filler.bin"
    with filler.open("wb", buffering=0) as out:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    out.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


def ffmpeg_children(pid: int) -> list[int]:
    """Live ffmpeg processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if name == "ffmpeg" and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def long_upload(folder: Path, suffix: str, codec: list[str], seconds: int = HOURS_2) -> Path:
    """Hours of speech as a small file: 10 s encoded once, then its packets repeated (no re-encoding)."""
    clip = folder / "speech-10s.wav"
    if not clip.exists():
        soundfile.write(clip, speech_like(10.0), 16_000)
    once, long = folder / f"once{suffix}", folder / f"speech-{seconds}s{suffix}"
    ffmpeg = ffmpeg_executable()
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip), *codec, str(once)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-y", "-stream_loop", str(seconds // 10 - 1), "-i", str(once),
                    "-c", "copy", str(long)], check=True)
    return long


def long_opus(folder: Path) -> Path:
    """The issue's case: a 2-hour Opus file of about 10 MB (12 kbit/s mono)."""
    return long_upload(folder, ".opus", ["-c:a", "libopus", "-b:a", "12k"])


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares `width` x `height` but holds almost no data: only a header check can refuse it
    cleanly (decoding would fail on the missing rows, or first allocate the whole image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def peak_rss_growth_mb(action) -> float:
    """How far this process's peak RSS rises above its current RSS while `action()` runs (Linux: the peak
    is reset through /proc/self/clear_refs first)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here ({exc}); Linux >= 4.0 can")
    before = _status_kb("VmRSS")
    action()
    return (_status_kb("VmHWM") - before) / 1024


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


class GatedPipe:
    """The tiny pipeline; its first run waits after its first denoising step until `release` is set."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.reached, self.release = threading.Event(), threading.Event()
        self.runs = self.steps = 0

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, callback_on_step_end=None, **kwargs):
        self.runs += 1
        first_run = self.runs == 1

        def on_step(pipe, step: int, timestep, tensors: dict) -> dict:
            self.steps += 1
            if first_run and pipe.window_index == 0 and step == 0:
                self.reached.set()
                assert self.release.wait(300), "the test never released the gate"
            if callback_on_step_end is None:
                return {}
            return callback_on_step_end(pipe, step, timestep, tensors)  # where a stopped run raises

        return self._pipe(*args, callback_on_step_end=on_step, **kwargs)


@contextlib.contextmanager
def model_work(pipe) -> Iterator[list[str]]:
    """The names of the pipeline's models (transformer, VAE, encoders...) that ran any layer in the block.

    Every layer is watched, not only the model's own `forward`: the VAE, for one, works through `decode`."""
    ran: list[str] = []
    handles = [layer.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
               for name, model in pipe.components.items() if isinstance(model, torch.nn.Module)
               for layer in model.modules()]
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


def ffmpeg_script(folder: Path, body: str) -> str:
    """A bash script `folder/ffmpeg` standing in for ffmpeg: `body` runs with ffmpeg's arguments ("${@: -1}" is
    the output file). Returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ffmpeg"
    script.write_text(f"#!/bin/bash\n{body}\n")
    script.chmod(0o755)
    return str(script)
