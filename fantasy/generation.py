"""One generation, end to end: validate inputs, condition, denoise, decode progressively, write the mp4.

Used by the CLI and the app. All input checks run before any model work, and the output file
appears only once it is complete.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.long_video import plan_windows, total_frame_count
from fantasy.media.audio import SAMPLE_RATE, load_speech
from fantasy.media.image import load_portrait, resize_note, resize_portrait
from fantasy.media.output import check_not_an_input, check_target, video_bytes
from fantasy.media.video import Mp4Writer
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.model.preview import LivePreview
from fantasy.model.prompts import DEFAULT_PROMPT  # noqa: F401 (re-exported)
from fantasy.model.sampling import passes_needed
from fantasy.progress import ProgressClock, ProgressFn
from fantasy.release import check_release_pipeline, release_frame_count
from fantasy.settings import DEFAULT_SEED, Result, Settings  # noqa: F401 (DEFAULT_SEED re-exported)
from fantasy.weights.presets import Preset, get_preset


@dataclass
class PreparedInputs:
    """Validated inputs, ready for the models."""

    portrait: Image.Image  # resized, sides multiples of 16
    speech: np.ndarray  # mono 16 kHz: the whole track, or its start up to the maximum duration plus a margin
    num_frames: int  # the whole video
    speech_seconds: float  # the whole track's duration
    speech_cut: bool  # the speech is longer than the maximum duration (release mode: than the one clip)
    notices: list[str] = field(default_factory=list)  # what the user should know (e.g. the shape changed)

    def output_bytes(self, fps: float, audio: bool = True) -> int:
        """Room one finished mp4 of these inputs needs at most (`fantasy.media.output.video_bytes`)."""
        width, height = self.portrait.size
        return video_bytes(self.num_frames, width, height, self.num_frames / fps, audio)


def prepare_inputs(image: str | Path | Image.Image, audio: str | Path, settings: Settings) -> PreparedInputs:
    """Read and check portrait and speech; decide the frame count. No model is touched.

    Speech is decoded only up to what the video can use (the maximum duration, or in release mode the one
    clip), plus a margin: memory follows the setting, not the file.
    """
    original = load_portrait(image)
    portrait = resize_portrait(original, settings.longest_edge)
    speech = load_speech(audio, settings.max_frames / settings.fps if settings.release else settings.max_duration)
    seconds = speech.duration_s
    if settings.release:
        num_frames, cut = release_frame_count(seconds, settings.fps, settings.max_frames)
    else:
        num_frames, cut = total_frame_count(seconds, settings.fps, settings.max_duration)
    note = resize_note(original.size, settings.longest_edge)
    return PreparedInputs(portrait, speech.samples, num_frames, seconds, cut, [note] if note else [])


def pipeline_preset(pipe: FantasyTalkingPipeline) -> Preset:
    """Where no preset is named: the real preset's defaults and bounds, at the pipeline's own default size."""
    return dataclasses.replace(get_preset("real"), longest_edge=pipe.config.default_longest_edge)


def generate(
    pipe: FantasyTalkingPipeline,
    image: str | Path | Image.Image,
    audio: str | Path,
    out_path: str | Path | None = None,
    settings: Settings | None = None,
    preset: Preset | None = None,
    progress: ProgressFn | None = None,
    on_frames: Callable[[np.ndarray], None] | None = None,
    face_image: Image.Image | None = None,
    preview: LivePreview | None = None,
    inputs: PreparedInputs | None = None,
) -> Result:
    """Generate a talking video into `out_path` (mp4 with the speech). `on_frames` sees frames as decoded.

    The file-to-file path over `pipe(...)` (`FantasyTalkingPipeline.__call__`, which does the generation: one
    clip up to `max_frames` frames, consecutive windows for longer speech, the release's clip with
    `settings.release`): this checks every input first, streams the frames into the mp4 as they are decoded,
    reports progress and previews, and says what was made. `settings` default: `Settings()`; `preset`
    default: the real preset's, at the pipeline's default size (`pipe.config.default_longest_edge`).
    `out_path` None: run everything, write nothing (the other processes of a context-parallel group).
    `face_image`: the identity module's face crop (default: the pipeline crops it from the portrait).
    `preview` gets each window's denoising estimate as a small clip (see `fantasy.model.preview`).
    `progress` gets a `fantasy.progress.Progress` after every denoising step and every decoded chunk (steps,
    window, elapsed times, ETAs); `fantasy.progress.ConsoleProgress()` shows them as the CLI does.
    `inputs`: what `prepare_inputs(image, audio, settings)` already returned (the app and the CLI check
    their inputs before loading or queueing, and the speech is decoded once).

    The output path is checked (writable, room for the video) before any model work; the video appears
    there only complete and verified (`fantasy.media.video.Mp4Writer`).
    """
    started = time.perf_counter()
    preset = preset or pipeline_preset(pipe)
    settings = (settings or Settings()).resolved(preset)
    if settings.release:
        check_release_pipeline(pipe, demo=preset.demo)
    if settings.motion is not None and pipe.motion_context is None:
        raise InvalidSetting("motion coefficients need trained motion-module weights (see docs/training.md)")
    inputs = inputs or prepare_inputs(image, audio, settings)
    if out_path is not None:
        check_target(out_path, 2 * inputs.output_bytes(settings.fps))  # the encoded stream and the muxed copy
        check_not_an_input(out_path, {"the portrait": None if isinstance(image, Image.Image) else image,
                                      "the speech": audio})
    report = progress or (lambda event: None)
    windows = plan_windows(inputs.num_frames, settings.max_frames)
    clock = ProgressClock(len(windows), settings.steps, inputs.num_frames)
    width, height = inputs.portrait.size
    previews: dict[int, Callable] = {}  # window -> its preview callback (its throttle starts with the window)

    def on_step(pipe, step: int, timestep, tensors: dict) -> dict:
        index, count = pipe.window_index, pipe.num_windows
        if index + 1 != clock.window:  # a later window: it began denoising when the last one's frames were out
            clock.window_begins(index, at=clock.decoded_at)
        clock.steps = pipe.num_timesteps  # the sampler's own count
        if preview is not None:
            if index not in previews:
                previews[index] = preview.for_window(index, count)
            previews[index](step + 1, pipe.num_timesteps, tensors["x0"])
        report(clock.denoised(step + 1))  # where a stopped run raises
        return {}

    writer_for = Mp4Writer if out_path is not None else _FrameTally
    with writer_for(out_path, settings.fps, width, height, audio_path=audio) as writer:

        def write(frames: np.ndarray) -> None:
            writer.write(frames)
            if on_frames is not None:
                on_frames(frames)
            report(clock.decoded(writer.frames_written))

        clock.window_begins(0)
        pipe(
            image=inputs.portrait, audio=inputs.speech, sampling_rate=SAMPLE_RATE, prompt=settings.prompt,
            negative_prompt=settings.negative_prompt, height=height, width=width, num_frames=inputs.num_frames,
            fps=settings.fps, window_frames=settings.max_frames, num_inference_steps=settings.steps,
            guidance_scale=settings.text_guidance, audio_guidance_scale=settings.audio_guidance,
            audio_weight=settings.audio_weight, generator=torch.Generator("cpu").manual_seed(settings.seed),
            motion=settings.motion, face_image=face_image, identity_scale=settings.identity_scale,
            release=settings.release, output_type=None, on_frames=write, callback_on_step_end=on_step,
            callback_on_step_end_tensor_inputs=["x0"] if preview is not None else [],
        )
    return Result(
        path=None if out_path is None else Path(out_path), num_frames=writer.frames_written, fps=settings.fps,
        width=width, height=height,
        seconds_taken=time.perf_counter() - started, speech_seconds=inputs.speech_seconds,
        passes_per_step=len(passes_needed(settings.text_guidance, settings.audio_guidance)),
        windows=len(windows), speech_cut=inputs.speech_cut, motion_mode=pipe.motion_mode, release=settings.release,
    )


class _FrameTally:
    """The mp4 writer's stand-in where nothing is written: counts frames, touches no file."""

    def __init__(self, *_args, **_kwargs):
        self.frames_written = 0

    def __enter__(self) -> _FrameTally:
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def write(self, frames: np.ndarray) -> None:
        self.frames_written += len(frames)
