"""Talking clips the tests draw themselves: speech-like audio and a face whose mouth follows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from fantasy.media.video import Mp4Writer
from tests.synthetic_faces import FaceStyle, draw_face

SR = 16_000
FPS = 25
SIZE = 160


def syllable_envelope(num_frames: int, seed: int = 0) -> np.ndarray:
    """Per-frame loudness in [0, 1]: syllables of 3-7 frames separated by short pauses, like speech."""
    rng = np.random.default_rng(seed)
    env = np.zeros(num_frames)
    t = 0
    while t < num_frames:
        length = int(rng.integers(3, 8))
        peak = rng.uniform(0.35, 1.0)
        bump = peak * np.sin(np.linspace(0, np.pi, length + 2)[1:-1])
        env[t : t + length] = bump[: num_frames - t]
        t += length + int(rng.integers(1, 4))
    return env / env.max()


def speech_samples(envelope: np.ndarray, fps: float = FPS, seed: int = 0) -> np.ndarray:
    """A voiced buzz (140 Hz harmonics) whose amplitude follows `envelope` frame by frame, at 16 kHz."""
    n = int(round(len(envelope) * SR / fps))
    t = np.arange(n) / SR
    frame_pos = t * fps - 0.5  # envelope values sit at frame centres
    amplitude = np.interp(frame_pos, np.arange(len(envelope)), envelope)
    carrier = sum(np.sin(2 * np.pi * 140 * k * t + k) / k for k in range(1, 6))
    rng = np.random.default_rng(seed)
    noise = 0.01 * rng.standard_normal(n)
    return (0.3 * amplitude * carrier / 2.3 + noise).astype(np.float32)


def talking_frames(
    openings: np.ndarray,
    style: FaceStyle | None = None,
    size: int = SIZE,
    head_motion: float = 0.0,
    face_size: float | None = None,
) -> np.ndarray:
    """One drawn face per opening value; `head_motion` sways the head sideways by that many px."""
    frames = []
    for i, o in enumerate(openings):
        dx = head_motion * np.sin(2 * np.pi * i / 20.0)
        frame, _ = draw_face(size, size, float(o), center=(size / 2 + dx, size / 2), size=face_size, style=style or FaceStyle())
        frames.append(frame)
    return np.stack(frames)


def write_wav(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(str(path), samples, SR)
    return path


def write_mp4(path: Path, frames: np.ndarray, fps: float = FPS, audio: Path | None = None) -> Path:
    with Mp4Writer(path, fps, frames.shape[2], frames.shape[1], audio_path=audio) as writer:
        writer.write(frames)
    return path
