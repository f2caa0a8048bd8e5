"""The Gradio page of FantasyTalking Studio: one portrait + one speech clip -> a talking-portrait video.

This module is only widgets, validation glue and event wiring; the work lives in the public API (`fantasy`) and
the rest of the app layer (`studio`, `streaming`, `validation`, `sliders`, `launch`). It is the one module of
`fantasy.app` that imports Gradio. Entry points: `fantasy-studio` (the console script, `main`), `python app.py`
in the repository (the Space's entry file, a thin wrapper). Without a CUDA GPU and the real weights it starts the
tiny demo preset, whose output is noise, and says so on the page.
"""

from __future__ import annotations

from fantasy.app import space  # first: on ZeroGPU `spaces` must be imported before CUDA is touched

# isort: split

from fantasy import quiet  # noqa: F401  (its filters drop known third-party import noise: import it early)

# isort: split

import argparse
import os
import random
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import UnidentifiedImageError

from fantasy.app.flags import (
    PRESET_NAMES,
    add_lora_flags,
    add_parallel_flags,
    add_real_flags,
    add_speed_flags,
    lora_option,
    parallel_option,
    speed_options,
)
from fantasy.app.group_loading import load_in_group
from fantasy.app.launch import (
    DEFAULT_PROMPT,
    DEFAULT_SEED,
    MIN_SIDE,
    PREVIEW_BUDGET,
    SIDE_MULTIPLE,
    default_preset,
    slider_defaults,
)
from fantasy.app.streaming import ChunkReady, Finished, Idle, PreviewReady, StageProgress
from fantasy.app.studio import Controls, Job, Studio, preview_caption
from fantasy.app.validation import (
    DEFAULT_DURATION_S,
    MAX_DURATION_S,
    MAX_UPLOAD_MB,
    MIN_DURATION_S,
    FaceChecker,
    default_face_check,
)
from fantasy.errors import FantasyError, GenerationCancelled, InvalidSetting
from fantasy.examples import example_file
from fantasy.stop import StopRequested, stop_on_signals
from fantasy.weights.loras import load_loras
from fantasy.weights.presets import Preset, get_preset

EXAMPLES = [[str(example_file("portrait.png")), str(example_file("speech.wav"))]]
MAX_QUEUE = 8  # waiting generations; more are turned away with a busy message
BUSY = "The studio is busy: {waiting} waiting, the most it queues. Please try again in a few minutes."
DEMO_BANNER = (
    "⚠️ <b>Demo mode: tiny random model.</b> No CUDA GPU with the real weights was found, so the app runs the "
    "<code>tiny</code> preset. <b>The output is noise from a random model</b>: it only shows that the whole path "
    "works (upload, checks, denoising, streaming, download). Run on a GPU with the weights for real talking videos."
)
BANNER_STYLE = "background:#fff4d6;border:2px solid #e0a800;border-radius:8px;padding:10px 14px;color:#5a4300"
PLAYER_HEIGHT = 300  # px: both players, the status line and the download fit one screen whatever the video size
STAGE_NAMES = {"audio": "Encoding speech", "denoise": "Denoising", "decode": "Decoding video",
               "queued": "Waiting for a free GPU on the server"}


