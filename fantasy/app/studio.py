"""What the app does between a click and a video, without any Gradio: controls -> checked job -> stream.

`Studio` holds the resident pipeline and the app's limits. `check()` turns slider values into settings
(through the motion mapping) and runs every input check before any model work; `run()` streams the
generation; `status()` writes the line the user reads afterwards (preset, device, motion mode, time,
face check, notices). A UI only adds widgets and turns `FantasyError` into its own error display.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fantasy.app.sliders import motion_controls
from fantasy.app.streaming import MIN_CHUNK_SECONDS, StreamEvent, stream_generate
from fantasy.app.validation import MAX_UPLOAD_BYTES, CheckedInputs, FaceChecker, check_inputs
from fantasy.generation import DEFAULT_PROMPT, DEFAULT_SEED, Result, Settings
from fantasy.media.output import check_target
from fantasy.model.preview import BUDGET as PREVIEW_BUDGET
from fantasy.model.preview import Preview, upscale, write_clip
from fantasy.weights.presets import Preset

HEARTBEAT_S = 0.2  # a UI gets a turn at least this often while a step runs, to notice a stop or a closed page
SHUTDOWN_WAIT_S = 5.0  # on SIGTERM, how long a running worker gets to stop before its folder is removed
OUTPUT_MAX_AGE_S = 3600  # finished jobs' files are deleted an hour later (they are served from Gradio's cache)


@dataclass
class Controls:
    """Slider and text values as a person set them (None: the preset's default)."""

    prompt: str = DEFAULT_PROMPT
    expression: float = 0.5
    body: float = 0.5
    text_guidance: float = 5.0
    audio_guidance: float = 5.0
    audio_weight: float = 1.0
    steps: int | None = None
    seed: int = DEFAULT_SEED
    longest_edge: int | None = None
    max_duration_s: float | None = None


def settings_from_controls(controls: Controls, trained_motion: bool = False) -> tuple[Settings, str]:
    """Generation settings and the motion-control mode the sliders went through.

    `trained_motion`: the pipeline has trained motion-module weights, so the sliders are its coefficients.
    """
    base = Settings(
        prompt=(controls.prompt or "").strip() or DEFAULT_PROMPT,
        seed=int(controls.seed),
        steps=None if controls.steps is None else int(controls.steps),
        text_guidance=float(controls.text_guidance),
        audio_guidance=float(controls.audio_guidance),
        audio_weight=float(controls.audio_weight),
        longest_edge=None if controls.longest_edge is None else int(controls.longest_edge),
    )
    return motion_controls(controls.expression, controls.body, base, trained=trained_motion)


@dataclass
class Job:
    """A checked request with its own output folder."""

    image: Path
    audio: Path
    checked: CheckedInputs
    motion_mode: str
    folder: Path
    notices: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.checked.settings

    @property
    def window_count(self) -> int:
        """Consecutive windows the core will denoise (one up to 81 frames; see `fantasy.long_video`)."""
        from fantasy.long_video import plan_windows

        return len(plan_windows(self.checked.num_frames, self.settings.max_frames))

    @property
    def out_path(self) -> Path:
        return self.folder / "talking.mp4"

    @property
    def chunk_dir(self) -> Path:
        return self.folder / "chunks"

    def preview_clip(self, preview: Preview) -> Path:
        """The estimate as a looping animated WebP in the job's folder; a new name each time, since a browser
        keeps showing a cached image whose URL did not change."""
        path = self.folder / "preview" / f"window{preview.window}-step{preview.step:03d}.webp"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_clip(upscale(preview.frames), path, self.settings.fps)


def preview_caption(preview: Preview) -> str:
    """The preview's label: what it is and where the denoising is."""
    where = f"step {preview.step}/{preview.steps}"
    if preview.windows > 1:
        where += f", window {preview.window + 1} of {preview.windows}"
    return f"Preview while denoising ({where}): an estimate, blurry at first"


class Studio:
    """The resident pipeline plus the app's limits; one generation at a time (`lock`).

    `channel`: this process is rank 0 of a context-parallel group (`fantasy.app.parallel_jobs.JobChannel`);
    the other ranks follow every job, and Stop is agreed with them.
    """

    def __init__(
        self, pipe, preset: Preset, face_checker: FaceChecker, output_root: str | Path,
        max_upload_bytes: int = MAX_UPLOAD_BYTES, min_chunk_seconds: float = MIN_CHUNK_SECONDS,
        preview_budget: float = PREVIEW_BUDGET, channel=None,
    ):
        self.pipe, self.preset, self.face_checker, self.channel = pipe, preset, face_checker, channel
        self.output_root = Path(output_root)
        self.max_upload_bytes = max_upload_bytes
        self.min_chunk_seconds = min_chunk_seconds
        self.preview_budget = preview_budget  # share of the denoising time the live preview may take
        self.lock = threading.Lock()
        self._running: dict[Path, threading.Event] = {}  # job folder -> its stop flag, while it streams

    @property
    def device(self) -> str:
        return str(getattr(self.pipe, "device", "cpu"))

    def check(self, image: str | Path | None, audio: str | Path | None, controls: Controls) -> Job:
        """Every input check, before any model work; raises `FantasyError` with the user-facing message."""
        settings, mode = settings_from_controls(controls, trained_motion=getattr(self.pipe, "motion_context", None) is not None)
        checked = check_inputs(
            image, audio, settings, self.preset, max_duration_s=controls.max_duration_s,
            face_checker=self.face_checker, max_upload_bytes=self.max_upload_bytes,
        )
        self._clean_old_outputs()
        # Room for the video, its muxed copy and the streamed chunks, checked before the job takes a slot.
        check_target(self.output_root / "talking.mp4", 3 * checked.inputs.output_bytes(checked.settings.fps))
        folder = self.output_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"  # made by `run`
        return Job(Path(image), Path(audio), checked, mode, folder, list(checked.notices))

    def run(self, job: Job, cancel: threading.Event | None = None,
            heartbeat_s: float | None = HEARTBEAT_S) -> Iterator[StreamEvent]:
        """Stream the job's generation (see `fantasy.app.streaming.stream_generate`), from the inputs `check` decoded."""
        job.folder.mkdir(parents=True, exist_ok=True)
        cancel = cancel if cancel is not None else threading.Event()
        self._running[job.folder] = cancel
        return self._tracked(job.folder, stream_generate(
            self.pipe, job.image, job.audio, job.out_path, job.settings, self.preset, job.chunk_dir,
            num_frames=job.checked.num_frames, min_chunk_seconds=self.min_chunk_seconds, cancel=cancel,
            lock=self.lock, preview=True, preview_budget=self.preview_budget, inputs=job.checked.inputs,
            heartbeat_s=heartbeat_s, channel=self.channel,
        ))

    def _tracked(self, folder: Path, stream: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
        try:
            yield from stream
        finally:
            self._running.pop(folder, None)

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> int:
        """Stop every running generation and delete its folder (nothing half-written stays behind).

        Waits up to `wait_s` for a worker to reach its next step check; returns how many were stopped.
        """
        running = list(self._running.items())
        for _, cancel in running:
            cancel.set()
        if running and self.lock.acquire(timeout=wait_s):
            self.lock.release()
        for folder, _ in running:
            shutil.rmtree(folder, ignore_errors=True)
        return len(running)

    def status(self, job: Job, result: Result | None = None, state: str = "Done", steps_run: int | None = None) -> str:
        """One line: what ran, where, how, how long, and anything the user must know (cut, face check).

        `steps_run`: the denoising steps the pipeline reported (shown instead of the requested count).
        """
        s = job.settings
        preset = f"preset **{self.preset.name}**" + (" (random weights: output is noise)" if self.preset.demo else "")
        choice = getattr(self.pipe, "dit_choice", None)
        parts = [f"**{state}**" + (f" in {result.seconds_taken:.1f} s" if result else ""), preset,
                 f"device {self.device}", f"DiT {choice.describe()}" if choice is not None else "",
                 f"motion: {job.motion_mode}"]
        if result is not None:
            windows = max(1, result.windows)
            parts.append(f"{result.num_frames} frames {result.width}×{result.height} @ {result.fps} fps "
                         f"({result.num_frames / result.fps:.1f} s" + (f", {windows} windows)" if windows > 1 else ")"))
            steps = s.steps if steps_run is None else steps_run // windows
            parts.append(f"{steps} steps × {result.passes_per_step} passes" + (f" × {windows} windows" if windows > 1 else ""))
        else:
            parts.append(f"{job.checked.num_frames} frames, {s.steps} steps")
        parts.append(f"audio weight {s.audio_weight:.2f}, audio guidance {s.audio_guidance:.1f}, "
                     f"text guidance {s.text_guidance:.1f}, seed {s.seed}")
        parts.append(job.checked.face_note)
        line = " · ".join(p for p in parts if p)
        return "\n\n".join([line, *(f"⚠️ {notice}" for notice in job.notices)])

    def details(self, job: Job, result: Result, steps_run: int | None = None) -> dict:
        """The finished run as data (the API's JSON output beside the video and `status`'s sentence)."""
        s = job.settings
        choice = getattr(self.pipe, "dit_choice", None)
        transformer = getattr(self.pipe, "transformer", None)
        windows = max(1, result.windows)
        return {
            "seed": s.seed, "frames": result.num_frames, "fps": result.fps, "width": result.width,
            "height": result.height, "seconds": round(result.num_frames / result.fps, 3),
            "seconds_taken": round(result.seconds_taken, 2), "speech_seconds": round(result.speech_seconds, 3),
            "speech_cut": result.speech_cut, "windows": windows,
            "steps": s.steps if steps_run is None else steps_run // windows, "passes_per_step": result.passes_per_step,
            "preset": self.preset.name, "demo": self.preset.demo, "device": self.device,
            # how the DiT's weights are held: the --dit mode, or the plain dtype where none was chosen (tiny)
            "dit": choice.mode if choice is not None else str(getattr(transformer, "dtype", "")).removeprefix("torch."),
            "motion_mode": result.motion_mode, "release": result.release,
            "text_guidance": s.text_guidance, "audio_guidance": s.audio_guidance, "audio_weight": s.audio_weight,
            "notices": list(job.notices),
        }

    def _clean_old_outputs(self) -> None:
        if not self.output_root.is_dir():
            return
        cutoff = time.time() - OUTPUT_MAX_AGE_S
        for folder in self.output_root.iterdir():
            try:
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue
