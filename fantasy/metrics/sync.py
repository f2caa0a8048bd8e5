"""Lip-sync proxy: does the mouth open when the speech is loud, and how many frames late?

Three pieces, all at the video's frame rate:
- the speech envelope (RMS of the samples each frame is on screen for),
- the mouth-opening track from 68-point landmarks (inner-lip gap 62-66 over mouth width 48-54,
  so it does not change with face size or distance),
- their normalised cross-correlation over a window of lags; the peak is the score, its lag the offset.

This is a proxy for SyncNet's Sync-C/Sync-D, whose weights we cannot ship (see docs/metrics.md).

Lag sign convention: a positive lag means the video lags the audio (the mouth moves `lag` frames
after the sound); negative means the mouth moves early. At lag L we correlate mouth[t] with
envelope[t - L].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from fantasy.face import LandmarkProvider

DEFAULT_MAX_LAG = 5
MIN_OVERLAP = 8  # fewer valid frame pairs than this and a correlation means nothing


def speech_envelope(samples: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
    """RMS of the speech while each video frame is shown: frame i covers [i/fps, (i+1)/fps).

    Frames past the end of the audio get 0 (silence), so the envelope always has `num_frames` values.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
    squares = np.concatenate([[0.0], np.cumsum(samples * samples)])
    start = np.clip(edges[:-1], 0, samples.size)
    stop = np.clip(edges[1:], 0, samples.size)
    count = stop - start
    energy = squares[stop] - squares[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.sqrt(np.maximum(energy, 0.0) / count)
    return np.where(count > 0, rms, 0.0)


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap |p62 - p66| divided by mouth width |p48 - p54| (0 = closed)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    width = float(np.linalg.norm(pts[48, :2] - pts[54, :2]))
    if width <= 1e-6:
        return float("nan")
    return float(np.linalg.norm(pts[62, :2] - pts[66, :2])) / width


def mouth_track(landmarks: Iterable[np.ndarray | None]) -> np.ndarray:
    """Mouth opening per frame; NaN where no face was found (such frames are left out of the correlation)."""
    return np.array([np.nan if lm is None else mouth_opening(lm) for lm in landmarks], dtype=np.float64)


def landmarks_per_frame(frames: Iterable[np.ndarray], provider: LandmarkProvider) -> list[np.ndarray | None]:
    """Run the landmark provider on each frame (kept so sync, identity and dynamics share one pass)."""
    return [provider(frame) for frame in frames]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    valid = np.isfinite(a) & np.isfinite(b)
    if valid.sum() < MIN_OVERLAP:
        return float("nan")
    a, b = a[valid] - a[valid].mean(), b[valid] - b[valid].mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if denom <= 1e-12:
        return float("nan")  # one side does not vary: correlation is undefined, not zero
    return float((a * b).sum() / denom)


def lagged_correlation(video: np.ndarray, audio: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of video[t] with audio[t - L] for L in [-max_lag, max_lag], over the overlap."""
    video, audio = np.asarray(video, dtype=np.float64), np.asarray(audio, dtype=np.float64)
    n = min(video.size, audio.size)
    video, audio = video[:n], audio[:n]
    lags = np.arange(-max_lag, max_lag + 1)
    values = np.empty(lags.size)
    for i, lag in enumerate(lags):
        if abs(lag) >= n:
            values[i] = np.nan
        elif lag >= 0:
            values[i] = _pearson(video[lag:], audio[: n - lag])
        else:
            values[i] = _pearson(video[: n + lag], audio[-lag:])
    return lags, values


@dataclass(frozen=True)
class SyncResult:
    """Peak correlation within the lag window, where it is, and the whole curve for plots/JSON."""

    score: float  # peak normalised cross-correlation in [-1, 1]; NaN when undefined
    lag: int | None  # frames; positive = video lags audio
    max_lag: int
    correlation_at_zero: float
    lags: tuple[int, ...]
    curve: tuple[float, ...]

    @property
    def at_window_edge(self) -> bool:
        """The best lag is the window's limit: the true offset may lie outside; widen `max_lag`."""
        return self.lag is not None and self.max_lag > 0 and abs(self.lag) == self.max_lag


def sync_score(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = DEFAULT_MAX_LAG) -> SyncResult:
    """Peak normalised cross-correlation between mouth opening and speech envelope within ±`max_lag`.

    Ties go to the smallest |lag| (a perfectly periodic signal should not report a spurious offset).
    """
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    lags, curve = lagged_correlation(mouth, envelope, max_lag)
    zero = float(curve[max_lag]) if curve.size > max_lag else float("nan")
    if not np.isfinite(curve).any():
        return SyncResult(float("nan"), None, max_lag, zero, tuple(int(v) for v in lags), tuple(curve.tolist()))
    best = np.nanmax(curve)
    candidates = lags[np.isclose(curve, best, rtol=0, atol=1e-9)]
    lag = int(candidates[np.argmin(np.abs(candidates))])
    return SyncResult(float(best), lag, max_lag, zero, tuple(int(v) for v in lags), tuple(curve.tolist()))
