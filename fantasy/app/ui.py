"""The Gradio page of FantasyTalking Studio: one portrait + one speech clip -> a talking-portrait video.

This module is only widgets, validation glue and event wiring; the work lives in the public API (`fantasy`) and
the rest of the app layer (`studio`, `admission`, `progress`, `streaming`, `validation`, `controls`, `sliders`,
`space`, `launch`). It is the one module of `fantasy.app` that imports Gradio, and it uses Gradio's public API only
(no private attributes, no patched methods). Entry points: `fantasy-studio` (the console script, `main`), `python
app.py` in the repository (the Space's entry file, a thin wrapper). Without a CUDA GPU and the real weights it
starts the tiny demo preset, whose output is noise, and says so on the page. See docs/app.md and docs/space.md.
"""

from __future__ import annotations

from fantasy.app import space  # first: on ZeroGPU `spaces` must be imported before CUDA is touched

# isort: split

from fantasy import quiet  # noqa: F401  (its filters drop known third-party import noise: import it early)

# isort: split

import argparse
import random
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr

from fantasy.app.admission import Admission, StudioBusy
from fantasy.app.controls import CONTROLS, MAX_EDGE, MAX_PROMPT_CHARS
from fantasy.app.flags import (
    PRESET_NAMES,
    add_lora_flags,
    add_parallel_flags,
    add_real_flags,
    add_speed_flags,
    defaults_from_environment,
    lora_option,
    parallel_option,
    speed_options,
)
from fantasy.app.group_loading import load_in_group
from fantasy.app.launch import (
    DEFAULT_PROMPT,
    DEFAULT_SEED,
    PREVIEW_BUDGET,
    default_preset,
    slider_defaults,
)
from fantasy.app.lora_strengths import PARAMETER as LORA_PARAMETER
from fantasy.app.lora_strengths import PageLora, adjustable, fused_note, page_loras
from fantasy.app.memory import release_freed_memory
from fantasy.app.progress import STAGE_NAMES, RunClock, idle_html
from fantasy.app.sliders import effective_values
from fantasy.app.space import PageDefaults
from fantasy.app.streaming import ChunkReady, Finished, Idle, PreviewReady, StageProgress
from fantasy.app.studio import Controls, Job, Studio, preview_caption
from fantasy.app.validation import DEFAULT_DURATION_S, MAX_UPLOAD_MB, FaceChecker, default_face_check
from fantasy.errors import FantasyError, GenerationCancelled, InvalidSetting
from fantasy.examples import example_file
from fantasy.stop import StopRequested, stop_on_signals
from fantasy.weights.loras import AppliedLora, load_loras
from fantasy.weights.presets import Preset, get_preset

EXAMPLES = [[str(example_file("portrait.png")), str(example_file("speech.wav"))]]
EXAMPLE_LABELS = ["▶ Astronaut portrait + 6 s of speech"]
MAX_QUEUE = 8  # waiting generations; more are turned away with a busy message
DEMO_BANNER = ("⚠️ <b>Demo mode: a tiny random model, the output is noise.</b> No CUDA GPU with the real weights was "
               "found; the page still shows every step.")
PLAYER_HEIGHT = 360  # px: the preview, the live video and the finished video take the same place
WAIT_TICK_S = 1.0  # while waiting for the GPU, the place in line is reported this often
CLOCK_TICK_S = 1.0  # the progress line's clock is redrawn at least this often while a run is quiet
JOB_STATE_TTL_S = 600  # a checked job left in a session (the page closed before it ran) is dropped after this
DELETE_CACHE = (1800, 3600)  # Gradio's cache: every 30 min, delete what is older than an hour
API_JOB_TTL_S = 120  # an API request's checked job waits this long for its run (it starts at once or never)
PARAMETERS = ("image", "audio", "prompt", "expression", "body", "text_guidance", "audio_guidance", "audio_weight",
              "steps", "seed", "resolution", "max_duration")
ERROR_TITLES = {  # the error box's title, by the error's kind (`FantasyError` subclasses)
    "MissingInput": "Something is missing", "NoFaceFound": "No face found", "FileTooLarge": "File too large",
    "UnsupportedImage": "Unsupported portrait", "ImageTooSmall": "Portrait too small",
    "ImageTooLarge": "Portrait too large", "ImageShapeUnsupported": "Unsupported portrait shape",
    "UnsupportedAudio": "Unsupported speech file", "SilentAudio": "Silent speech", "AudioTooShort": "Speech too short",
    "InvalidSetting": "Setting out of range", "StudioBusy": "Studio busy", "OutputError": "Cannot write the video",
}
# The page's own look: the result area's progress bar and the error box (Gradio's theme does the rest).
PAGE_CSS = """
#header h1 { margin: 0 0 2px 0; font-size: 1.6em; }
#header p { margin: 0; }
.fantasy-progress { display: flex; flex-direction: column; gap: 4px; }
.fantasy-progress progress { width: 100%; height: 10px; border: none; border-radius: 5px; overflow: hidden;
                             appearance: none; background: var(--neutral-200); }
.fantasy-progress progress::-webkit-progress-bar { background: var(--neutral-200); }
.fantasy-progress progress::-webkit-progress-value { background: var(--color-accent); }
.fantasy-progress progress::-moz-progress-bar { background: var(--color-accent); }
.fantasy-progress span { font-size: var(--text-md); font-variant-numeric: tabular-nums; }
.fantasy-progress.idle span { color: var(--body-text-color-subdued); }
#error { border: 2px solid #c62828; border-radius: 8px; padding: 8px 12px; background: #fff5f5; }
#error h3 { color: #b71c1c; margin: 0 0 4px 0; }
#demo-banner { background: #fff4d6; border: 2px solid #e0a800; border-radius: 8px; padding: 6px 12px; color: #5a4300; }
"""
# Runs once the page has loaded: the status line's text becomes an ARIA live region (Gradio has no option for it; the
# element persists across updates, so screen readers announce each new status). Its text only: the block around it
# also holds Gradio's progress timer, which shows "0.0s" for a moment on each click.
ARIA_STATUS_JS = """() => {
    const status = document.querySelector('#status [data-testid="markdown"]');
    if (status) { status.setAttribute('role', 'status'); status.setAttribute('aria-live', 'polite');
                  status.setAttribute('aria-atomic', 'true'); }
}"""
# On Generate: bring the result area into view when it is not (a phone, where it sits below the inputs).
SHOW_RESULT_JS = """() => {
    const area = document.getElementById('result');
    if (!area) return;
    const box = area.getBoundingClientRect();
    if (box.top < 0 || box.top > window.innerHeight * 0.5) area.scrollIntoView({behavior: 'smooth', block: 'start'});
}"""


_DIRECTORIES = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"`]+[/\\])+(?=[^\s/\\'\"`])")


def public(message: str) -> str:
    """A message for a visitor: directories dropped from any path in it (the server's upload cache, its disks)."""
    return _DIRECTORIES.sub("", message)


def error_title(error: Exception, default: str) -> str:
    return getattr(error, "title", None) or ERROR_TITLES.get(type(error).__name__, default)


def user_error(error: FantasyError | str, title: str) -> gr.Error:
    """What an API client reads (no server path, a title by kind); not a server fault, so no traceback."""
    if isinstance(error, FantasyError):
        title = error_title(error, title)
    return gr.Error(public(str(error)), title=title, print_exception=False)


def error_box(title: str, message: str) -> dict:
    """The page's error box: stays until the next Generate."""
    return gr.Markdown(f"### {title}\n{public(message)}", visible=True)


def uploaded(payload: Any) -> tuple[str | None, str | None]:
    """(server path, the person's file name) of a file input as it arrives unprocessed (`preprocess=False`):
    Gradio has already checked that the path lies in its upload folder. (None, None) when nothing was given."""
    if payload is None or payload == "":
        return None, None
    if isinstance(payload, str):
        return payload, Path(payload).name
    if isinstance(payload, dict) and payload.get("path"):
        return str(payload["path"]), str(payload.get("orig_name") or Path(payload["path"]).name)
    raise InvalidSetting("The file did not arrive as an upload: send it as a file (gradio_client: handle_file).")


def _request_key(values) -> tuple:
    """One API request's inputs, as the join-time check and the run both see them (upload paths included)."""
    return tuple(repr(v) for v in values)


def page_defaults(pipe, preset: Preset) -> PageDefaults:
    """The sliders' starting values: the release's (or the few-step mode's), 10 s of speech at most."""
    values = slider_defaults(pipe, preset)
    return PageDefaults(int(values["steps"]), float(values["text_guidance"]), float(values["audio_guidance"]),
                        DEFAULT_DURATION_S)


