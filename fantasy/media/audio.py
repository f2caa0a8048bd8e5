"""Speech in: any common audio or video file -> mono 16 kHz samples -> wav2vec2 features.

Decoding matches `librosa.load(path, sr=16000)` used by the official release (channel mean, then
soxr "HQ" resampling) without pulling librosa and numba in. Containers libsndfile cannot read
(m4a/aac, a video's audio track) are decoded by ffmpeg first, at their native rate and into a pipe, so every
format goes through the same mixing and resampling. Every decode is checked against the file's header: one
that ends early (a cut-off upload) is refused, never animated shorter.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from fantasy.errors import AudioTooShort, InputFileNotFound, SilentAudio, UnsupportedAudio
from fantasy.media.tethered import die_with_parent

SAMPLE_RATE = 16_000
MIN_DURATION_S = 0.2
# Peak below -60 dBFS: nothing a person would call speech; wav2vec2 would only see normalised noise.
SILENCE_PEAK = 1e-3
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
# Decoded past a duration limit: covers the frame rule's extra frames (5/fps, 0.625 s at 8 fps) and the
# resampler's filter, so the samples that are used equal those of a whole decode.
DECODE_MARGIN_S = 1.0
# A decode may fall short of its header's duration by this much (codec priming and padding, a duration stated to
# 0.01 s: WMA decodes 0.05 s short of it); more means the file ends early (`check_complete`).
SHORT_DECODE_S = 0.1
SHORT_DECODE_SHARE = 0.01


def ffmpeg_executable() -> str:
    """System ffmpeg when present (Gradio needs it anyway), else the binary bundled with imageio-ffmpeg."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _decode_with_ffmpeg(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int, float | None]:
    """Decode the first audio stream of any container to float32 PCM at its native rate and channels.

    ffmpeg writes a WAV stream to a pipe, not a file: a full temporary folder cannot cut the speech short
    (a file in it did: ffmpeg exited 0 with the samples that fitted). With `max_seconds`, ffmpeg stops
    reading there (`-t`). Returns (samples, rate, the audio's duration from the container's header when it
    states one that is the audio's: not when a video stream sets it or ffmpeg estimates it from the bitrate).
    """
    limit = [] if max_seconds is None else ["-t", f"{max_seconds:.3f}"]
    cmd = [ffmpeg_executable(), "-nostdin", "-hide_banner", "-nostats", "-v", "info", *limit,
           "-i", str(path), "-map", "0:a:0", "-vn", "-acodec", "pcm_f32le", "-f", "wav", "-"]
    proc = subprocess.run(cmd, capture_output=True, preexec_fn=die_with_parent())
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode < 0:  # killed (out of memory, a signal): nothing to do with the file's format
        raise UnsupportedAudio(f"decoding '{path.name}' was stopped by signal {-proc.returncode}: try again")
    if proc.returncode != 0 or not proc.stdout:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        detail = (lines[-1] if lines else "unknown decoder error").replace(str(path), path.name)
        if "matches no streams" in stderr or "does not contain any stream" in stderr:
            raise UnsupportedAudio(f"'{path.name}' has no audio track: upload a speech recording.")
        raise UnsupportedAudio(
            f"Could not read '{path.name}' as audio ({detail}). "
            f"Use a speech file in one of: {', '.join(e[1:] for e in AUDIO_EXTENSIONS)}, "
            "or a video with an audio track."
        )
    with soundfile.SoundFile(io.BytesIO(proc.stdout)) as sound:
        data, rate = sound.read(dtype="float32", always_2d=True), sound.samplerate
    return data, rate, stated_audio_duration(stderr)


def stated_audio_duration(ffmpeg_log: str) -> float | None:
    """The input's duration from ffmpeg's description of it, where that is the audio's own: None when ffmpeg
    says it estimated it from the bitrate, or when a video stream (not a cover picture) may set it."""
    stated = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", ffmpeg_log)
    video = [line for line in ffmpeg_log.splitlines() if "Video:" in line and "(attached pic)" not in line]
    if stated is None or video or "Estimating duration from bitrate" in ffmpeg_log:
        return None
    return int(stated[1]) * 3600 + int(stated[2]) * 60 + float(stated[3])


def wav_header_frames(path: Path) -> int | None:
    """Frames a WAV file's header says its data chunk holds (libsndfile counts what the file holds instead,
    so a cut-off WAV reads as a shorter one). None: not a WAV, or a streamed one that states no size."""
    with path.open("rb") as file:
        head = file.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while chunk := file.read(8):
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                block_align = int.from_bytes(file.read(size)[12:14], "little")
                file.seek(size % 2, 1)
            elif kind == b"data":
                unknown = size in (0, 0xFFFFFFFF) or not block_align
                return None if unknown else size // block_align
            else:
                file.seek(size + size % 2, 1)
    return None


def _read_any(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int, float | None]:
    """(samples [n, channels], rate, whole duration if known): libsndfile streams, stopping at `max_seconds`.

    Every decode is checked against the file's header (`check_complete`): a file that ends before its header
    says is refused, not animated shorter.
    """
    try:
        with soundfile.SoundFile(str(path)) as sound:
            frames = -1 if max_seconds is None else math.ceil(max_seconds * sound.samplerate)
            data = sound.read(frames=frames, dtype="float32", always_2d=True)
            rate, stated_frames, wav = sound.samplerate, sound.frames, sound.format == "WAV"
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        data, rate, stated = _decode_with_ffmpeg(path, max_seconds)
        check_complete(path.name, len(data) / rate, stated, max_seconds)
        return data, rate, stated
    header = wav_header_frames(path) if wav else None
    stated = (max(header, stated_frames) if header else stated_frames) / rate if stated_frames > 0 else None
    check_complete(path.name, len(data) / rate, stated, max_seconds)
    return data, rate, stated


