"""Synthetic talking clips with known ground truth, deterministic by seed, in the layout `fantasy train` reads.

A clip = a real photo (`fantasy.train.portraits`: a photo, a morph or a mirror image, framed at random)
+ a sentence spoken by espeak-ng (`fantasy.train.espeak`, random voice, rate and pitch) whose phonemes
drive the mouth (`fantasy.train.visemes`), plus blinks every 2-4.5 s and slow head motion
(`fantasy.train.face_warp`). The speech starts after 0.2 s of silence, so frame 0 is the neutral portrait
(as a user's photo is); each clip gets one colour gain per channel (±7 %). Expression level scales the
mouth, head level the motion, so the motion labels of `fantasy.train.labels` get a real spread.

Files per clip NAME (`fantasy.train.clips`): NAME.mp4 (no audio track), NAME.wav (16 kHz), NAME.txt (the
prompt), NAME.landmarks.npy ([frames, 68, 2], the warped points, so caching runs no face detector) and
NAME.truth.json (the recipe, the phonemes with times, and per frame the opening, spread, blink and head pose).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fantasy.errors import InvalidSetting
from fantasy.train.espeak import SAMPLE_RATE, Utterance, synthesise
from fantasy.train.face_warp import FaceGeometry, Pose, render
from fantasy.train.portraits import PHOTOS, Face, flipped, frame_face, morph, photo
from fantasy.train.sentences import sentence
from fantasy.train.visemes import frame_visemes

LEAD_SILENCE_S = 0.2
TAIL_SILENCE_S = 0.15
COLOUR_JITTER = 0.07
VOICES = ("en-us", "en", "en+f2", "en-us+f3", "en+m3", "en-029", "en-gb-x-rp")
HELD_OUT_VOICE = "en-gb-scotland"  # never drawn by `draw_recipe` unless asked: held-out speech
PROMPT = "A person is talking."
SUPERSAMPLE = 2  # warps are drawn at twice the size, then reduced: smooth lip edges at 128 px


@dataclass(frozen=True)
class ClipRecipe:
    """Everything a clip is made from; `render_clip(recipe)` always gives the same clip."""

    seed: int
    photos: tuple[str, ...]  # one photo, or two for a morph
    alpha: float  # morph position (0 = photos[0])
    flip: bool
    face_fraction: float
    offset: tuple[float, float]
    colour: tuple[float, float, float]
    text: str
    voice: str
    words_per_minute: int
    pitch: int
    expression: float  # mouth opening scale
    head: float  # head motion scale
    size: int = 128
    fps: float = 23.0


@dataclass
class SyntheticClip:
    """A rendered clip and its ground truth (per frame: opening, spread, blink, head angle/scale/shift)."""

    recipe: ClipRecipe
    frames: np.ndarray  # (F, size, size, 3) uint8
    landmarks: np.ndarray  # (F, 68, 2) float32
    speech: np.ndarray  # 16 kHz float32, starts with LEAD_SILENCE_S of silence
    phonemes: list[tuple[str, float]]  # (espeak mnemonic, start in s of `speech`)
    truth: dict[str, np.ndarray] = field(default_factory=dict)


def draw_recipe(seed: int, size: int = 128, photos: tuple[str, ...] = tuple(PHOTOS), voices: tuple[str, ...] = VOICES,
                morph_share: float = 0.4, fps: float = 23.0) -> ClipRecipe:
    """A random recipe from `seed`: which face (a morph of two `photos` in `morph_share` of clips), framing,
    colour, sentence, voice, and expression/head levels."""
    if not photos:
        raise InvalidSetting("at least one training photo is needed")
    rng = np.random.default_rng(seed)
    if len(photos) >= 2 and rng.random() < morph_share:
        pair = tuple(str(p) for p in rng.choice(photos, size=2, replace=False))
        alpha = float(rng.uniform(0.25, 0.75))
    else:
        pair, alpha = (str(rng.choice(photos)),), 0.0
    return ClipRecipe(
        seed=seed, photos=pair, alpha=round(alpha, 3), flip=bool(rng.random() < 0.5),
        face_fraction=round(float(rng.uniform(0.45, 0.65)), 3),
        offset=(round(float(rng.uniform(-0.05, 0.05)), 3), round(float(rng.uniform(-0.05, 0.05)), 3)),
        colour=tuple(round(float(v), 3) for v in 1 + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3)),
        text=sentence(rng), voice=str(rng.choice(voices)), words_per_minute=int(rng.integers(130, 186)),
        pitch=int(rng.integers(35, 71)), expression=round(float(rng.uniform(0.6, 1.3)), 3),
        head=round(float(rng.uniform(0.0, 1.2)), 3), size=size, fps=fps,
    )


def _face(recipe: ClipRecipe) -> Face:
    face = photo(recipe.photos[0]) if len(recipe.photos) == 1 else morph(
        photo(recipe.photos[0]), photo(recipe.photos[1]), recipe.alpha)
    return flipped(face) if recipe.flip else face


def _blinks(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame: a blink (0 -> 1 -> 0 over ~0.2 s) every 2-4.5 s."""
    closure = np.zeros(num_frames)
    t = rng.uniform(0.6, 2.5)
    shape = np.array([0.35, 0.8, 1.0, 0.7, 0.3])
    while t * fps < num_frames:
        start = int(t * fps)
        stop = min(num_frames, start + shape.size)
        closure[start:stop] = np.maximum(closure[start:stop], shape[: stop - start])
        t += rng.uniform(2.0, 4.5)
    return closure