def build_demo(
    pipe, preset: Preset, *, face_checker: FaceChecker | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
    max_queue: int = MAX_QUEUE, output_root: str | Path | None = None, min_chunk_seconds: float = 1.0,
    preview_budget: float = PREVIEW_BUDGET, channel=None, serve_url: str | None = None,
    zero_gpu: bool | None = None, gpu_model: space.GpuTimeModel | None = None, loras: list[AppliedLora] | None = None,
) -> gr.Blocks:
    """The whole page around a resident pipeline. Tests call this with the tiny pipeline and a fake face check.

    `channel`: the page runs on rank 0 of a context-parallel group, whose other ranks follow each job.
    `serve_url`: a thin front end; generations run on that Ray Serve deployment (`pipe` is its
    `fantasy.app.serve_client.RemoteInfo`), as many at once as it has replicas. `zero_gpu` (default: on a ZeroGPU
    Space): the defaults fit one GPU call and a request over ZeroGPU's cap is refused (`gpu_model`: the time model).
    `loras`: what `load_loras` applied at launch: a strength slider for each LoRA kept as separate layers (and the
    API's optional `lora_strengths`), a read-only line for the fused ones.
    """
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # the page and the API report progress; keep the console quiet
    limits = dict(max_upload_bytes=int(max_upload_mb * 1024 * 1024), min_chunk_seconds=min_chunk_seconds,
                  preview_budget=preview_budget)
    faces, root = face_checker or default_face_check(), output_root or Path(tempfile.gettempdir()) / "fantasy-studio"
    admission = Admission(pipe.info["replicas"] if serve_url is not None else 1, max_queue)
    defaults, gpu_limit = page_defaults(pipe, preset), None
    if space.on_zero_gpu() if zero_gpu is None else zero_gpu:
        choice = getattr(pipe, "dit_choice", None)
        model = gpu_model or space.GpuTimeModel.load(choice.mode if choice is not None else "q8_0")
        gpu_limit = (model, space.zero_gpu_cap())
        defaults = space.zero_gpu_defaults(defaults, preset.longest_edge, *gpu_limit)
    named_loras: list[PageLora] = page_loras(loras or []) if serve_url is None else []
    sliding = adjustable(named_loras)  # the LoRAs with a slider
    parameters = PARAMETERS + ((LORA_PARAMETER,) if sliding else ())  # the API's /generate
    if serve_url is None:
        studio = Studio(pipe, preset, faces, root, channel=channel, admission=admission, gpu_limit=gpu_limit,
                        loras=named_loras, **limits)
    else:
        from fantasy.app.serve_client import RemoteStudio

        studio = RemoteStudio(pipe, preset, faces, root, admission=admission, **limits)
    trained_motion = getattr(pipe, "motion_context", None) is not None
    cancels: dict[str, threading.Event] = {}  # session -> its generation's stop flag (running or waiting)
    checked_at_join: OrderedDict[tuple, tuple[float, Job | FantasyError]] = OrderedDict()  # the API's checks
    join_lock = threading.Lock()

    @space.gpu(duration=lambda job: job.gpu_seconds or space.job_gpu_seconds(job))
    def run_on_gpu(job: Job):
        # On ZeroGPU this runs in a forked worker: the stop flag stays behind, closing the stream stops it.
        yield from studio.run(job, cancel=cancels.get(job.folder.name))

    def controls_of(prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps, seed, resolution,
                    max_duration, lora_strengths=None) -> Controls:
        return Controls(
            prompt=prompt, expression=expression, body=body, text_guidance=text_guidance,
            audio_guidance=audio_guidance, audio_weight=audio_weight, steps=steps,
            seed=DEFAULT_SEED if seed is None or seed == "" else seed, longest_edge=resolution,
            max_duration_s=max_duration, lora_strengths=lora_strengths,
        )

    def check(image, audio, *controls) -> Job:
        """Every check of one request (raises `FantasyError`); uploads arrive unprocessed, as the person sent them.
        `controls`: the ten controls, then (the API, with adjustable LoRAs) the LoRA strengths' object."""
        (image_path, image_name), (audio_path, _) = uploaded(image), uploaded(audio)
        return studio.check(image_path, audio_path, controls_of(*controls), portrait_name=image_name)

    def page_check(image, audio, *values) -> Job:
        """The page's request: the ten controls, then one value per LoRA slider."""
        controls, strengths = values[:len(PARAMETERS) - 2], values[len(PARAMETERS) - 2:]
        chosen = {lora.label: value for lora, value in zip(sliding, strengths, strict=True)} if sliding else None
        return check(image, audio, *controls, chosen)

    # ---- the page: Generate = start (checks, once) -> stream (waits its turn, runs, shows) --------------------

    def start(image, audio, *controls) -> dict:
        """Check the inputs, once; never raises: an error goes to the error box, which stays until the next run."""
        busy = admission.busy()  # (the decision itself is atomic, in `stream`; this spares the checks)
        if busy is not None:
            return refused(busy, "Studio busy")
        try:
            job = page_check(image, audio, *controls)
        except FantasyError as exc:
            return refused(exc, "Cannot generate")
        clock = RunClock(job.settings.steps, job.window_count)
        return {error: gr.Markdown(visible=False), job_state: job, progress: clock.html(),
                status: "Inputs look good. Starting…", details: studio.details(job),
                preview: gr.Image(value=None, visible=False), live: gr.Video(visible="hidden"),
                final: gr.Video(value=None, visible=True, label="Result"), download: gr.DownloadButton(visible=False)}

    def refused(exc: FantasyError, default_title: str) -> dict:
        title = error_title(exc, default_title)
        said = f"Could not generate: {title.lower()}."
        return {error: error_box(title, str(exc)), job_state: said, status: said,
                progress: idle_html("Fix what the box above says, then Generate again.")}

    def stream(job: Job | str | None, request: gr.Request):
        """Wait for a slot (first come, first served), run, and show the preview, the live video and then the
        finished video in the same place, with the progress line above them."""
        if not isinstance(job, Job):  # `start` refused the inputs (`job` is its status line); its error box says why.
            # The status is said again: a generator that shows nothing (or only skips) may leave the status line as it
            # was before the click once it ends.
            yield {status: job if isinstance(job, str) else gr.skip()}
            return
        clock = RunClock(job.settings.steps, job.window_count)
        try:
            ticket = admission.enter()
        except StudioBusy as exc:
            yield {**refused(exc, "Studio busy"), job_state: None}
            return
        session = request.session_hash or job.folder.name
        stop = cancels[session] = cancels[job.folder.name] = threading.Event()
        try:
            told = None
            while not admission.wait(ticket, timeout=WAIT_TICK_S):
                if stop.is_set():
                    yield {status: "**Stopped.** It had not started.", progress: idle_html(), job_state: None}
                    return
                clock.waiting(admission.ahead(ticket))
                update = {progress: clock.html()}
                if clock.ahead != told:  # the live region speaks when the place changes, not every second
                    told = clock.ahead
                    update[status] = f"Waiting for the GPU: {clock.line().split(' · ')[1]}."
                yield update
            clock.stage = "starting"
            yield {status: "Generating…", progress: clock.html(), job_state: None}
            yield from follow(job, clock, stop)
        finally:
            admission.leave(ticket)
            stop.set()
            cancels.pop(job.folder.name, None)
            if cancels.get(session) is stop:
                del cancels[session]
            release_freed_memory()

    def follow(job: Job, clock: RunClock, stop: threading.Event):
        """The run's events, as page updates."""
        shown = time.monotonic()
        stage, streaming = None, False
        try:
            for event in run_on_gpu(job):
                now = time.monotonic()
                if isinstance(event, Idle):  # a turn for Gradio: a closed page ends this generator here
                    if now - shown >= CLOCK_TICK_S:
                        shown = now
                        yield {progress: clock.html()}
                    else:
                        yield {progress: gr.skip()}
                elif isinstance(event, StageProgress):
                    clock.update(event.stage, event.fraction)
                    update = {progress: clock.html()}
                    if event.stage != stage:  # the live region speaks at each new stage, not at every step
                        stage = event.stage
                        update[status] = f"{STAGE_NAMES.get(stage, stage)}…"
                    shown = now
                    yield update
                elif isinstance(event, PreviewReady):
                    clip = str(job.preview_clip(event.preview))  # encoded here, off the denoising thread
                    yield {preview: gr.Image(clip, visible=True, label=preview_caption(event.preview)),
                           final: gr.Video(visible=False)}
                elif isinstance(event, ChunkReady):
                    if not streaming:  # shown first: an update of its properties does not carry a stream's chunk
                        streaming = True
                        yield {live: gr.Video(visible=True), preview: gr.Image(value=None, visible=False),
                               final: gr.Video(visible=False)}
                    yield {live: str(event.chunk.path)}
                elif isinstance(event, Finished):
                    clock.finish()
                    path = str(event.result.path)
                    yield {final: gr.Video(path, visible=True, label=f"Result: {event.result.path.name}"),
                           live: gr.Video(visible="hidden"), preview: gr.Image(value=None, visible=False),
                           download: gr.DownloadButton("⬇ Download the video", value=path, visible=True),
                           status: studio.summary(job, event.result), progress: idle_html(""),
                           details: studio.details(job, event.result, steps_run=event.steps_run)}
        except GenerationCancelled:
            clock.finish("stopped")
            yield {status: "**Stopped.** No video was written.", progress: idle_html(),
                   preview: gr.Image(value=None, visible=False), live: gr.Video(visible="hidden"),
                   final: gr.Video(value=None, visible=True, label="Result")}
        except FantasyError as exc:
            clock.finish("stopped")
            title = error_title(exc, "Generation failed")
            yield {error: error_box(title, str(exc)), status: f"Generation failed: {title.lower()}.",
                   progress: idle_html(), preview: gr.Image(value=None, visible=False),
                   live: gr.Video(visible="hidden"), final: gr.Video(value=None, visible=True, label="Result")}

    def stop_step(request: gr.Request) -> Any:
        """Stop: the running worker stops at its next step (Gradio also cancels the streaming event)."""
        flag = cancels.get(request.session_hash)
        if flag is None:
            return gr.skip()
        flag.set()
        return "**Stopped.** No video was written."

    # ---- the API: /generate checks at join (each error on its parameter), then waits its turn and runs ----------

    def admit_checked(*values) -> list[dict]:
        """The API's /generate, as it asks to join the queue: every input check (at most `CHECKS_AT_ONCE` at a
        time). An error about one input is reported on that parameter; others (busy, a full disk) when the
        request starts, at once. The checked job is kept for the run, so nothing is decoded twice."""
        valid = [gr.validate(True, "")] * len(values)
        if admission.busy() is not None:  # refused when it starts (atomically); no need to decode it
            return valid
        try:
            outcome: Job | FantasyError = check(*values)
        except FantasyError as exc:
            if exc.concerns in parameters:
                return [gr.validate(name != exc.concerns, public(str(exc)) if name == exc.concerns else "")
                        for name in parameters]
            outcome = exc
        now = time.monotonic()
        with join_lock:
            checked_at_join[_request_key(values)] = (now, outcome)
            while checked_at_join and (len(checked_at_join) > 4 * max_queue + 16
                                       or next(iter(checked_at_join.values()))[0] < now - API_JOB_TTL_S):
                checked_at_join.popitem(last=False)  # runs that never came (a client gone before its turn)
        return valid

    def api_generate(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                     seed, resolution, max_duration, lora_strengths=None, progress=gr.Progress()):  # noqa: B008
        """Portrait + speech -> the finished talking-video mp4, a status line and the run as JSON (same checks as
        the page). `lora_strengths` is a parameter only when LoRAs were kept as separate layers."""
        # A generator, though it returns one result: Gradio stops a generator between two yields when the
        # client cancels (`job.cancel()`) or goes away, whereas a plain function would run to its end.
        # Closing it closes `run_on_gpu`, which stops the worker at its next step.
        values = (image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps, seed,
                  resolution, max_duration, *((lora_strengths,) if sliding else ()))
        with join_lock:
            _, job = checked_at_join.pop(_request_key(values), (0.0, None))
        try:
            job = job or check(*values)
            if isinstance(job, FantasyError):
                raise job
            ticket = admission.enter()
        except FantasyError as exc:
            raise user_error(exc, "Cannot generate") from None
        try:
            while not admission.wait(ticket, timeout=WAIT_TICK_S):
                yield gr.skip(), gr.skip(), gr.skip()
                progress(0.0, desc=f"Waiting for the GPU: {admission.ahead(ticket)} ahead")
            for event in run_on_gpu(job):
                if isinstance(event, Idle | StageProgress):
                    yield gr.skip(), gr.skip(), gr.skip()
                    if isinstance(event, StageProgress):
                        _show_progress(progress, event, job)
                elif isinstance(event, Finished):
                    yield (str(event.result.path), studio.status(job, event.result, steps_run=event.steps_run),
                           studio.run_data(job, event.result, steps_run=event.steps_run))
                    return
        except FantasyError as exc:
            raise user_error(exc, "Generation failed") from None
        finally:
            admission.leave(ticket)
            release_freed_memory()
        raise user_error("The generation ended without a video.", "Generation failed")

    # ---- the page ---------------------------------------------------------------------------------------------

    with gr.Blocks(title="FantasyTalking Studio", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown("# FantasyTalking Studio\nOne portrait + one speech clip → a talking-portrait video "
                    "([FantasyTalking](https://arxiv.org/abs/2504.04842) on Wan2.1-I2V).", elem_id="header")
        if preset.demo:
            gr.HTML(DEMO_BANNER, elem_id="demo-banner", padding=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320, elem_id="inputs"):
                with gr.Row():
                    image = gr.Image(label="Portrait (a photo with one face)", type="filepath", image_mode=None,
                                     height=210, sources=["upload", "webcam"], elem_id="portrait")
                    audio = gr.Audio(label="Speech (any audio or video file)", type="filepath",
                                     sources=["upload", "microphone"], elem_id="speech")
                gr.Examples(EXAMPLES, inputs=[image, audio], cache_examples=False, label="Or try the example",
                            example_labels=EXAMPLE_LABELS, elem_id="examples")
                prompt = gr.Textbox(label="Prompt (what the video shows; Body motion adds motion words)",
                                    value=DEFAULT_PROMPT, lines=1, max_lines=4, elem_id="prompt",
                                    max_length=MAX_PROMPT_CHARS)
                with gr.Row():
                    expression = slider("expression", 0.5, info=EXPRESSION_INFO[trained_motion])
                    body = slider("body", 0.5, info=BODY_INFO[trained_motion])
                effective = gr.Markdown(effective_values(0.5, defaults.audio_guidance, 1.0, trained_motion),
                                        elem_id="effective")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate", scale=3, min_width=120)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=80)
                with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
                    with gr.Row():
                        text_guidance = slider("text_guidance", defaults.text_guidance)
                        audio_guidance = slider("audio_guidance", defaults.audio_guidance)
                    with gr.Row():
                        audio_weight = slider("audio_weight", 1.0)
                        steps = slider("steps", defaults.steps)
                    with gr.Row():
                        edge = slider("resolution", preset.longest_edge,
                                      maximum=min(APP_MAX_EDGE, preset.max_longest_edge))
                        duration = slider("max_duration", defaults.max_duration_s)
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=DEFAULT_SEED, precision=0, minimum=0, label="Seed", scale=3,
                                         info=CONTROLS["seed"].help, elem_id="seed")
                        dice = gr.Button("Random seed", scale=1, elem_id="random-seed")
                    lora_sliders = [lora_slider(lora, i) for i, lora in enumerate(sliding)]
                    if fused_note(named_loras):
                        gr.Markdown(fused_note(named_loras), elem_id="lora-fused")
            with gr.Column(scale=6, min_width=320, elem_id="result"):
                status = gr.Markdown(ready_text(defaults), label="Status", elem_id="status")
                progress = gr.HTML(idle_html(""), elem_id="progress", padding=False)
                error = gr.Markdown(visible=False, elem_id="error")
                preview = gr.Image(label="Preview while denoising", visible=False, interactive=False,
                                   height=PLAYER_HEIGHT, buttons=["fullscreen"], elem_id="preview")
                # mounted from the start (visible="hidden"), so that its player is ready for the first chunk
                live = gr.Video(label="Live (streams while decoding)", streaming=True, autoplay=True,
                                elem_id="live", height=PLAYER_HEIGHT, visible="hidden")
                final = gr.Video(label="Result", elem_id="final", height=PLAYER_HEIGHT, interactive=False,
                                 buttons=["download"], autoplay=True)
                download = gr.DownloadButton("Download", visible=False, elem_id="download", variant="primary")
                with gr.Accordion("Details", open=False, elem_id="details-box"):
                    details = gr.Markdown(f"- preset **{preset.name}**\n- device {studio.device}\n"
                                          f"- {studio.face_checker.note}", elem_id="details")
        job_state = gr.State(None, time_to_live=JOB_STATE_TTL_S)

        inputs = [image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                  seed, edge, duration]
        page_inputs = inputs + lora_sliders
        page_outputs = [error, job_state, progress, status, details, preview, live, final, download]
        generate_btn.click(None, js=SHOW_RESULT_JS)
        started = generate_btn.click(start, page_inputs, page_outputs, concurrency_id="checks", concurrency_limit=4,
                                     preprocess=False, api_name="start", api_visibility="undocumented",
                                     show_progress="hidden")
        streaming = started.then(stream, [job_state], page_outputs, concurrency_id="gpu",
                                 concurrency_limit=None, api_name="generate_stream",
                                 api_visibility="undocumented", show_progress="hidden")
        stop_btn.click(stop_step, None, status, cancels=[streaming], queue=False, api_visibility="private")
        dice.click(lambda: random.randrange(2**31), None, seed, queue=False, api_visibility="private")
        for control in (expression, audio_guidance, audio_weight):
            control.change(lambda e, g, w: effective_values(e, g, w, trained_motion),
                           [expression, audio_guidance, audio_weight], effective, queue=False,
                           api_visibility="private", show_progress="hidden")
        api_trigger = gr.Button(visible=False)
        api_details = gr.JSON(label="Details", visible=False)  # the API's third output: the run as data (`Studio.details`)
        if sliding:  # LoRA name -> strength; a LoRA left out runs at its loaded strength
            inputs.append(gr.JSON(label="LoRA strengths", visible=False))
        api_trigger.click(api_generate, inputs, [final, status, api_details], concurrency_id="gpu",
                          concurrency_limit=None, api_name="generate",
                          validator=admit_checked, preprocess=False)
        demo.load(None, js=ARIA_STATUS_JS)
    # Generations enter their handler at once (concurrency_limit=None): `admission` decides, atomically, who runs,
    # who waits (the handler reports the place in line) and who is turned away. Gradio's own queue bound only backs
    # it up (it is checked before a join's validator, so simultaneous joins all pass it, and its text is fixed).
    demo.queue(max_size=4 * max_queue + 16, default_concurrency_limit=1)
    demo.fantasy_studio = studio  # for `main`: stop running jobs and remove their files on the way out
    demo.fantasy_channel = channel  # `main` closes the group when the page stops
    return demo


