"""One generation, end to end: validate inputs, condition, denoise, decode progressively, write the mp4.

Used by the CLI and the app. All input checks run before any model work, and the output file
appears only once it is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.errors import InvalidSetting
from fantasy.long_video import MOTION_FRAMES, ColourMatch, plan_windows, total_frame_count
from fantasy.media.audio import SAMPLE_RATE, clip_samples, load_speech
from fantasy.media.image import load_portrait, resize_note, resize_portrait
from fantasy.media.output import check_target, video_bytes
from fantasy.media.video import Mp4Writer
from fantasy.model.identity import portrait_face_crop
from fantasy.model.pipeline import FantasyTalkingPipeline
from fantasy.model.preview import LivePreview
from fantasy.model.prompts import DEFAULT_PROMPT  # noqa: F401 (re-exported)
from fantasy.model.sampling import passes_needed
from fantasy.model.windows import split_into_windows
from fantasy.release import check_release_pipeline, release_frame_count
from fantasy.settings import DEFAULT_SEED, Result, Settings  # noqa: F401 (DEFAULT_SEED re-exported)
from fantasy.weights.presets import Preset


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


ProgressFn = Callable[[str, float], None]  # (stage, fraction of that stage done)


def generate(
    pipe: FantasyTalkingPipeline,
    image: str | Path | Image.Image,
    audio: str | Path,
    out_path: str | Path | None,
    settings: Settings,
    preset: Preset,
    progress: ProgressFn | None = None,
    on_frames: Callable[[np.ndarray], None] | None = None,
    face_image: Image.Image | None = None,
    preview: LivePreview | None = None,
    inputs: PreparedInputs | None = None,
) -> Result:
    """Generate a talking video into `out_path` (mp4 with the speech). `on_frames` sees frames as decoded.

    `out_path` None: run everything, write nothing (the other processes of a context-parallel group).

    Up to `max_frames` frames this is the release's single clip; longer speech runs consecutive windows
    (see `fantasy.long_video`), each decoded and written as soon as it is denoised. With an identity
    module loaded, the face crop comes from `face_image` or else from the face backend (dlib) on the portrait.
    `settings.release`: only the release's clip, decoded as the release decodes (`fantasy.release`).
    `preview` gets each window's denoising estimate as a small clip (see `fantasy.model.preview`).
    `inputs`: what `prepare_inputs(image, audio, settings)` already returned (the app and the CLI check
    their inputs before loading or queueing, and the speech is decoded once).

    The output path is checked (writable, room for the video) before any model work; the video appears
    there only complete and verified (`fantasy.media.video.Mp4Writer`).
    """
    started = time.perf_counter()
    settings = settings.resolved(preset)
    if settings.release:
        check_release_pipeline(pipe, demo=preset.demo)
    if settings.motion is not None and pipe.motion_context is None:
        raise InvalidSetting("motion coefficients need trained motion-module weights (see docs/training.md)")
    inputs = inputs or prepare_inputs(image, audio, settings)
    if out_path is not None:
        check_target(out_path, 2 * inputs.output_bytes(settings.fps))  # the encoded stream and the muxed copy
    if pipe.identity_context is not None and face_image is None:
        face_image = portrait_face_crop(inputs.portrait)
    report = progress or (lambda stage, fraction: None)
    windows = plan_windows(inputs.num_frames, settings.max_frames)
    audio_for = _audio_windows(pipe, inputs, settings, single_clip=len(windows) == 1)
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    width, height = inputs.portrait.size

    writer_for = Mp4Writer if out_path is not None else _FrameTally
    with writer_for(out_path, settings.fps, width, height, audio_path=audio) as writer:
        tail: np.ndarray | None = None  # the last frames written: the next window's motion frames
        for index, window in enumerate(windows):
            audio_windows, audio_lengths = audio_for(window)

            def on_step(done: int, total: int, index: int = index) -> None:
                report("denoise", (index + done / total) / len(windows))

            latents = pipe(
                image=inputs.portrait, audio_windows=audio_windows, audio_lengths=audio_lengths,
                prompt=settings.prompt, negative_prompt=settings.negative_prompt, num_frames=window.length,
                num_inference_steps=settings.steps, text_guidance_scale=settings.text_guidance,
                audio_guidance_scale=settings.audio_guidance, audio_weight=settings.audio_weight,
                generator=generator, step_callback=on_step,
                motion_frames=None if tail is None else _to_pixels(tail[-window.overlap:]),
                motion=settings.motion, face_image=face_image, identity_scale=settings.identity_scale,
                preview_callback=None if preview is None else preview.for_window(index, len(windows)),
            )
            produced: list[np.ndarray] = []
            colour: ColourMatch | None = None
            decoded = pipe.decode_frames(latents, release=True) if settings.release else pipe.decode_frames(latents)
            for frames in decoded:
                produced.append(frames)
                done = sum(len(f) for f in produced)
                if done <= window.overlap:
                    if done == window.overlap:  # all repeated frames seen: fit the colour match on them
                        colour = ColourMatch.fit(np.concatenate(produced), tail[-window.overlap:])
                    continue
                new = frames[max(0, len(frames) - (done - window.overlap)):]
                new = colour.apply(new) if colour is not None else new
                writer.write(new)
                if on_frames is not None:
                    on_frames(new)
                tail = new if tail is None else np.concatenate([tail, new])[-MOTION_FRAMES:]
                report("decode", writer.frames_written / inputs.num_frames)
    return Result(
        path=None if out_path is None else Path(out_path), num_frames=writer.frames_written, fps=settings.fps,
        width=width, height=height,
        seconds_taken=time.perf_counter() - started, speech_seconds=inputs.speech_seconds,
        passes_per_step=len(passes_needed(settings.text_guidance, settings.audio_guidance)),
        windows=len(windows), speech_cut=inputs.speech_cut, motion_mode=pipe.motion_mode, release=settings.release,
    )


def _audio_windows(pipe: FantasyTalkingPipeline, inputs: PreparedInputs, settings: Settings, single_clip: bool):
    """Window -> (audio windows, valid lengths).

    One clip: the release's path (features of `[0, num_frames/fps)`, rate `L / num_frames`). Long video:
    features of the whole track zero-padded to the video's length, so every latent frame's tokens are
    the ones at its absolute time, whichever window it falls in.
    """
    if single_clip:
        clip = clip_samples(inputs.speech, inputs.num_frames, settings.fps)
        encoded = pipe.encode_audio(clip, inputs.num_frames)
        return lambda window: encoded
    length = int(inputs.num_frames / settings.fps * SAMPLE_RATE)
    samples = np.zeros(length, dtype=np.float32)
    used = inputs.speech[:length]
    samples[: len(used)] = used
    tokens = pipe.project_audio(samples)
    rate = tokens.shape[1] / inputs.num_frames
    return lambda window: split_into_windows(tokens, window.length, start_frame=window.start, tokens_per_frame=rate)


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


def _to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [K, H, W, 3] -> [1, 3, K, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)[None]