def pass_original_upload(component: gr.Image) -> gr.Image:
    """Hand `fantasy.media.image.load_portrait` the uploaded file itself, as the CLI would.

    Left to itself Gradio opens the upload with PIL before our function runs: converting to RGB turns
    transparent pixels black and clips 16-bit greys, and a pixel bomb fails with PIL's own error. Our loader
    checks the pixel limit from the header and converts every mode (transparency on white). Webcam captures
    sent as data URLs still go through Gradio. (The method is wrapped on the instance: a subclass would make
    Gradio write a .pyi stub next to this file.)
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is not None and payload.path and not str(payload.url or "").startswith("data:"):
            return str(payload.path)
        try:
            return original(payload)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            name = getattr(payload, "orig_name", None) or "the portrait"
            raise user_error(f"Could not read '{name}' as an image ({type(exc).__name__}). Use a PNG, JPEG or WebP "
                             "photo.", "Unsupported portrait") from None

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


_DIRECTORIES = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"`]+[/\\])+(?=[^\s/\\'\"`])")


def public(message: str) -> str:
    """A message for a visitor: directories dropped from any path in it (the server's upload cache, its disks)."""
    return _DIRECTORIES.sub("", message)


def user_error(message: str, title: str) -> gr.Error:
    """What the visitor reads (no server path); not a server fault, so no traceback in the server's console."""
    return gr.Error(public(message), title=title, print_exception=False)


def _request_key(values) -> tuple:
    """One API request's inputs, as the join-time check and the run both see them (upload paths included)."""
    return tuple(repr(v) for v in values)


def waiting_generations(demo: gr.Blocks) -> int:
    """Generations waiting in Gradio's queue for the GPU slot (not counting the running one).

    Reads the queue's per-concurrency-group list (Gradio 6); 0 when that changes shape, and Gradio's own
    `max_size` (set larger) then still bounds the queue.
    """
    try:
        return len(demo._queue.event_queue_per_concurrency_id["gpu"].queue)
    except (AttributeError, KeyError, TypeError):
        return 0


def build_demo(
    pipe, preset: Preset, *, face_checker: FaceChecker | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
    max_queue: int = MAX_QUEUE, output_root: str | Path | None = None, min_chunk_seconds: float = 1.0,
    preview_budget: float = PREVIEW_BUDGET, channel=None, serve_url: str | None = None,
) -> gr.Blocks:
    """The whole page around a resident pipeline. Tests call this with the tiny pipeline and a fake face check.

    `channel`: the page runs on rank 0 of a context-parallel group, whose other ranks follow each job.
    `serve_url`: a thin front end; generations run on that Ray Serve deployment (`pipe` is its
    `fantasy.app.serve_client.RemoteInfo`), as many at once as it has replicas.
    """
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # the page and the API report progress; keep the console quiet
    limits = dict(max_upload_bytes=int(max_upload_mb * 1024 * 1024), min_chunk_seconds=min_chunk_seconds,
                  preview_budget=preview_budget)
    faces, root = face_checker or default_face_check(), output_root or Path(tempfile.gettempdir()) / "fantasy-studio"
    if serve_url is None:
        studio = Studio(pipe, preset, faces, root, channel=channel, **limits)
    else:
        from fantasy.app.serve_client import RemoteStudio

        studio = RemoteStudio(pipe, preset, faces, root, **limits)
    generations_at_once = pipe.info["replicas"] if serve_url is not None else 1
    cancels: dict[str, threading.Event] = {}  # session -> its running generation's stop flag
    defaults = slider_defaults(pipe, preset)
    page: dict[str, gr.Blocks] = {}  # the Blocks, once built (for the queue length)

    def busy_message() -> str | None:
        waiting = waiting_generations(page["demo"]) if page else 0
        return BUSY.format(waiting=f"{waiting} video{'s' * (waiting != 1)}") if waiting >= max_queue else None

    def admit(*values) -> list[dict]:
        """Runs when a generation asks to join the queue: turned away with our busy message when it is full.

        (Gradio's own queue-full replies are fixed texts that differ between the page and the API client.)
        """
        busy = busy_message()
        return [gr.validate(busy is None, busy or "")] + [gr.validate(True, "")] * (len(values) - 1)

    @space.gpu(duration=space.job_gpu_seconds)
    def run_on_gpu(job: Job):
        # On ZeroGPU this runs in a forked worker: the stop flag stays behind, closing the stream stops it.
        yield from studio.run(job, cancel=cancels.get(job.folder.name))

    def controls_of(prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps, seed, resolution,
                    max_duration) -> Controls:
        return Controls(
            prompt=prompt, expression=expression, body=body, text_guidance=text_guidance,
            audio_guidance=audio_guidance, audio_weight=audio_weight, steps=steps,
            seed=DEFAULT_SEED if seed is None else seed, longest_edge=resolution, max_duration_s=max_duration,
        )

    def check(image, audio, *controls) -> Job:
        try:
            return studio.check(image, audio, controls_of(*controls))
        except FantasyError as exc:
            raise user_error(str(exc), "Cannot generate") from None

    checked_at_join: OrderedDict[tuple, Job] = OrderedDict()  # the API's checked jobs, waiting for their turn
    join_lock = threading.Lock()

    def admit_checked(*values) -> list[dict]:
        """The API's /generate, as it asks to join the queue: busy, or every input check (before the request
        waits for, or holds, the generation slot). The checked job is kept for the run, so nothing is decoded
        twice; an error is shown on the input it concerns."""
        busy = busy_message()
        if busy is not None:
            return [gr.validate(False, busy)] + [gr.validate(True, "")] * (len(values) - 1)
        try:
            job = studio.check(values[0], values[1], controls_of(*values[2:]))
        except FantasyError as exc:
            where = 1 if exc.concerns == "audio" else 0
            return [gr.validate(i != where, public(str(exc)) if i == where else "") for i in range(len(values))]
        with join_lock:
            checked_at_join[_request_key(values)] = job
            while len(checked_at_join) > 4 * max_queue + 16:  # runs that never came (a client gone while waiting)
                checked_at_join.popitem(last=False)
        return [gr.validate(True, "")] * len(values)

    def check_step(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                   seed, resolution, max_duration) -> str:
        """Fast checks outside the GPU queue, so a bad upload is reported at once."""
        busy = busy_message()
        if busy:
            raise user_error(busy, "Busy")
        job = check(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                    seed, resolution, max_duration)
        for notice in job.notices:
            gr.Warning(notice)
        return "Inputs look good. " + ("Waiting for the running generation…" if studio.lock.locked() else "Starting…")

    def stream_step(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                    seed, resolution, max_duration, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """The Generate button: a preview clip while denoising, chunks into the player, then the mp4 for download."""
        job = check(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                    seed, resolution, max_duration)
        session = request.session_hash or job.folder.name
        stop = cancels[session] = cancels[job.folder.name] = threading.Event()
        hidden = gr.Image(value=None, visible=False)
        previewing = False  # the preview is on the page (the streamed video replaces it)
        yield gr.skip(), None, studio.status(job, state="Generating…"), hidden
        try:
            for event in run_on_gpu(job):
                if isinstance(event, Idle):  # a turn for Gradio: a closed page ends this generator here
                    yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
                elif isinstance(event, StageProgress):
                    # Yield first, then report progress: a yield after a progress update hides the bar.
                    # Yielding often also lets Gradio close this generator promptly when the event is cancelled.
                    yield gr.skip(), gr.skip(), studio.status(job, state=_progress_text(event, job)), gr.skip()
                    _show_progress(progress, event, job)
                elif isinstance(event, PreviewReady):
                    previewing = True
                    clip = str(job.preview_clip(event.preview))  # encoded here, off the denoising thread
                    yield gr.skip(), gr.skip(), gr.skip(), gr.Image(clip, visible=True,
                                                                    label=preview_caption(event.preview))
                elif isinstance(event, ChunkReady):
                    yield str(event.chunk.path), gr.skip(), gr.skip(), hidden if previewing else gr.skip()
                    previewing = False
                elif isinstance(event, Finished):
                    yield (gr.skip(), str(event.result.path),
                           studio.status(job, event.result, steps_run=event.steps_run), gr.skip())
        except GenerationCancelled:
            yield gr.skip(), gr.skip(), studio.status(job, state="Stopped"), hidden
        except FantasyError as exc:
            raise user_error(str(exc), "Generation failed") from None
        finally:
            stop.set()
            cancels.pop(job.folder.name, None)
            if cancels.get(session) is stop:
                del cancels[session]

    def api_generate(image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                     seed, resolution, max_duration, progress=gr.Progress()):  # noqa: B008
        """Portrait + speech -> the finished talking-video mp4, a status line and the run as JSON (same checks as
        the page)."""
        # A generator, though it returns one result: Gradio stops a generator between two yields when the
        # client cancels (`job.cancel()`) or goes away, whereas a plain function would run to its end.
        # Closing it closes `run_on_gpu`, which stops the worker at its next step.
        values = (image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps, seed,
                  resolution, max_duration)
        with join_lock:
            job = checked_at_join.pop(_request_key(values), None)
        job = job or check(*values)
        try:
            for event in run_on_gpu(job):
                if isinstance(event, Idle | StageProgress):
                    yield gr.skip(), gr.skip(), gr.skip()
                    if isinstance(event, StageProgress):
                        _show_progress(progress, event, job)
                elif isinstance(event, Finished):
                    yield (str(event.result.path), studio.status(job, event.result, steps_run=event.steps_run),
                           studio.details(job, event.result, steps_run=event.steps_run))
                    return
        except FantasyError as exc:
            raise user_error(str(exc), "Generation failed") from None
        raise user_error("The generation ended without a video.", "Generation failed")

    def stop_step(request: gr.Request) -> Any:
        """Stop: the running worker stops at its next step (Gradio also cancels the streaming event)."""
        flag = cancels.get(request.session_hash)
        if flag is None:
            return gr.skip()
        flag.set()
        return "**Stopped.** The generation was stopped; no video was written."

    with gr.Blocks(title="FantasyTalking Studio") as demo:
        gr.Markdown("# FantasyTalking Studio\nOne portrait + one speech clip → a talking-portrait video "
                    "([FantasyTalking](https://arxiv.org/abs/2504.04842) on Wan2.1-I2V).")
        if preset.demo:
            gr.HTML(f'<div style="{BANNER_STYLE}">{DEMO_BANNER}</div>', elem_id="demo-banner")
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    image = pass_original_upload(gr.Image(label="Portrait", type="filepath", image_mode=None,
                                                          height=320, sources=["upload", "webcam"],
                                                          elem_id="portrait"))
                    with gr.Column():
                        audio = gr.Audio(label="Speech", type="filepath", sources=["upload", "microphone"],
                                         elem_id="speech")
                        prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2, elem_id="prompt",
                                            info="What the video shows; the body-motion slider adds motion words.")
                trained_motion = getattr(pipe, "motion_context", None) is not None
                with gr.Row():
                    expression = gr.Slider(0, 1, value=0.5, step=0.05, label="Expression intensity",
                                           elem_id="expression", info=EXPRESSION_INFO[trained_motion])
                    body = gr.Slider(0, 1, value=0.5, step=0.05, label="Body-motion intensity", elem_id="body",
                                     info=BODY_INFO[trained_motion])
                gr.Markdown(f"Motion sliders: **{getattr(pipe, 'motion_mode', 'training-free')}**", elem_id="motion-mode")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Accordion("Guidance, steps, seed, size", open=True):
                    with gr.Row():
                        text_guidance = gr.Slider(1, 10, value=defaults["text_guidance"], step=0.5, label="Text guidance")
                        audio_guidance = gr.Slider(1, 10, value=defaults["audio_guidance"], step=0.5,
                                                   label="Audio guidance")
                        audio_weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Audio weight")
                    with gr.Row():
                        steps = gr.Slider(1, 50, value=defaults["steps"], step=1, label="Denoising steps", elem_id="steps")
                        edge = gr.Slider(MIN_SIDE, min(APP_MAX_EDGE, preset.max_longest_edge), value=preset.longest_edge,
                                         step=SIDE_MULTIPLE,
                                         label="Resolution (longest edge, px)", elem_id="resolution")
                        duration = gr.Slider(MIN_DURATION_S, MAX_DURATION_S, value=DEFAULT_DURATION_S, step=0.5,
                                             label="Maximum duration (s)", elem_id="duration",
                                             info="Longer speech is cut to this length.")
                    with gr.Row(equal_height=True):
                        seed = gr.Number(value=DEFAULT_SEED, precision=0, minimum=0, label="Seed", scale=3)
                        dice = gr.Button("🎲 Random seed", scale=1, elem_id="random-seed")
            with gr.Column():
                preview = gr.Image(label="Preview while denoising", visible=False, interactive=False, height=256,
                                   buttons=["fullscreen"],
                                   elem_id="preview")
                live = gr.Video(label="Live (streams while decoding)", streaming=True, autoplay=True,
                                elem_id="live", height=PLAYER_HEIGHT)
                status = gr.Markdown(f"preset **{preset.name}** · device {studio.device} · "
                                     f"{studio.face_checker.note}", label="Status", elem_id="status")
                final = gr.Video(label="Finished video (download)", elem_id="final", height=PLAYER_HEIGHT)
        gr.Examples(EXAMPLES, inputs=[image, audio], cache_examples=False, label="Examples")

        inputs = [image, audio, prompt, expression, body, text_guidance, audio_guidance, audio_weight, steps,
                  seed, edge, duration]
        checked = generate_btn.click(check_step, inputs, status, concurrency_id="checks", concurrency_limit=4,
                                     api_visibility="private", show_progress="hidden")
        streaming = checked.success(stream_step, inputs, [live, final, status, preview], concurrency_id="gpu",
                                    concurrency_limit=generations_at_once, show_progress_on=[final],
                                    api_name="generate_stream", api_visibility="undocumented", validator=admit)
        stop_btn.click(stop_step, None, status, cancels=[streaming], queue=False, api_visibility="private")
        dice.click(lambda: random.randrange(2**31), None, seed, queue=False, api_visibility="private")
        api_trigger = gr.Button(visible=False)
        details = gr.JSON(label="Details", visible=False)  # the API's third output: the finished run as data (`Studio.details`)
        api_trigger.click(api_generate, inputs, [final, status, details], concurrency_id="gpu",
                          concurrency_limit=generations_at_once, api_name="generate", validator=admit_checked)
    # `admit` turns generations away at max_queue; Gradio's own bound (its fixed texts) only backs it up.
    demo.queue(max_size=4 * max_queue + 16, default_concurrency_limit=1)
    page["demo"] = demo
    demo.fantasy_studio = studio  # for `main`: stop running jobs and remove their files on the way out
    demo.fantasy_channel = channel  # `main` closes the group when the page stops
    return demo


def _progress_parts(event: StageProgress, job: Job) -> tuple[float | tuple[int, int], str, str | None]:
    """(progress value, description, unit): denoising counts steps over all windows, decoding a fraction."""
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


def _progress_text(event: StageProgress, job: Job) -> str:
    """The status line's state while running, e.g. 'Denoising… 12/30 steps'."""
    value, desc, _ = _progress_parts(event, job)
    done = f"{value[0]}/{value[1]} steps" if isinstance(value, tuple) else f"{value:.0%}"
    return f"{desc}… {done}"


def launch_options(host: str | None = None, port: int | None = None, share: bool = False,
                   max_upload_mb: float = MAX_UPLOAD_MB) -> dict[str, Any]:
    """`demo.launch` arguments: Gradio refuses uploads over the limit before they reach the checks."""
    return {"server_name": host, "server_port": port, "share": share,
            "max_file_size": int(max_upload_mb * 1024 * 1024)}


# Slider help, by whether trained motion-module weights are loaded (see fantasy.model.motion).
EXPRESSION_INFO = {False: "Scales audio weight and audio guidance (×0.6 … ×1.4).",
                   True: "Expression coefficient of the trained motion module."}
BODY_INFO = {False: "Motion wording in the prompt; 'motionless' in the negative prompt.",
             True: "Body-motion coefficient of the trained motion module."}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="FantasyTalking Studio web app")
    parser.add_argument("--preset", choices=PRESET_NAMES, default=None,
                        help="default (auto, as the CLI's): real with a CUDA GPU and the weights present, else tiny "
                             "(demo, output is noise)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    parser.add_argument("--share", action="store_true", help="public gradio.live link (needs internet access)")
    add_lora_flags(parser)
    add_speed_flags(parser)
    add_parallel_flags(parser)
    parser.add_argument("--serve", default=None, metavar="URL",
                        help="thin front end: run generations on a `python -m fantasy serve` deployment at URL "
                             "(e.g. http://127.0.0.1:8000); no model is loaded here")
    parser.add_argument("--adapter", default=os.environ.get("FANTASY_ADAPTER") or None,
                        help="adapter or training checkpoint (modules.safetensors from `python -m fantasy train`); "
                             "default $FANTASY_ADAPTER, else the preset's")
    add_real_flags(parser)
    return parser.parse_args(argv)


APP_MAX_EDGE = 1024  # the resolution slider's maximum: the automatic DiT choice must fit it


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

    def with_loras(pipe) -> None:
        for applied in load_loras(pipe, loras, fuse=options.fuse_lora, states=lora_states):
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
    return build_demo(pipe, preset, face_checker=faces, channel=channel)


def create_front_end(url: str) -> gr.Blocks:
    """The page over a Ray Serve deployment: the models live there, the checks and the streaming here."""
    from fantasy.app.serve_client import fetch_info

    remote = fetch_info(url)
    preset = get_preset(remote.info["preset"])
    print(f"[app] front end for {remote.device}: preset {preset.name}", flush=True)
    return build_demo(remote, preset, face_checker=default_face_check(allow_download=False), serve_url=remote.url)


def main(argv: list[str] | None = None, prebuilt: gr.Blocks | None = None) -> None:
    """Build (unless `prebuilt`: a Space's app.py built it at import time) and serve. SIGINT, SIGTERM and SIGHUP
    stop the server, stop a running generation and delete its unfinished files, then exit with 128 + the signal
    number."""
    args = parse_args(argv)
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