def ready_text(defaults: PageDefaults) -> str:
    """The status before the first run: what to do (and, on ZeroGPU, what the defaults ask of it)."""
    text = "**Ready.** Add a portrait and a speech clip (or click the example), then Generate."
    if defaults.gpu_seconds is not None:
        text += f" With these settings a video asks ZeroGPU for {defaults.gpu_seconds} s."
    return text


def slider(name: str, value: float, info: str | None = None, maximum: float | None = None) -> gr.Slider:
    """A slider from its control's range and help (`fantasy.app.controls.CONTROLS`)."""
    control = CONTROLS[name]
    return gr.Slider(control.minimum, control.maximum if maximum is None else maximum, value=value, step=control.step,
                     label=control.label, info=info or control.help, elem_id=name.replace("_", "-"))


def lora_slider(lora: PageLora, index: int) -> gr.Slider:
    """A LoRA's strength for the next video (`fantasy.app.lora_strengths.STRENGTH`), labelled with its file name."""
    control = lora.control()
    return gr.Slider(control.minimum, control.maximum, value=lora.loaded, step=control.step, label=lora.label,
                     info=control.help, elem_id=f"lora-strength-{index}")


def _progress_parts(event: StageProgress, job: Job) -> tuple[float | tuple[int, int], str, str | None]:
    """(progress value, description, unit) for an API client: denoising counts steps over all windows."""
    if event.stage != "denoise":
        return event.fraction, STAGE_NAMES.get(event.stage, event.stage), None
    windows = job.window_count
    total = job.settings.steps * windows
    desc = STAGE_NAMES["denoise"]
    if windows > 1:
        desc += f" (window {min(windows, int(event.fraction * windows) + 1)} of {windows})"
    return (round(event.fraction * total), total), desc, "steps"


