"""Run every metric on one generated clip and present the result: a table, a JSON dict, a PNG plot.

The landmark pass is shared: one provider call per frame feeds the mouth track (sync), the identity
embeddings (aligned on those landmarks) and the face boxes (subject vs. background motion).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fantasy.errors import UnsupportedAudio
from fantasy.face import FaceAnalyzer, FaceBox, LandmarkProvider, shared_analyzer
from fantasy.media.audio import SAMPLE_RATE, load_audio
from fantasy.metrics.dynamics import DynamicsResult, motion_dynamics
from fantasy.metrics.frames import read_video
from fantasy.metrics.identity import (
    EUCLIDEAN,
    BackendEmbedder,
    FaceEmbedder,
    IdentityResult,
    identity_similarity,
    sample_indices,
)
from fantasy.metrics.landmarks import TrackedLandmarks
from fantasy.metrics.sync import DEFAULT_MAX_LAG, SyncResult, mouth_track, speech_envelope, sync_score

IDENTITY_SAMPLES = 16


class ClipMetric(Protocol):
    """A metric that needs the whole clip and its speech, e.g. SyncNet's LSE-C/LSE-D when its weights exist.

    `frames` (N, H, W, 3) RGB uint8 at `fps`; `speech` mono float32 at 16 kHz. Returns named numbers,
    which the table prints and the JSON stores under `extra[name]`.
    """

    name: str

    def __call__(self, frames: np.ndarray, fps: float, speech: np.ndarray) -> dict[str, float]: ...


@dataclass
class EvalReport:
    video: str
    audio: str
    image: str | None
    frames: int
    fps: float
    width: int
    height: int
    speech_seconds: float
    frames_with_face: int
    sync: SyncResult | None
    identity: IdentityResult | None
    identity_reference: str
    dynamics: DynamicsResult
    mouth: list[float]  # per frame, NaN without a face
    envelope: list[float]  # per frame speech RMS
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # plugged-in ClipMetrics, by name
    seconds: float = 0.0
    face_backend: str = ""  # where the landmarks came from: "dlib", "face-alignment" or "custom"

    def to_dict(self) -> dict:
        """JSON-ready: NaN becomes null, the sync curve is kept for later plots."""
        out = asdict(self)
        if self.sync is not None:
            out["sync"]["at_window_edge"] = self.sync.at_window_edge
        return _json_safe(out)


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass(frozen=True)
class FaceTools:
    """What the metrics ask of a face backend: landmarks on the clip's frames and the portrait, and identity."""

    frames: LandmarkProvider  # stateful across one clip's frames (see `TrackedLandmarks`)
    portrait: LandmarkProvider
    embedder: FaceEmbedder
    backend: str


def default_face_tools(backend: str | None = None, device: str | None = None) -> FaceTools:
    """The default backend (dlib) or the one named: tracked on the frames, detected afresh on the portrait."""
    analyzer = FaceAnalyzer(backend, device=device)
    return FaceTools(TrackedLandmarks(analyzer), analyzer.landmarks, BackendEmbedder(analyzer), analyzer.name)


def _box(points: np.ndarray | None) -> FaceBox | None:
    return None if points is None else FaceBox.from_landmarks(points)


def _load_speech(video: Path, audio: Path | None) -> np.ndarray:
    if audio is not None:
        return load_audio(audio)
    try:
        return load_audio(video)
    except UnsupportedAudio as exc:
        raise UnsupportedAudio(f"{exc} Pass the speech the video should follow with --audio.") from None


def evaluate(
    video: str | Path,
    audio: str | Path | None = None,
    image: str | Path | None = None,
    *,
    landmarks_provider: LandmarkProvider | None = None,
    embedder: FaceEmbedder | None = None,
    max_lag: int = DEFAULT_MAX_LAG,
    identity_samples: int = IDENTITY_SAMPLES,
    face_backend: str | None = None,
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
    extra_metrics: Sequence[ClipMetric] = (),
) -> EvalReport:
    """Lip-sync proxy, identity similarity, subject/background dynamics and flicker for one clip.

    `audio` defaults to the video's own track; `image` (the portrait) to the first frame with a face.
    Landmarks and identity come from `face_backend` (default dlib; `device` is face-alignment's);
    `landmarks_provider` replaces the landmarks, `embedder` the identity embedding (default dlib's ResNet),
    `extra_metrics` add whole-clip metrics.
    """
    started = time.perf_counter()
    say = progress or (lambda message: None)
    video, audio = Path(video), Path(audio) if audio is not None else None
    clip = read_video(video)
    speech = _load_speech(video, audio)
    portrait = None
    if image is not None:
        from fantasy.media.image import load_portrait

        portrait = np.asarray(load_portrait(image))

    if landmarks_provider is None:
        tools = default_face_tools(face_backend, device)
        frame_provider, portrait_provider, backend = tools.frames, tools.portrait, tools.backend
        embedder = embedder or tools.embedder
    else:
        frame_provider = portrait_provider = landmarks_provider
        backend = "custom"
        embedder = embedder or BackendEmbedder(shared_analyzer("dlib"))

    say(f"landmarks on {clip.num_frames} frames")
    landmarks = [frame_provider(frame) for frame in clip.frames]
    found = sum(lm is not None for lm in landmarks)
    warnings: list[str] = []
    if found < clip.num_frames:
        warnings.append(f"no face found in {clip.num_frames - found} of {clip.num_frames} frames")

    say("lip sync")
    mouth = mouth_track(landmarks)
    envelope = speech_envelope(speech, SAMPLE_RATE, clip.fps, clip.num_frames)
    sync: SyncResult | None = None
    if found:
        sync = sync_score(mouth, envelope, max_lag=max_lag)
        if not math.isfinite(sync.score):
            warnings.append("lip sync undefined: the mouth does not move, the speech is flat, or too few frames show a face")
        elif sync.at_window_edge:
            warnings.append(
                f"best lip-sync lag is at the window edge ({sync.lag:+d} frames): the real offset may be larger; "
                f"re-run with a wider --max-lag"
            )
    video_seconds = clip.num_frames / clip.fps
    speech_seconds = speech.size / SAMPLE_RATE
    if abs(video_seconds - speech_seconds) > 0.5:
        warnings.append(f"video is {video_seconds:.2f} s but the speech is {speech_seconds:.2f} s")

    say("identity")
    identity, reference_note = _identity(clip.frames, landmarks, portrait, portrait_provider, embedder,
                                         identity_samples, warnings)

    say("motion and flicker")
    dynamics = motion_dynamics(clip.frames, [_box(lm) for lm in landmarks])

    extra = {}
    for metric in extra_metrics:
        say(metric.name)
        extra[metric.name] = {k: float(v) for k, v in metric(clip.frames, clip.fps, speech).items()}

    width, height = clip.size
    return EvalReport(
        video=str(video), audio=str(audio if audio is not None else video), image=str(image) if image else None,
        frames=clip.num_frames, fps=clip.fps, width=width, height=height, speech_seconds=speech_seconds,
        frames_with_face=found, sync=sync, identity=identity, identity_reference=reference_note,
        dynamics=dynamics, mouth=mouth.tolist(), envelope=envelope.tolist(), warnings=warnings,
        extra=extra, seconds=time.perf_counter() - started, face_backend=backend,
    )


