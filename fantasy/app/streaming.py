"""Streaming: decoded frames -> playable mp4 chunks (>= 1 s, each with its slice of the speech), live.

The causal VAE hands frames over a latent frame at a time (1, then 4 each). A browser player wants
self-contained segments it can start on before the rest exists, so `ChunkWriter` groups frames into
mp4 chunks of at least `min_seconds`, as equal in length as possible, each muxed with the speech from
its own start time. `stream_generate` runs `fantasy.generation.generate` in a worker thread and turns
its callbacks into an iterator of events, which is the shape a Gradio generator (or any other UI) needs.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fantasy.errors import GenerationCancelled
from fantasy.media.output import temp_path
from fantasy.media.video import Mp4Writer, mux_audio
from fantasy.progress import Progress

if TYPE_CHECKING:
    from fantasy.app.parallel_jobs import JobChannel
    from fantasy.generation import PreparedInputs, Result, Settings
    from fantasy.model.pipeline import FantasyTalkingPipeline
    from fantasy.model.preview import Preview
    from fantasy.weights.presets import Preset

MIN_CHUNK_SECONDS = 1.0


def plan_chunks(total_frames: int, fps: float, min_seconds: float = MIN_CHUNK_SECONDS) -> list[int]:
    """Frame counts of the chunks covering `total_frames`: each >= `min_seconds` (unless the whole
    video is shorter, then one chunk), as equal as possible so segments play evenly."""
    if total_frames < 1:
        raise ValueError(f"need at least one frame, got {total_frames}")
    min_frames = max(1, math.ceil(min_seconds * fps - 1e-9))
    count = max(1, total_frames // min_frames)
    base, extra = divmod(total_frames, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


@dataclass(frozen=True)
class Chunk:
    """One finished, self-contained mp4 segment of the video."""

    path: Path
    index: int
    first_frame: int
    num_frames: int
    fps: float

    @property
    def start_s(self) -> float:
        return self.first_frame / self.fps

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


class ChunkWriter:
    """Feed frames as they are decoded; get finished chunks back as soon as each is complete.

    Frames are encoded as they arrive (one ffmpeg per open chunk); completing a chunk only muxes its
    audio, so the first chunk is ready moments after its last frame is decoded.
    """

    def __init__(
        self, out_dir: str | Path, total_frames: int, fps: float, audio_path: str | Path | None,
        min_seconds: float = MIN_CHUNK_SECONDS, prefix: str = "chunk",
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.total_frames, self.fps = total_frames, fps
        self.audio_path = Path(audio_path) if audio_path is not None else None
        self.sizes = plan_chunks(total_frames, fps, min_seconds)
        self.prefix = prefix
        self.chunks: list[Chunk] = []
        self.frames_seen = 0
        self._writer: Mp4Writer | None = None
        self._in_current = 0

    @property
    def done(self) -> bool:
        return len(self.chunks) == len(self.sizes)

    def add(self, frames: np.ndarray) -> list[Chunk]:
        """Frames [n, H, W, 3] (or [H, W, 3]) uint8; returns the chunks this call completed (often none)."""
        frames = frames[None] if frames.ndim == 3 else frames
        if self.frames_seen + len(frames) > self.total_frames:
            raise ValueError(f"got more than the {self.total_frames} frames planned")
        finished: list[Chunk] = []
        while len(frames):
            index = len(self.chunks)
            if self._writer is None:
                height, width = frames.shape[1:3]
                self._writer = Mp4Writer(self._video_path(index), self.fps, width, height, audio_path=None, verify=False)
                self._in_current = 0
            take = min(self.sizes[index] - self._in_current, len(frames))
            self._writer.write(frames[:take])
            self._in_current += take
            self.frames_seen += take
            frames = frames[take:]
            if self._in_current == self.sizes[index]:
                finished.append(self._finish_chunk(index))
        return finished

    def _video_path(self, index: int) -> Path:
        return self.out_dir / f".{self.prefix}{index:03d}.video.mp4"

    def _finish_chunk(self, index: int) -> Chunk:
        assert self._writer is not None
        video = self._writer.close()
        self._writer = None
        first = sum(self.sizes[:index])
        path = self.out_dir / f"{self.prefix}{index:03d}.mp4"
        partial = temp_path(path, "mux")
        try:
            mux_audio(video, self.audio_path, partial, start_s=first / self.fps,
                      duration_s=self.sizes[index] / self.fps)
            partial.replace(path)
        finally:
            video.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        chunk = Chunk(path, index, first, self.sizes[index], self.fps)
        self.chunks.append(chunk)
        return chunk

    def finish(self) -> list[Chunk]:
        """Check every planned frame arrived (each frame is in exactly one chunk); returns all chunks."""
        if not self.done:
            self.abort()
            raise ValueError(f"stream ended after {self.frames_seen} of {self.total_frames} frames")
        return list(self.chunks)

    def abort(self) -> None:
        """Drop the chunk being written (finished chunks stay: they may already be playing)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


# ---- running a generation as a stream of events ---------------------------------------------------


@dataclass(frozen=True)
class StageProgress:
    """`stage` is "audio", "denoise" or "decode"; `fraction` of that stage is done."""

    stage: str
    fraction: float


@dataclass(frozen=True)
class ChunkReady:
    chunk: Chunk


