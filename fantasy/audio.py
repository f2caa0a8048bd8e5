"""Speech in: any common audio or video file -> mono 16 kHz samples -> wav2vec2 features.

Decoding matches `librosa.load(path, sr=16000)` used by the official release (channel mean, then
soxr "HQ" resampling) without pulling librosa and numba in. Containers libsndfile cannot read
(m4a/aac, a video's audio track) are decoded by ffmpeg first, at their native rate, so every
format goes through the same mixing and resampling.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from fantasy.errors import AudioTooShort, InputFileNotFound, SilentAudio, UnsupportedAudio

SAMPLE_RATE = 16_000
MIN_DURATION_S = 0.2
# Peak below -60 dBFS: nothing a person would call speech; wav2vec2 would only see normalised noise.
SILENCE_PEAK = 1e-3
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def ffmpeg_executable() -> str:
    """System ffmpeg when present (Gradio needs it anyway), else the binary bundled with imageio-ffmpeg."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any container to float32 PCM at its native rate and channels."""
    with tempfile.TemporaryDirectory(prefix="fantasy-audio-") as tmp:
        wav = Path(tmp) / "decoded.wav"
        cmd = [ffmpeg_executable(), "-nostdin", "-v", "error", "-y", "-i", str(path),
               "-map", "0:a:0", "-vn", "-acodec", "pcm_f32le", str(wav)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wav.exists():
            detail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown decoder error"
            if "matches no streams" in proc.stderr or "does not contain any stream" in proc.stderr:
                raise UnsupportedAudio(f"'{path.name}' has no audio track: upload a speech recording.")
            raise UnsupportedAudio(
                f"Could not read '{path.name}' as audio ({detail}). "
                f"Use a speech file in one of: {', '.join(e[1:] for e in AUDIO_EXTENSIONS)}, "
                "or a video with an audio track."
            )
        data, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
    return data, rate


def _read_any(path: Path) -> tuple[np.ndarray, int]:
    try:
        return soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return _decode_with_ffmpeg(path)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read speech from `path` as float32 mono at `sample_rate`, or raise a clear `FantasyError`.

    Rejects missing files, undecodable files, speech shorter than 0.2 s and silent tracks, so that
    nothing downstream ever animates noise without telling the user.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFound(f"Speech file not found: {path}")
    data, rate = _read_any(path)
    if data.size == 0:
        raise AudioTooShort(f"'{path.name}' contains no audio samples.")
    mono = resample_like_librosa(data.mean(axis=1, dtype=np.float32), rate, sample_rate)
    check_speech(mono, sample_rate, name=path.name)
    return mono


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