def _identity(
    frames: np.ndarray,
    landmarks: list[np.ndarray | None],
    portrait: np.ndarray | None,
    provider: LandmarkProvider,
    embedder: FaceEmbedder,
    samples: int,
    warnings: list[str],
) -> tuple[IdentityResult | None, str]:
    """Identity vs. the portrait, or vs. the first frame with a face (then left out of the samples)."""
    if portrait is not None:
        ref_points = provider(portrait)
        if ref_points is None:
            warnings.append("no face found in the portrait: identity not measured")
            return None, "portrait (no face found)"
        reference, note, skip = portrait, "portrait", None
    else:
        first = next((i for i, lm in enumerate(landmarks) if lm is not None), None)
        if first is None:
            return None, "none (no face in the video)"
        reference, ref_points, note, skip = frames[first], landmarks[first], f"frame {first} (no portrait given)", first
    indices = [i for i in sample_indices(len(frames), samples) if i != skip]
    result = identity_similarity(reference, ref_points, frames, landmarks, indices, embedder)
    if result is None:
        warnings.append(f"no face in any of the {len(indices)} frames sampled for identity")
    return result, note


def lag_text(lag: int) -> str:
    """'0 frames', '+6 frames' (video late), '-2 frames' (video early)."""
    return f"{lag:+d} frames" if lag else "0 frames"


def _identity_text(i: IdentityResult, reference: str) -> str:
    """'worst 0.21 over 16 frames vs. portrait; 16/16 same person (< 0.6); lower = closer'."""
    worst = "max" if i.lower_is_better else "min"
    text = f"{worst} {_fmt(i.worst)} over {len(i.per_frame)} frames vs. {reference}"
    if i.threshold is not None:
        side = "<" if i.lower_is_better else ">"
        text += f"; {i.same_person}/{len(i.per_frame)} same person ({side} {i.threshold:g})"
    return text + ("; lower = closer" if i.lower_is_better else "; higher = closer")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_table(report: EvalReport) -> str:
    """A plain-text table for the terminal (values, then what they mean)."""
    rows: list[tuple[str, str, str]] = []
    s = report.sync
    if s is not None:
        lag = "n/a" if s.lag is None else f"{lag_text(s.lag)} ({'video late' if s.lag > 0 else 'video early' if s.lag < 0 else 'in sync'})"
        rows.append(("lip sync (peak xcorr)", _fmt(s.score), f"lag {lag}, searched ±{s.max_lag}"))
        rows.append(("lip sync at lag 0", _fmt(s.correlation_at_zero), "mouth opening vs. speech envelope"))
    else:
        rows.append(("lip sync (peak xcorr)", "n/a", "no face in the video"))
    i = report.identity
    label = "identity (distance)" if i is None or i.metric == EUCLIDEAN else f"identity ({i.metric})"
    if i is not None:
        rows.append((label, _fmt(i.mean), _identity_text(i, report.identity_reference)))
    else:
        rows.append((label, "n/a", report.identity_reference))
    d = report.dynamics
    rows.append(("subject dynamics", _fmt(d.subject, 2), "px/frame at 512 px, body box"))
    rows.append(("background dynamics", _fmt(d.background, 2), "px/frame at 512 px, outside the body box"))
    rows.append(("overall motion", _fmt(d.overall, 2), "px/frame at 512 px"))
    rows.append(("flicker", _fmt(d.flicker, 2), "mean |Δ luma| after motion compensation (0-255)"))
    rows.append(("faces found", f"{report.frames_with_face}/{report.frames}",
                 "frames with 68 landmarks" + (f" ({report.face_backend})" if report.face_backend else "")))
    for name, values in report.extra.items():
        rows += [(key, _fmt(value), name) for key, value in values.items()]
    head = (f"{Path(report.video).name}: {report.frames} frames, {report.width}x{report.height} @ "
            f"{report.fps:g} fps, speech {report.speech_seconds:.2f} s")
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [head, "-" * len(head)]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    if report.identity is not None:
        lines.append(f"identity embedder: {report.identity.embedder}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
