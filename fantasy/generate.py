"""One generation, end to end: validate inputs, condition, denoise, decode progressively, write the mp4.

Used by the CLI and the app. All input checks run before any model work, and the output file
appears only once it is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.audio import SAMPLE_RATE, clip_samples, frame_count, load_audio
from fantasy.errors import InvalidSetting
from fantasy.image import load_portrait, resize_portrait
from fantasy.pipeline import DEFAULT_NEGATIVE_PROMPT, FantasyTalkingPipeline
from fantasy.presets import Preset
from fantasy.video import Mp4Writer

DEFAULT_PROMPT = "A person is talking."
DEFAULT_SEED = 1111  # the release's CLI default


@dataclass
class Settings:
    """What a user can set. Defaults are the release's (infer.py)."""

    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = DEFAULT_SEED
    steps: int | None = None  # None: the preset's default (30)
    text_guidance: float = 5.0
    audio_guidance: float = 5.0
    audio_weight: float = 1.0
    fps: int = 23
    max_frames: int = 81
    longest_edge: int | None = None  # None: the preset's default

    def resolved(self, preset: Preset) -> Settings:
        """Fill preset defaults and reject out-of-range values with a message naming the setting."""
        s = Settings(**asdict(self))
        s.steps = preset.steps if s.steps is None else s.steps
        s.longest_edge = preset.longest_edge if s.longest_edge is None else s.longest_edge
        checks = [
            (1 <= s.steps <= 100, f"steps must be between 1 and 100, got {s.steps}"),
            (1.0 <= s.text_guidance <= 20.0, f"text guidance must be between 1 and 20, got {s.text_guidance}"),
            (1.0 <= s.audio_guidance <= 20.0, f"audio guidance must be between 1 and 20, got {s.audio_guidance}"),
            (0.0 <= s.audio_weight <= 5.0, f"audio weight must be between 0 and 5, got {s.audio_weight}"),
            (8 <= s.fps <= 60, f"fps must be between 8 and 60, got {s.fps}"),
            (s.max_frames >= 5 and (s.max_frames - 1) % 4 == 0,
             f"max frames must be 4k+1 and at least 5 (e.g. 81), got {s.max_frames}"),
            (s.longest_edge >= 64 and s.longest_edge % 16 == 0,
             f"resolution (longest edge) must be a multiple of 16 and at least 64, got {s.longest_edge}"),
            (0 <= s.seed < 2**63, f"seed must be a non-negative integer, got {s.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidSetting(message)
        return s


@dataclass
class PreparedInputs:
    """Validated inputs, ready for the models."""

    portrait: Image.Image  # resized, sides multiples of 16
    speech: np.ndarray  # the whole track, mono 16 kHz
    num_frames: int
    speech_seconds: float


def prepare_inputs(image: str | Path | Image.Image, audio: str | Path, settings: Settings) -> PreparedInputs:
    """Read and check portrait and speech; decide the frame count. No model is touched."""
    portrait = resize_portrait(load_portrait(image), settings.longest_edge)
    speech = load_audio(audio)
    seconds = len(speech) / SAMPLE_RATE
    num_frames = frame_count(seconds, settings.fps, settings.max_frames)
    return PreparedInputs(portrait, speech, num_frames, seconds)


@dataclass
class Result:
    path: Path
    num_frames: int
    fps: int
    width: int
    height: int
    seconds_taken: float
    speech_seconds: float
    passes_per_step: int


ProgressFn = Callable[[str, float], None]  # (stage, fraction of that stage done)


def generate(
    pipe: FantasyTalkingPipeline,
    image: str | Path | Image.Image,
    audio: str | Path,
    out_path: str | Path,
    settings: Settings,
    preset: Preset,
    progress: ProgressFn | None = None,
    on_frames: Callable[[np.ndarray], None] | None = None,
) -> Result:
    """Generate one talking clip into `out_path` (mp4 with the speech). `on_frames` sees frames as decoded."""
    from fantasy.sampling import passes_needed

    started = time.perf_counter()
    settings = settings.resolved(preset)
    inputs = prepare_inputs(image, audio, settings)
    report = progress or (lambda stage, fraction: None)

    report("audio", 0.0)
    windows, lengths = pipe.encode_audio(clip_samples(inputs.speech, inputs.num_frames, settings.fps), inputs.num_frames)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    latents = pipe(
        image=inputs.portrait, audio_windows=windows, audio_lengths=lengths, prompt=settings.prompt,
        negative_prompt=settings.negative_prompt, num_frames=inputs.num_frames, num_inference_steps=settings.steps,
        text_guidance_scale=settings.text_guidance, audio_guidance_scale=settings.audio_guidance,
        audio_weight=settings.audio_weight, generator=generator,
        step_callback=lambda done, total: report("denoise", done / total),
    )
    width, height = inputs.portrait.size
    with Mp4Writer(out_path, settings.fps, width, height, audio_path=audio) as writer:
        for frames in pipe.decode_frames(latents):
            writer.write(frames)
            if on_frames is not None:
                on_frames(frames)
            report("decode", writer.frames_written / inputs.num_frames)
    return Result(
        path=Path(out_path), num_frames=writer.frames_written, fps=settings.fps, width=width, height=height,
        seconds_taken=time.perf_counter() - started, speech_seconds=inputs.speech_seconds,
        passes_per_step=len(passes_needed(settings.text_guidance, settings.audio_guidance)),
    )