def _show_progress(progress: gr.Progress, event: StageProgress, job: Job) -> None:
    value, desc, unit = _progress_parts(event, job)
    progress(value, desc=desc, unit=unit or "steps")


def launch_options(host: str | None = None, port: int | None = None, share: bool = False,
                   max_upload_mb: float = MAX_UPLOAD_MB) -> dict[str, Any]:
    """`demo.launch` arguments: Gradio refuses uploads over the limit before they reach the checks."""
    return {"server_name": host, "server_port": port, "share": share,
            "max_file_size": int(max_upload_mb * 1024 * 1024), "css": PAGE_CSS}


# Slider help, by whether trained motion-module weights are loaded (see fantasy.model.motion).
EXPRESSION_INFO = {False: CONTROLS["expression"].help,
                   True: "Expression coefficient of the trained motion module (0.5: the release's average)."}
BODY_INFO = {False: CONTROLS["body"].help,
             True: "Body-motion coefficient of the trained motion module (0.5: the release's average)."}


def app_parser() -> tuple[argparse.ArgumentParser, list]:
    """The app's flags, and those a Space sets through the environment (`FANTASY_<FLAG>`: all but where to listen)."""
    parser = argparse.ArgumentParser(
        description="FantasyTalking Studio web app. Every flag but --host, --port and --share can also be set "
                    "by an environment variable FANTASY_<FLAG> (e.g. FANTASY_STEP_CACHE=fbc, FANTASY_BATCH_GUIDANCE=1); "
                    "the command line wins.")
    from_env = [parser.add_argument(
        "--preset", choices=PRESET_NAMES, default=None,
        help="default (auto, as the CLI's): real with a CUDA GPU and the weights present, else tiny (demo, output is "
             "noise)")]
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    parser.add_argument("--share", action="store_true", help="public gradio.live link (needs internet access)")
    add_lora_flags(parser)  # --lora reads $FANTASY_LORA itself (comma-separated LoRAs)
    from_env += add_speed_flags(parser)
    from_env += add_parallel_flags(parser)
    from_env.append(parser.add_argument(
        "--serve", default=None, metavar="URL",
        help="thin front end: run generations on a `python -m fantasy serve` deployment at URL "
             "(e.g. http://127.0.0.1:8000); no model is loaded here"))
    from_env.append(parser.add_argument(
        "--adapter", default=None,
        help="adapter or training checkpoint (modules.safetensors from `python -m fantasy train`); default the "
             "preset's"))
    from_env += [a for a in add_real_flags(parser) if "--comfy-models" not in a.option_strings]  # reads its own
    return parser, from_env


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> argparse.Namespace:
    """The flags, their defaults taken from `FANTASY_<FLAG>` variables (`environ`, default os.environ) when set."""
    parser, from_env = app_parser()
    args = parser.parse_args(argv)
    used = defaults_from_environment(from_env, environ)  # after the command line parsed: its errors come first
    args = parser.parse_args(argv)
    args.from_environment = used
    return args


