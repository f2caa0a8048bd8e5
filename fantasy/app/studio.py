"""What the app does between a click and a video, without any Gradio: controls -> checked job -> stream.

`Studio` holds the resident pipeline and the app's limits. `check()` checks the controls' ranges, turns them into
settings (through the motion mapping) and runs every input check before any model work, at most
`CHECKS_AT_ONCE` at a time; `run()` streams the generation; `summary()` is the short line the user reads
afterwards (what ran, how long, notices) and `details()` the rest (preset, device, DiT, motion mode, frames,
steps and passes, guidance, face check). `admission` decides how many generations run and wait. A UI only adds
widgets and turns `FantasyError` into its own error display.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fantasy.app.admission import Admission
from fantasy.app.controls import MAX_EDGE, check_controls
from fantasy.app.lora_strengths import PageLora, check_strengths, describe
from fantasy.app.memory import release_freed_memory
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
CHECKS_AT_ONCE = 2  # input checks decoding at the same time (each may hold a large photo while decoding it)


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
    lora_strengths: dict[str, float] | None = None  # LoRA name -> strength for this run (None: as loaded)


def checked_controls(controls: Controls, max_edge: int = MAX_EDGE) -> Controls:
    """`controls` with every value within its control's range (`fantasy.app.controls`; the resolution up to
    `max_edge`), numbers as numbers; None keeps the preset's default. Raises `InvalidSetting` concerning the first
    control out of range."""
    given = {"prompt": controls.prompt, "expression": controls.expression, "body": controls.body,
             "text_guidance": controls.text_guidance, "audio_guidance": controls.audio_guidance,
             "audio_weight": controls.audio_weight, "seed": controls.seed, "steps": controls.steps,
             "resolution": controls.longest_edge, "max_duration": controls.max_duration_s}
    values = check_controls(max_edge, **{k: v for k, v in given.items() if v is not None})
    return Controls(
        prompt=values.get("prompt", DEFAULT_PROMPT), expression=values["expression"], body=values["body"],
        text_guidance=values["text_guidance"], audio_guidance=values["audio_guidance"],
        audio_weight=values["audio_weight"], steps=values.get("steps"), seed=values.get("seed", DEFAULT_SEED),
        longest_edge=values.get("resolution"), max_duration_s=values.get("max_duration"),
        lora_strengths=controls.lora_strengths,
    )


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
    portrait_name: str = ""  # the name the person's file had (uploads arrive under a server-side name)
    gpu_seconds: int | None = None  # on ZeroGPU: what this job asks for
    loras: list[PageLora] = field(default_factory=list)  # every LoRA loaded at launch
    lora_strengths: dict[str, float] = field(default_factory=dict)  # label -> this run's strength (adjustable ones)

    @property
    def settings(self) -> Settings:
        return self.checked.settings

    @property
    def lora_scales(self) -> dict[str, float]:
        """Adapter name -> strength, for the run (`fantasy.weights.loras.lora_scales_for_run`)."""
        return {lora.adapter: self.lora_strengths[lora.label] for lora in self.loras if lora.label in self.lora_strengths}

    @property
    def window_count(self) -> int:
        """Consecutive windows the core will denoise (one up to 81 frames; see `fantasy.long_video`)."""
        from fantasy.long_video import plan_windows

        return len(plan_windows(self.checked.num_frames, self.settings.max_frames))

    @property
    def out_path(self) -> Path:
        """The finished video, named after the portrait and the seed (what the download is called)."""
        return self.folder / download_name(self.portrait_name or self.image.name, self.settings.seed)

    @property
    def chunk_dir(self) -> Path:
        return self.folder / "chunks"

    def preview_clip(self, preview: Preview) -> Path:
        """The estimate as a looping animated WebP in the job's folder; a new name each time, since a browser
        keeps showing a cached image whose URL did not change."""
        path = self.folder / "preview" / f"window{preview.window}-step{preview.step:03d}.webp"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_clip(upscale(preview.frames), path, self.settings.fps)


def download_name(portrait: str, seed: int) -> str:
    """'anna.jpg', seed 7 -> 'anna-seed7.mp4': a name a person can file (letters, digits, '.', '-', '_' kept)."""
    stem = re.sub(r"[^\w.-]+", "-", Path(portrait).stem).strip(".-")[:60] or "portrait"
    return f"{stem}-seed{seed}.mp4"


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
        preview_budget: float = PREVIEW_BUDGET, channel=None, admission: Admission | None = None,
        gpu_limit=None, checks_at_once: int = CHECKS_AT_ONCE, loras: list[PageLora] | None = None,
    ):
        """`admission`: how many generations run and wait (default: one running, 8 waiting). `gpu_limit`:
        (`fantasy.app.space.GpuTimeModel`, cap in seconds) on ZeroGPU, where a job over the cap is refused.
        `loras`: the LoRAs loaded at launch (`fantasy.app.lora_strengths.page_loras`); a request may set the
        strength of those kept as separate layers."""
        self.pipe, self.preset, self.face_checker, self.channel = pipe, preset, face_checker, channel
        self.loras = list(loras or [])
        self.admission = admission or Admission()
        self.gpu_limit = gpu_limit
        self._checking = threading.BoundedSemaphore(checks_at_once)
        self.output_root = Path(output_root)
        self.max_upload_bytes = max_upload_bytes
        self.min_chunk_seconds = min_chunk_seconds
        self.preview_budget = preview_budget  # share of the denoising time the live preview may take
        self.lock = threading.Lock()
        self._running: dict[Path, threading.Event] = {}  # job folder -> its stop flag, while it streams

    @property
    def device(self) -> str:
        return str(getattr(self.pipe, "device", "cpu"))

    def check(self, image: str | Path | None, audio: str | Path | None, controls: Controls,
              portrait_name: str | None = None) -> Job:
        """Every input check, before any model work; raises `FantasyError` with the user-facing message.

        The controls' ranges first (no file is read for a bad value), then the files, at most `checks_at_once`
        checks decoding at a time; what they decoded is handed back to the system when they end.
        """
        controls = checked_controls(controls, getattr(self.preset, "max_longest_edge", MAX_EDGE))
        strengths = check_strengths(self.loras, controls.lora_strengths)
        settings, mode = settings_from_controls(controls, trained_motion=getattr(self.pipe, "motion_context", None) is not None)
        with self._checking:
            try:
                checked = check_inputs(
                    image, audio, settings, self.preset, max_duration_s=controls.max_duration_s,
                    face_checker=self.face_checker, max_upload_bytes=self.max_upload_bytes,
                )
            finally:
                release_freed_memory()
        self._clean_old_outputs()
        folder = self.output_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"  # made by `run`
        job = Job(Path(image), Path(audio), checked, mode, folder, list(checked.notices),
                  portrait_name=portrait_name or Path(image).name, loras=self.loras, lora_strengths=strengths)
        if self.gpu_limit is not None:
            from fantasy.app.space import check_fits

            job.gpu_seconds = check_fits(job, *self.gpu_limit)
        # Room for the video, its muxed copy and the streamed chunks, checked before the job takes a slot.
        check_target(self.output_root / job.out_path.name, 3 * checked.inputs.output_bytes(checked.settings.fps))
        return job

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
            heartbeat_s=heartbeat_s, channel=self.channel, lora_scales=job.lora_scales,
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
        """One line for an API client: the state and every detail (`details`), then the notices.

        `steps_run`: the denoising steps the pipeline reported (shown instead of the requested count).
        """
        head = f"**{state}**" + (f" in {result.seconds_taken:.1f} s" if result else "")
        line = " · ".join([head, *self._detail_parts(job, result, steps_run)])
        return "\n\n".join([line, *(f"⚠️ {notice}" for notice in job.notices)])

    def summary(self, job: Job, result: Result | None = None, state: str = "Done") -> str:
        """The page's short status: what was made and how long it took (or the state), then the notices."""
        if result is None:
            head = f"**{state}**"
        else:
            head = (f"**{state}** in {_seconds(result.seconds_taken)}: a {result.num_frames / result.fps:.1f} s video, "
                    f"{result.width}×{result.height}, seed {job.settings.seed}.")
        if self.preset.demo:
            head += " (Demo model: the output is noise.)"
        return "\n\n".join([head, *(f"⚠️ {notice}" for notice in job.notices)])

    def details(self, job: Job, result: Result | None = None, steps_run: int | None = None) -> str:
        """Everything else about the run, one item a line (the page's Details section)."""
        return "\n".join(f"- {part}" for part in self._detail_parts(job, result, steps_run))

    def _detail_parts(self, job: Job, result: Result | None, steps_run: int | None) -> list[str]:
        s = job.settings
        preset = f"preset **{self.preset.name}**" + (" (random weights: output is noise)" if self.preset.demo else "")
        choice = getattr(self.pipe, "dit_choice", None)
        parts = [preset, f"device {self.device}", f"DiT {choice.describe()}" if choice is not None else "",
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
        parts.extend(describe(job.loras, job.lora_strengths))
        parts.append(job.checked.face_note)
        if job.gpu_seconds is not None:
            parts.append(f"ZeroGPU request {job.gpu_seconds} s")
        return [p for p in parts if p]

    def run_data(self, job: Job, result: Result, steps_run: int | None = None) -> dict:
        """The finished run as data (the API's JSON output beside the video and `status`'s sentence)."""
        s = job.settings
        choice = getattr(self.pipe, "dit_choice", None)
        transformer = getattr(self.pipe, "transformer", None)
        windows = max(1, result.windows)
        loras = {"loras": {lora.label: job.lora_strengths.get(lora.label, lora.loaded) for lora in job.loras}
                 } if job.loras else {}  # LoRA name -> the strength it ran at (fused ones: as loaded)
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
            "notices": list(job.notices), **loras,
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


def _seconds(seconds: float) -> str:
    """'12.3 s', '2 min 05 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"