def _head_motion(num_frames: int, fps: float, level: float, face_size: float, rng: np.random.Generator) -> np.ndarray:
    """[F, 4] (angle °, scale, shift x, shift y px): sums of slow sinusoids (0.1-0.5 Hz)."""
    t = np.arange(num_frames) / fps
    out = np.zeros((num_frames, 4))
    for column, amplitude in enumerate((3.0, 0.025, 0.05 * face_size, 0.05 * face_size)):
        freqs, phases = rng.uniform(0.1, 0.5, 2), rng.uniform(0, 2 * np.pi, 2)
        wave = sum(np.sin(2 * np.pi * f * t + p) - np.sin(p) for f, p in zip(freqs, phases, strict=True)) / 2
        out[:, column] = level * amplitude * np.clip(wave, -1, 1)
    out[:, 1] += 1.0
    return out


def speak(recipe: ClipRecipe) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """The recipe's speech with its lead and tail silence, and its phonemes (times in that speech)."""
    utterance: Utterance = synthesise(recipe.text, recipe.voice, recipe.words_per_minute, recipe.pitch)
    lead, tail = int(LEAD_SILENCE_S * SAMPLE_RATE), int(TAIL_SILENCE_S * SAMPLE_RATE)
    speech = np.concatenate([np.zeros(lead, np.float32), utterance.samples, np.zeros(tail, np.float32)])
    return speech, [(p.name, p.start + LEAD_SILENCE_S) for p in utterance.phonemes]


def render_clip(recipe: ClipRecipe, min_frames: int = 0) -> SyntheticClip:
    """Render `recipe` (at least `min_frames` frames; the speech is padded with silence to match)."""
    from fantasy.train.espeak import Phoneme

    speech, phonemes = speak(recipe)
    num_frames = max(min_frames, int(np.ceil(speech.size / SAMPLE_RATE * recipe.fps)))
    total = int(round(num_frames / recipe.fps * SAMPLE_RATE))
    speech = np.pad(speech, (0, max(0, total - speech.size)))
    visemes = frame_visemes([Phoneme(n, s) for n, s in phonemes], speech.size / SAMPLE_RATE, recipe.fps, num_frames)
    rng = np.random.default_rng([recipe.seed, 1])
    big = recipe.size * SUPERSAMPLE
    face = frame_face(_face(recipe), big, recipe.face_fraction, recipe.offset)
    geometry = FaceGeometry(face.landmarks, face.mouth_shift)
    face_size = float(np.ptp(face.landmarks[:, 0]))
    blinks = _blinks(num_frames, recipe.fps, rng)
    head = _head_motion(num_frames, recipe.fps, recipe.head, face_size, rng)
    gains = np.asarray(recipe.colour, np.float32)
    frames, points = [], []
    for i in range(num_frames):
        pose = Pose(opening=float(visemes[i, 0]) * recipe.expression, spread=float(visemes[i, 1]),
                    blink=float(blinks[i]), angle=float(head[i, 0]), scale=float(head[i, 1]),
                    shift=(float(head[i, 2]), float(head[i, 3])))
        frame, landmarks = render(face.image, geometry, pose)
        small = cv2.resize(frame, (recipe.size, recipe.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        frames.append(np.clip(small * gains, 0, 255).round().astype(np.uint8))
        points.append((landmarks + 0.5) / SUPERSAMPLE - 0.5)  # pixel centres of the reduced frame
    truth = {"opening": visemes[:, 0] * recipe.expression, "spread": visemes[:, 1], "blink": blinks,
             "head": head * [1, 1, 1 / SUPERSAMPLE, 1 / SUPERSAMPLE]}
    return SyntheticClip(recipe, np.stack(frames), np.stack(points).astype(np.float32), speech.astype(np.float32),
                         phonemes, truth)


def write_clip(clip: SyntheticClip, folder: str | Path, name: str) -> Path:
    """Write the clip's files into `folder` (see the module docstring); the mp4 last, so a clip that has its
    video is complete. Returns the mp4's path."""
    import soundfile

    from fantasy.media.video import Mp4Writer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(folder / f"{name}.wav"), clip.speech, SAMPLE_RATE, subtype="FLOAT")
    (folder / f"{name}.txt").write_text(PROMPT + "\n", encoding="utf-8")
    np.save(folder / f"{name}.landmarks.npy", clip.landmarks)
    truth = {"recipe": asdict(clip.recipe), "phonemes": clip.phonemes,
             **{k: np.asarray(v).round(5).tolist() for k, v in clip.truth.items()}}
    (folder / f"{name}.truth.json").write_text(json.dumps(truth), encoding="utf-8")
    size = clip.recipe.size
    with Mp4Writer(folder / f"{name}.mp4", clip.recipe.fps, size, size) as writer:
        writer.write(clip.frames)
    return folder / f"{name}.mp4"


def make_clips(
    folder: str | Path, count: int, seed: int = 0, size: int = 128, min_frames: int = 33,
    photos: tuple[str, ...] = tuple(PHOTOS), voices: tuple[str, ...] = VOICES, prefix: str = "clip",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Path]:
    """`count` clips named PREFIX-SEED into `folder`; clip i uses seed `seed + i`. A clip whose mp4 exists is
    kept, so an interrupted run continues where it stopped."""
    if count < 1:
        raise InvalidSetting(f"the number of clips must be at least 1, got {count}")
    folder = Path(folder)
    paths = []
    for i in range(count):
        name = f"{prefix}-{seed + i:06d}"
        path = folder / f"{name}.mp4"
        if not path.is_file():
            clip = render_clip(draw_recipe(seed + i, size, photos, voices), min_frames)
            write_clip(clip, folder, name)
        paths.append(path)
        if progress is not None:
            progress(i + 1, count, name)
    return paths


def read_truth(mp4: str | Path) -> dict:
    """A clip's NAME.truth.json."""
    path = Path(mp4).with_suffix("").with_suffix(".truth.json") if str(mp4).endswith(".mp4") else Path(mp4)
    return json.loads(Path(os.fspath(path)).read_text(encoding="utf-8"))