APP_MAX_EDGE = MAX_EDGE  # the resolution slider's maximum: the automatic DiT choice must fit it


def real_options(args: argparse.Namespace) -> dict[str, Any]:
    """`load_pipeline` options of the real preset: DiT storage (auto: fits the largest resolution), VRAM mode, the
    ComfyUI folder whose files it reads."""
    from fantasy.app.flags import comfy_option

    return {"dit": args.dit, "vram": args.vram, "fit_size": APP_MAX_EDGE, "fit_batch": 3 if args.batch_guidance else 1,
            "comfy_models": comfy_option(args, "real")}


def create_demo(args: argparse.Namespace) -> gr.Blocks | None:
    """Load the models once (they stay resident) and build the page.

    Under `torchrun ... app.py --context-parallel N` every rank loads the models; rank 0 builds the page and
    the others follow its jobs until it shuts the group down (then this returns None).
    """
    if args.serve:
        if args.context_parallel is not None:
            raise InvalidSetting("--serve runs every generation on the deployment: drop --context-parallel here and "
                                 "start the deployment with `python -m fantasy serve --context-parallel N`")
        return create_front_end(args.serve)
    preset = get_preset(args.preset or default_preset(args.adapter, args.comfy_models))
    options = speed_options(args)  # spelling errors before the models load
    loras, lora_states = lora_option(args)  # every LoRA file read and checked before the models load
    parallel = parallel_option(args, vram=args.vram if preset.name == "real" else "resident", heads=preset.dit_heads)
    channel, device = None, None
    if parallel is not None:
        from fantasy.app.parallel_jobs import join_group

        channel, device = join_group(timeout_s=parallel.timeout_s)
    say = print if channel is None or channel.leader else (lambda *a, **k: None)
    say(f"[app] preset {preset.name}: {preset.summary}", flush=True)
    if getattr(args, "from_environment", None):
        say("[app] from the environment: " + ", ".join(f"{k}={v}" for k, v in args.from_environment.items()), flush=True)

    applied_loras: list[AppliedLora] = []

    def with_loras(pipe) -> None:
        applied_loras.extend(load_loras(pipe, loras, fuse=options.fuse_lora, states=lora_states))
        for applied in applied_loras:
            say(f"[app] {applied}", flush=True)

    pipe, lines = load_in_group(preset, device, args.adapter, real_options(args) if preset.name == "real" else None,
                                options, parallel, before_speed=with_loras)  # the same weights in every process
    if getattr(pipe, "dit_choice", None) is not None:
        say(f"[app] DiT: {pipe.dit_choice.describe()}", flush=True)
    for line in lines:
        say(f"[app] speed: {line}", flush=True)
    if channel is not None and not channel.leader:
        pipe.set_progress_bar_config(disable=True)
        try:
            log = channel.follow(pipe, preset)
        except KeyboardInterrupt:  # Ctrl-C reaches every rank under torchrun
            return None
        print(f"[app] rank {channel.rank}: followed {len(log.jobs)} jobs; rank 0 closed the group", flush=True)
        return None
    # On ZeroGPU the main process has no real GPU: the face check runs on the CPU there.
    faces = default_face_check(device="cpu" if space.on_zero_gpu() else None,
                               allow_download=None if space.on_spaces() else False)  # None: unless HF_HUB_OFFLINE
    return build_demo(pipe, preset, face_checker=faces, channel=channel, loras=applied_loras)


