"""Training clips on disk, and one clip loaded as a fixed-size training sample.

A data folder holds, per clip `NAME`:
- `NAME.mp4` (or .mov/.mkv/.webm): the talking video;
- speech: `NAME.wav`/`.flac`/`.mp3` beside it, else the video's own audio track;
- optional `NAME.txt`: the prompt (default "A person is talking.");
- optional `NAME.landmarks.npy`: [frames, 68, 2] (x, y) landmarks in source-video pixels, one row per
  source frame (NaN rows: no face); without it a `LandmarkProvider` measures them.

Only the folder's top level is scanned. A sample is the clip's first `num_frames` frames at the
training frame rate (nearest source frame per training frame time), scaled to cover and centre-cropped
to width x height, with the speech of exactly that span. Unusable clips raise (see `load_sample`):
a dataset is fixed, not silently thinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fantasy.errors import (
    ClipTooShort,
    InputFileNotFound,
    InvalidSetting,
    TrainingDataError,
    UnsupportedAudio,
)
from fantasy.face import LandmarkProvider
from fantasy.media.audio import SAMPLE_RATE, check_speech, clip_samples, load_audio
from fantasy.metrics.frames import read_video
from fantasy.train.framing import Framing, frames_needed, sample_indices
from fantasy.train.tracks import default_provider, fill_missing, read_landmark_file, run_provider

CLIP_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm")
SPEECH_EXTENSIONS = (".wav", ".flac", ".mp3")
LANDMARKS_SUFFIX = ".landmarks.npy"
DEFAULT_PROMPT = "A person is talking."


@dataclass(frozen=True)
class SampleSpec:
    """Shape of every training sample: `num_frames` (4k+1) frames at `fps`, `width` x `height` px.

    Defaults are the release's clip: 81 frames at 23 fps; 512 px squares.
    """

    num_frames: int = 81
    fps: float = 23.0
    width: int = 512
    height: int = 512

    def __post_init__(self) -> None:
        if self.num_frames < 5 or (self.num_frames - 1) % 4:
            raise InvalidSetting(f"num_frames must be 4k+1 and at least 5 (Wan's causal VAE), got {self.num_frames}")
        if not self.fps > 0:
            raise InvalidSetting(f"fps must be positive, got {self.fps}")
        if self.width < 16 or self.height < 16 or self.width % 16 or self.height % 16:
            raise InvalidSetting(f"width and height must be positive multiples of 16, got {self.width}x{self.height}")

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps

    @property
    def num_samples(self) -> int:
        """16 kHz speech samples per sample, by the release's rule (`fantasy.media.audio.clip_samples`)."""
        return int(self.seconds * SAMPLE_RATE)