@dataclass(frozen=True)
class Finished:
    result: Result
    chunks: list[Chunk] = field(default_factory=list)
    steps_run: int = 0  # denoising steps the pipeline reported (all windows), counted, not taken from the settings


@dataclass(frozen=True)
class PreviewReady:
    """The denoising estimate of the window being denoised (`fantasy.model.preview.Preview`), latent resolution."""

    preview: Preview


@dataclass(frozen=True)
class Idle:
    """Nothing new for `heartbeat_s`: gives a consumer (a Gradio generator) a turn, so that a cancelled request
    or a closed page is noticed while a long step runs, not only at the next real event."""


StreamEvent = StageProgress | PreviewReady | ChunkReady | Finished | Idle


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def stream_generate(
    pipe: FantasyTalkingPipeline,
    image,
    audio: str | Path,
    out_path: str | Path,
    settings: Settings,
    preset: Preset,
    chunk_dir: str | Path,
    *,
    num_frames: int | None = None,
    min_chunk_seconds: float = MIN_CHUNK_SECONDS,
    cancel: threading.Event | None = None,
    lock: threading.Lock | None = None,
    channel: JobChannel | None = None,
    preview: bool = False,
    preview_budget: float | None = None,
    inputs: PreparedInputs | None = None,
    heartbeat_s: float | None = None,
    lora_scales: dict[str, float] | None = None,
) -> Iterator[StreamEvent]:
    """Run `generate` in a worker thread; yield progress, each chunk as it is ready, then `Finished`.

    Stopping early (closing this iterator, or setting `cancel`) stops the worker at its next denoising
    step or decoded latent frame and leaves no final file. `lock`, when given, is held for the whole
    generation, so a stopped run still finishing its step never overlaps the next one on the device.
    Errors raised in the worker are re-raised here, in the consumer. With `preview`, denoising estimates
    arrive as `PreviewReady` events (throttled to `preview_budget`, default 2 %, of the step time; the
    consumer encodes them, off the denoising thread). `channel`: this is rank 0 of a context-parallel
    group; the other ranks follow the job (given these prepared inputs), and every stop is agreed with them
    (`fantasy.app.parallel_jobs`). `inputs`: the already prepared inputs (the speech is then not decoded again).
    `heartbeat_s`: yield `Idle` when nothing happened for that long. `lora_scales`: strengths of LoRAs kept as
    separate layers (adapter name -> strength) for this run only, set under `lock` and restored before it is
    released, however the run ends (every rank of a group does the same).
    """
    from fantasy.generation import generate, prepare_inputs
    from fantasy.model.preview import BUDGET, LivePreview
    from fantasy.weights.loras import lora_scales_for_run

    cancel = cancel if cancel is not None else threading.Event()
    events: queue.Queue = queue.Queue()
    agree = [lambda stop: stop]  # one process decides alone; a group replaces this with its agreement

    def check_cancel() -> None:
        if agree[0](cancel.is_set()):
            raise GenerationCancelled("Generation stopped.")

    steps_run = 0

    def on_progress(event: Progress) -> None:
        nonlocal steps_run
        check_cancel()
        steps_run += event.stage == "denoise"
        events.put(StageProgress(event.stage, event.fraction))

    def work() -> None:
        writer: ChunkWriter | None = None
        try:
            with lock if lock is not None else contextlib.nullcontext():
                if cancel.is_set():  # before the job is announced to any other process
                    raise GenerationCancelled("Generation stopped.")
                resolved = settings.resolved(preset)
                prepared = inputs or prepare_inputs(image, audio, resolved)
                total = num_frames or prepared.num_frames
                writer = ChunkWriter(chunk_dir, total, resolved.fps, audio, min_chunk_seconds)

                def on_frames(frames: np.ndarray) -> None:
                    check_cancel()
                    for chunk in writer.add(frames):
                        events.put(ChunkReady(chunk))

                def on_preview(estimate: Preview) -> None:
                    if channel is not None:  # rank 0 alone previews: it must not stop here on its own
                        if not cancel.is_set():
                            events.put(PreviewReady(estimate))
                        return
                    check_cancel()
                    events.put(PreviewReady(estimate))

                live = LivePreview(on_preview, preview_budget or BUDGET) if preview else None

                def run(agreement=agree[0]):
                    agree[0] = agreement
                    return generate(pipe, image, audio, out_path, settings, preset, on_progress, on_frames,
                                    preview=live, inputs=prepared)

                with lora_scales_for_run(pipe, lora_scales or {}):
                    if channel is None:
                        result = run()
                    else:
                        from fantasy.app.parallel_jobs import job_spec

                        result = channel.lead(job_spec(image, audio, settings, inputs=prepared,
                                                       lora_scales=lora_scales), run)
                chunks = writer.finish()
            events.put(Finished(result, chunks, steps_run))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            if writer is not None:
                writer.abort()
            events.put(_Failed(exc))

    worker = threading.Thread(target=work, name="fantasy-generate", daemon=True)
    worker.start()
    completed = False
    try:
        while True:
            try:
                event = events.get(timeout=heartbeat_s)
            except queue.Empty:
                yield Idle()
                continue
            if isinstance(event, _Failed):
                completed = True
                raise event.error
            yield event
            if isinstance(event, Finished):
                completed = True
                return
    finally:
        if not completed:
            cancel.set()