def create_front_end(url: str) -> gr.Blocks:
    """The page over a Ray Serve deployment: the models live there, the checks and the streaming here."""
    from fantasy.app.serve_client import fetch_info

    remote = fetch_info(url)
    preset = get_preset(remote.info["preset"])
    print(f"[app] front end for {remote.device}: preset {preset.name}", flush=True)
    return build_demo(remote, preset, face_checker=default_face_check(allow_download=False), serve_url=remote.url)


# Spaces import the app and need the models ready at import time (ZeroGPU packs them before serving).
def space_demo() -> gr.Blocks | None:
    """The page a Space's app.py builds at import time (ZeroGPU packs the loaded models before serving); its
    settings come from FANTASY_<FLAG> variables. A bad one, or missing weights: one line in the Space's log."""
    try:
        return create_demo(parse_args([]))
    except FantasyError as exc:
        raise SystemExit(f"error: {exc}") from None


def main(argv: list[str] | None = None, prebuilt: gr.Blocks | None = None) -> None:
    """Build (unless `prebuilt`: a Space's app.py built it at import time) and serve. SIGINT, SIGTERM and SIGHUP
    stop the server, stop a running generation and delete its unfinished files, then exit with 128 + the signal
    number."""
    try:
        args = parse_args(argv)
    except FantasyError as exc:  # a bad FANTASY_<FLAG> variable
        raise SystemExit(f"error: {exc}") from None
    demo = prebuilt
    try:
        with stop_on_signals():
            try:
                if demo is None or args.preset is not None or args.context_parallel is not None or args.serve:
                    demo = create_demo(args)
            except FantasyError as exc:  # e.g. weights missing, an unusable speed flag: one line, no traceback
                raise SystemExit(f"error: {exc}") from None
            if demo is None:  # a follower of a context-parallel group: rank 0 has closed it
                return
            demo.launch(**launch_options(args.host, args.port, args.share))
    except StopRequested as stop:
        studio = getattr(demo, "fantasy_studio", None)
        stopped = studio.shutdown() if studio is not None else 0  # first: closing the server forgets its runs
        if demo is not None:
            demo.close()
            print(f"[app] stopped ({stop}); " + (f"{stopped} running generation stopped, its files removed"
                                                  if stopped else "no generation was running"), flush=True)
        raise SystemExit(stop.exit_status) from None  # (a follower of a context-parallel group says nothing)
    finally:
        channel = getattr(demo, "fantasy_channel", None)
        if channel is not None:
            channel.shutdown()  # the followers return (if they are still there: a signal may have ended them)