@dataclass(frozen=True)
class TrainingClip:
    """The files of one clip (speech None: the video's own audio track)."""

    name: str
    video: Path
    speech: Path | None = None
    prompt_file: Path | None = None
    landmarks_file: Path | None = None

    @property
    def prompt(self) -> str:
        if self.prompt_file is None:
            return DEFAULT_PROMPT
        text = self.prompt_file.read_text(encoding="utf-8").strip()
        if not text:
            raise TrainingDataError(f"Prompt file '{self.prompt_file.name}' is empty; write a prompt or delete it.")
        return text

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the sample is made from (for cache staleness checks)."""
        return tuple(p for p in (self.video, self.speech, self.prompt_file, self.landmarks_file) if p is not None)


@dataclass(frozen=True)
class TrainingSample:
    """One clip at training size. Landmarks are in sample pixels; `filled_frames` had no face and were interpolated."""

    name: str
    frames: np.ndarray  # (F, H, W, 3) uint8
    landmarks: np.ndarray  # (F, 68, 2) float64, (x, y)
    speech: np.ndarray  # (spec.num_samples,) float32, 16 kHz mono, zero-padded past the recording's end
    prompt: str
    fps: float
    filled_frames: int = 0


def discover_clips(data_dir: str | Path) -> list[TrainingClip]:
    """Every clip in `data_dir`, sorted by name. Raises on a missing/empty folder or ambiguous files."""
    root = Path(data_dir)
    if not root.exists():
        raise InputFileNotFound(f"Training data folder not found: {root}")
    if not root.is_dir():
        raise TrainingDataError(f"Training data must be a folder of clips, got a file: {root}")
    files = {p.name.lower(): p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")}
    videos: dict[str, Path] = {}
    for path in files.values():
        if path.suffix.lower() not in CLIP_EXTENSIONS:
            continue
        if path.stem in videos:
            raise TrainingDataError(
                f"Two videos for clip '{path.stem}' in {root}: {videos[path.stem].name} and {path.name}; keep one."
            )
        videos[path.stem] = path
    if not videos:
        raise TrainingDataError(
            f"No training clips in {root}: expected NAME.mp4 (or {', '.join(CLIP_EXTENSIONS[1:])}) files with "
            "speech in their audio track or in a NAME.wav/.flac/.mp3 beside them."
        )

    def sibling(stem: str, suffix: str) -> Path | None:
        return files.get((stem + suffix).lower())

    clips = []
    for stem in sorted(videos):
        speech = [p for s in SPEECH_EXTENSIONS if (p := sibling(stem, s)) is not None]
        if len(speech) > 1:
            raise TrainingDataError(
                f"Clip '{stem}' has several speech files ({', '.join(p.name for p in speech)}); keep one."
            )
        clips.append(TrainingClip(
            name=stem, video=videos[stem], speech=speech[0] if speech else None,
            prompt_file=sibling(stem, ".txt"), landmarks_file=sibling(stem, LANDMARKS_SUFFIX),
        ))
    return clips


def load_speech(clip: TrainingClip, spec: SampleSpec) -> np.ndarray:
    """The clip's speech for the sample's span, cut or zero-padded to exactly `spec.num_samples`."""
    source = clip.speech or clip.video
    try:
        samples = load_audio(source)
    except UnsupportedAudio as exc:
        if clip.speech is not None:
            raise
        raise TrainingDataError(
            f"Training clip '{clip.video.name}' has no usable speech: {exc} Put its speech in "
            f"{clip.name}.wav (or .flac/.mp3) beside it, or mux it into the video."
        ) from None
    segment = clip_samples(samples, spec.num_frames, spec.fps)
    check_speech(segment, name=f"{source.name} (first {spec.seconds:.2f} s)")
    return np.pad(segment, (0, spec.num_samples - segment.size)).astype(np.float32)


def load_sample(
    clip: TrainingClip, spec: SampleSpec, landmarks: LandmarkProvider | None = None
) -> TrainingSample:
    """Load `clip` as a sample of `spec`, or raise a `FantasyError` naming the clip.

    Raises `ClipTooShort` when the video lasts less than `spec.seconds` (the trainer gets an error,
    not a skipped clip: cut or drop the file), `TrainingDataError` without speech, `NoFaceFound` when
    no frame shows a face. `landmarks` (default: the face backend, dlib, via `TrackedLandmarks`) is only
    used without a `.landmarks.npy`, runs on the sample's frames in order, and must not carry state from
    another clip.
    """
    video = read_video(clip.video, max_seconds=spec.seconds)
    needed = frames_needed(video.fps, spec.fps, spec.num_frames)
    if video.num_frames < needed:
        raise ClipTooShort(
            f"Training clip '{clip.video.name}' lasts {video.num_frames / video.fps:.2f} s "
            f"({video.num_frames} frames at {video.fps:g} fps); a sample needs {spec.seconds:.2f} s "
            f"({spec.num_frames} frames at {spec.fps:g} fps). Remove it or use a longer clip."
        )
    speech = load_speech(clip, spec)
    indices = sample_indices(video.num_frames, video.fps, spec.fps, spec.num_frames)
    width, height = video.size
    framing = Framing(width, height, spec.width, spec.height)
    frames = np.stack([framing.frame(video.frames[i]) for i in indices])
    if clip.landmarks_file is not None:
        source_points = read_landmark_file(clip.landmarks_file, int(indices[-1]) + 1)
        points = framing.points(source_points[indices])
    else:
        points = run_provider(frames, landmarks or default_provider())
    points, filled = fill_missing(points, clip.video.name)
    return TrainingSample(
        name=clip.name, frames=frames, landmarks=points, speech=speech, prompt=clip.prompt,
        fps=spec.fps, filled_frames=filled,
    )