def check_complete(name: str, decoded_s: float, stated_s: float | None, max_seconds: float | None) -> None:
    """Refuse a decode that stops short of what the header states (up to `max_seconds`).

    Allowed: 0.1 s plus 1 % (codec priming and padding; a container states its duration to 0.01 s).
    """
    if stated_s is None:
        return
    expected = stated_s if max_seconds is None else min(stated_s, max_seconds)
    if decoded_s < expected - SHORT_DECODE_S - SHORT_DECODE_SHARE * expected:
        raise UnsupportedAudio(
            f"'{name}' ends after {decoded_s:.2f} s although its header says {stated_s:.2f} s: the file is damaged "
            "or incomplete (an interrupted upload or copy?); use the whole file."
        )


@dataclass(frozen=True)
class Speech:
    """Decoded speech: mono float32 samples, and how long the whole file is."""

    samples: np.ndarray
    duration_s: float  # the whole track; longer than len(samples) when decoding stopped at the limit


def load_speech(path: str | Path, max_seconds: float | None = None, sample_rate: int = SAMPLE_RATE) -> Speech:
    """Read speech from `path` as float32 mono at `sample_rate`, or raise a clear `FantasyError`.

    With `max_seconds`, at most that much plus `DECODE_MARGIN_S` is decoded, so memory and time grow
    with the limit, not with the file (a 2-hour upload costs what a few seconds do); the samples up to
    the limit are the ones a whole decode gives. Rejects missing files, undecodable files, speech
    shorter than 0.2 s and silent tracks, so that nothing downstream ever animates noise without telling
    the user.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"Speech file not found: {path}")
    bound = None if max_seconds is None else max_seconds + DECODE_MARGIN_S
    data, rate, stated = _read_any(path, bound)
    if data.size == 0:
        raise AudioTooShort(f"'{path.name}' contains no audio samples.")
    mono = resample_like_librosa(data.mean(axis=1, dtype=np.float32), rate, sample_rate)
    check_speech(mono, sample_rate, name=path.name)
    decoded = len(mono) / sample_rate
    stopped_early = bound is not None and len(data) >= (bound - 0.05) * rate
    duration = max(decoded, stated or 0.0) if stopped_early else decoded
    return Speech(mono, duration)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole track as float32 mono at `sample_rate` (see `load_speech`, which can stop at a limit)."""
    return load_speech(path, None, sample_rate).samples


def resample_like_librosa(samples: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`librosa.resample(res_type="soxr_hq", fix=True)`: soxr HQ, then exactly `ceil(n * sr_out / sr_in)` samples.

    soxr alone can return a sample fewer (44,101 samples at 44.1 kHz -> 16,000, librosa 16,001); librosa
    zero-pads or trims to its length (`fix_length`), computed with its float ratio as here.
    """
    if rate == sample_rate:
        return samples.astype(np.float32, copy=False)
    length = int(np.ceil(samples.shape[-1] * (float(sample_rate) / rate)))
    out = soxr.resample(samples, rate, sample_rate, quality="HQ").astype(np.float32)
    if len(out) >= length:
        return out[:length]
    return np.pad(out, (0, length - len(out)))


def check_speech(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, name: str = "the speech") -> None:
    """Raise if the track is too short or silent to drive lip motion."""
    duration = len(samples) / sample_rate
    if duration < MIN_DURATION_S:
        raise AudioTooShort(
            f"'{name}' is {duration:.2f} s long; at least {MIN_DURATION_S} s of speech is needed."
        )
    if not np.isfinite(samples).all():
        raise UnsupportedAudio(f"'{name}' contains invalid (NaN/inf) samples.")
    if float(np.abs(samples).max()) < SILENCE_PEAK:
        raise SilentAudio(
            f"'{name}' is silent (peak level below -60 dBFS): upload a recording with audible speech."
        )


def frame_count(duration_s: float, fps: float, max_frames: int) -> int:
    """Official frame rule: `min(int(fps*duration // 4)*4 + 5, max_frames)`, always 4k+1.

    It gives slightly more video than audio (the tail is silent); audio past `max_frames/fps` is not used.
    `max_frames` itself must be 4k+1 so the min keeps the Wan VAE's 4k+1 frame structure.
    """
    if max_frames < 5 or (max_frames - 1) % 4 != 0:
        raise ValueError(f"max_frames must be 4k+1 and at least 5, got {max_frames}")
    return min(int(fps * duration_s // 4) * 4 + 5, max_frames)


def clip_samples(samples: np.ndarray, num_frames: int, fps: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The part of the speech that drives `num_frames` frames: `[0, int(num_frames/fps * sr))`, as released."""
    return samples[: int(num_frames / fps * sample_rate)]


@torch.no_grad()
def speech_features(model: torch.nn.Module, feature_extractor, samples: np.ndarray) -> torch.Tensor:
    """wav2vec2 `last_hidden_state` [1, L, hidden] (50 Hz) of 16 kHz samples, in float32.

    The feature extractor's zero-mean/unit-variance normalisation is part of the reference path.
    """
    inputs = feature_extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
    param = next(model.parameters())
    return model(inputs.to(device=param.device, dtype=param.dtype)).last_hidden_state.float()


def feature_length(model: torch.nn.Module, num_samples: int) -> int:
    """wav2vec2 tokens for `num_samples` from its conv strides (175 for 81 frames at 23 fps)."""
    return int(model._get_feat_extract_output_lengths(torch.tensor(num_samples)))
