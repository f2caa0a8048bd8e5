"""The Gradio app, launched in-process on the tiny preset and driven through gradio_client like any API user."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
import soundfile
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError
from gradio_client.utils import Status
from PIL import Image

from fantasy.app import ui as app
from fantasy.app.validation import FaceChecker
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, NO_CUDA, bad_speech_files, speech_like
from tests.faults import GatedPipe, model_work
from tests.mp4_probe import probe
from tests.test_validation import no_face_on_flat_images

REPO = Path(__file__).resolve().parent.parent
FAKE_FACES = FaceChecker(no_face_on_flat_images, "face check: passed (test detector)")
FAST = {"steps": 2, "resolution": 64}  # a tiny-preset generation in a few seconds
UPLOAD_MB = 1


def launch(demo, **options):
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
    return url


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app-outputs")


@pytest.fixture(scope="module")
def url(tiny_pipe, outputs):
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=outputs,
                          max_upload_mb=UPLOAD_MB)
    yield launch(demo, **app.launch_options(host="127.0.0.1", max_upload_mb=UPLOAD_MB))
    demo.close()


@pytest.fixture
def client(url, tmp_path) -> Client:
    return Client(url, verbose=False, download_files=str(tmp_path / "downloads"))


def video_path(value) -> Path:
    """gradio_client gives a Video output as a path, or a dict holding one under 'video'."""
    return Path(value["video"] if isinstance(value, dict) else value)


@NO_CUDA
def test_default_preset_on_this_machine_is_tiny():
    assert app.default_preset() == "tiny"  # no CUDA here


def test_flags():
    args = app.parse_args(["--preset", "tiny", "--host", "0.0.0.0", "--port", "7861", "--share"])
    assert (args.preset, args.host, args.port, args.share) == ("tiny", "0.0.0.0", 7861, True)
    defaults = app.parse_args([])
    assert (defaults.preset, defaults.share) == (None, False)
    options = app.launch_options(defaults.host, defaults.port, defaults.share)
    assert options["max_file_size"] == 20 * 1024 * 1024 and options["share"] is False


def test_the_resolution_slider_stops_at_the_presets_maximum(tiny_pipe, tmp_path):
    """A value past the preset's bound would only be refused (`Settings.resolved`): the slider does not offer it."""
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path)
    slider = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "resolution")
    assert (slider.minimum, slider.maximum) == (64, get_preset("tiny").max_longest_edge) == (64, 256)


def test_api_exposes_one_documented_generate_endpoint(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(api) == ["/generate"]
    names = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert names == ["image", "audio", "prompt", "expression", "body", "text_guidance", "audio_guidance",
                     "audio_weight", "steps", "seed", "resolution", "max_duration"]
    assert [r["label"] for r in api["/generate"]["returns"]] == ["Result", "Status", "Details"]


@pytest.mark.slow
def test_generate_returns_an_mp4_with_audio(client, tiny_pipe):
    with model_work(tiny_pipe) as ran:
        video, status, details = client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH),
                                                max_duration=1.5, seed=7, api_name="/generate", **FAST)
    # what the bad-input test's "no model work" watches does see a generation
    assert {"audio_encoder", "audio_proj", "text_encoder", "image_encoder", "vae", "transformer"} <= set(ran)
    info = probe(video_path(video))
    assert (info.frames, info.fps, info.width, info.height) == (37, 23, 64, 64)
    assert info.video_codec == "h264" and info.has_audio and info.audio_codec == "aac"
    assert info.audio_duration == pytest.approx(37 / 23, abs=0.05)
    assert "preset **tiny** (random weights: output is noise)" in status
    assert "device cpu" in status and "motion: training-free (prompt + audio weight)" in status
    assert "2 steps × 3 passes" in status  # counted from the pipeline's callbacks
    assert "seed 7" in status and "face check: passed (test detector)" in status
    # the 6.4 s example speech is cut to the maximum duration, and the status line says so
    assert "The speech is 6.4 s long; it was cut to the maximum duration of 1.5 s." in status
    # ... and the same run as data
    assert 0 < details.pop("seconds_taken") < 300
    assert details == {
        "seed": 7, "frames": 37, "fps": 23, "width": 64, "height": 64, "seconds": round(37 / 23, 3),
        "speech_seconds": 6.408, "speech_cut": True, "windows": 1, "steps": 2, "passes_per_step": 3, "preset": "tiny",
        "demo": True, "device": "cpu", "dit": "float32", "motion_mode": "training-free (prompt + audio weight)",
        "release": False, "text_guidance": details["text_guidance"], "audio_guidance": details["audio_guidance"],
        "audio_weight": details["audio_weight"],
        "notices": ["The speech is 6.4 s long; it was cut to the maximum duration of 1.5 s."]}


@pytest.mark.slow
def test_sliders_reach_the_generation(client):
    _, status, details = client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH),
                                        max_duration=1.0, expression=1.0, text_guidance=1.0, api_name="/generate",
                                        **FAST)
    assert "audio weight 1.40, audio guidance 7.0, text guidance 1.0" in status
    assert "2 steps × 2 passes" in status  # text guidance 1 drops the negative-prompt pass
    assert "25 frames" in status
    assert (details["audio_weight"], details["audio_guidance"], details["text_guidance"]) == (1.4, 7.0, 1.0)
    assert (details["frames"], details["passes_per_step"]) == (25, 2)


PAGE_OUTPUTS = ["error", "progress", "status", "details", "preview", "live", "final", "download"]  # as a client sees them


def page_run(url: str, speech: Path, **controls) -> tuple[list, list]:
    """What the page's Generate does, through one client session (the checked job waits in the session's state):
    `/start` (the checks), then `/generate_stream`. Their outputs, each as a dict by component (a client gets no
    state and no layout: the live player's box is the browser test's)."""
    client = Client(url, verbose=False, download_files=False)  # keep the stream's URLs, not downloads
    values = {"prompt": "A person is talking.", "expression": 0.5, "body": 0.5, "text_guidance": 5.0,
              "audio_guidance": 5.0, "audio_weight": 1.0, "steps": 2, "seed": 1111, "resolution": 64,
              "max_duration": 3.5, **controls}
    started = client.predict(handle_file(EXAMPLE_IMAGE), handle_file(speech), *values.values(), api_name="/start")
    job = client.submit(api_name="/generate_stream")
    outputs = list(job)
    assert job.status().success
    return [dict(zip(PAGE_OUTPUTS, started, strict=True))], [dict(zip(PAGE_OUTPUTS, o, strict=True)) for o in outputs]


def test_the_page_streams_chunks_in_the_result_area_then_shows_the_mp4_for_download(url, tmp_path):
    speech = tmp_path / "speech.wav"
    soundfile.write(speech, speech_like(2.0), 16_000)  # 49 frames: two chunks of about 1 s
    (started,), outputs = page_run(url, speech)
    assert started["error"]["visible"] is False and started["status"] == "Inputs look good. Starting…"
    assert started["final"] == {"__type__": "update", "visible": True, "value": None, "label": "Result"}
    live = [o["live"] for o in outputs if isinstance(o["live"], dict) and o["live"].get("url")]
    playlists = {v["url"] for v in live if v["url"].endswith(".m3u8")}
    assert len(playlists) == 1  # one live stream, fed chunk by chunk
    playlist = httpx.get(playlists.pop(), timeout=30).text
    durations = [float(line[len("#EXTINF:"):].rstrip(",")) for line in playlist.splitlines()
                 if line.startswith("#EXTINF:")]
    assert "#EXT-X-ENDLIST" in playlist
    # our two chunks (25 + 24 frames), then Gradio's closing audio-only segment
    assert durations[:2] == [pytest.approx(25 / 23, abs=0.01), pytest.approx(24 / 23, abs=0.01)]
    # then at most Gradio's closing segment: its AAC encoder's buffered audio, whose length depends on when the run
    # ended (0.1-1.3 s seen on a loaded machine, on main as well), so only its presence is bounded
    assert len(durations) <= 3
    last = outputs[-1]
    final = last["final"]["value"]
    info = probe(final["video"]["path"] if "video" in final else final["path"])
    assert info.frames == 49 and info.has_audio
    assert last["final"]["visible"] is True and last["final"]["label"] == "Result: portrait-seed1111.mp4"
    assert last["live"] == {"__type__": "update", "visible": "hidden"}  # one player in the end, not two
    assert last["download"]["visible"] is True and last["download"]["value"]["path"].endswith("portrait-seed1111.mp4")
    assert last["status"].startswith("**Done** in ") and ": a 2.1 s video, 64×64, seed 1111." in last["status"]
    assert "- 49 frames 64×64 @ 23 fps (2.1 s)" in last["details"] and "- 2 steps × 3 passes" in last["details"]
    # the live preview (a looping WebP, shown) came before the first chunk of video, which hid it, in one place
    previews = [i for i, o in enumerate(outputs) if isinstance(o["preview"], dict) and o["preview"].get("visible")
                and str((o["preview"].get("value") or {}).get("url")).endswith(".webp")]
    first_chunk = next(i for i, o in enumerate(outputs) if isinstance(o["live"], dict) and o["live"].get("url"))
    assert previews and previews[-1] < first_chunk
    assert outputs[previews[0]]["preview"]["label"] == "Preview while denoising (step 1/2): an estimate, blurry at first"
    assert outputs[previews[0]]["final"] == {"__type__": "update", "visible": False}
    shown = outputs[first_chunk - 1]  # the live player is shown first (it was there all along, hidden), then fed
    assert shown["live"] == {"__type__": "update", "visible": True}
    assert shown["preview"] == {"__type__": "update", "visible": False, "value": None}


def _bad_inputs(tmp_path: Path) -> dict[str, tuple]:
    flat = tmp_path / "wall.png"
    Image.new("RGB", (256, 256), (128, 128, 128)).save(flat)
    speech = bad_speech_files(tmp_path)
    silent, short, notes = speech["silent"], speech["short"], speech["not_audio"]
    fake_png = tmp_path / "photo.png"
    fake_png.write_text("not an image")
    return {
        "no face": (flat, EXAMPLE_SPEECH, r"No face found in the portrait"),
        "silent speech": (EXAMPLE_IMAGE, silent, r"'silent.wav' is silent \(peak level below -60 dBFS\)"),
        "too short": (EXAMPLE_IMAGE, short, r"'short.wav' is 0.10 s long; at least 0.2 s of speech is needed"),
        "audio format": (EXAMPLE_IMAGE, notes, r"Could not read 'notes.mp3' as audio"),
        "image format": (fake_png, EXAMPLE_SPEECH, r"Could not read 'photo.png' as an image .* Use a PNG, JPEG or WebP"),
        "no portrait": (None, EXAMPLE_SPEECH, r"Add a portrait: upload a photo or take one with the webcam"),
        "no speech": (EXAMPLE_IMAGE, None, r"Add speech: upload an audio file or record one with the microphone"),
    }


@pytest.mark.parametrize("case", ["no face", "silent speech", "too short", "audio format", "image format",
                                  "no portrait", "no speech"])
def test_each_bad_input_comes_back_as_an_error_with_its_message(client, tiny_pipe, tmp_path, case):
    image, audio, message = _bad_inputs(tmp_path)[case]
    concerns = "image" if case in ("no face", "image format", "no portrait") else "audio"
    # checked as the request joins the queue (before it waits for the generation slot), shown on its input
    with model_work(tiny_pipe) as ran, pytest.raises(
            ValidationError, match=rf"^1 parameter\(s\) failed validation:\n- {concerns}: {message}"):
        client.predict(image=handle_file(image) if image else None, audio=handle_file(audio) if audio else None,
                       api_name="/generate", **FAST)
    assert ran == []  # refused before any model work: no encoder, transformer or VAE ran


@pytest.mark.parametrize("control, value, message", [
    ("steps", 60, "steps: Denoising steps must be between 1 and 50, got 60."),
    ("resolution", 512, "resolution: Resolution (longest edge, px) must be between 64 and 256, got 512."),  # tiny's top
    ("expression", -0.5, "expression: Expression intensity must be between 0 and 1, got -0.5."),
    ("max_duration", 31, "max_duration: Maximum duration (s) must be between 1 and 30, got 31."),
])
def test_a_setting_out_of_range_is_refused_on_its_own_parameter(client, tiny_pipe, control, value, message):
    """(It came back as a bare '400 Bad Request', or on the image.)"""
    refusal = f"1 parameter(s) failed validation:\n- {message}"
    with model_work(tiny_pipe) as ran, pytest.raises(ValidationError, match=f"^{re.escape(refusal)}$"):
        client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), api_name="/generate",
                       **{**FAST, control: value})
    assert ran == []


def test_the_page_checks_and_decodes_each_upload_once(url, monkeypatch):
    """Generate on the page is two events (the checks, then the run): the run takes the checked job from the
    session's state instead of decoding the uploads again."""
    import fantasy.app.validation as validation
    import fantasy.generation as generation

    portraits, speeches = [], []
    load_portrait, load_speech = validation.load_portrait, generation.load_speech
    monkeypatch.setattr(validation, "load_portrait", lambda *a, **k: (portraits.append(a[0]), load_portrait(*a, **k))[1])
    monkeypatch.setattr(generation, "load_speech", lambda *a, **k: (speeches.append(a[0]), load_speech(*a, **k))[1])
    _, outputs = page_run(url, EXAMPLE_SPEECH, steps=1, max_duration=1.0)
    assert outputs[-1]["status"].startswith("**Done**")
    assert (len(portraits), len(speeches)) == (1, 1)


def test_on_zero_gpu_the_defaults_fit_one_call_and_a_request_that_cannot_is_refused_saying_what_to_change(
        tiny_pipe, tmp_path):
    from fantasy.app.space import GpuTimeModel

    slow = GpuTimeModel(seconds_per_pass=100.0)  # 6.25 s a pass at the tiny preset's 128 px: few steps fit 200 s
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path,
                          zero_gpu=True, gpu_model=slow)
    sliders = {b.elem_id: b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) in ("steps", "max-duration")}
    assert sliders == {"steps": 7, "max-duration": 3.4}  # one clip, and the most steps that fit
    (status,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "status"]
    assert status.value.endswith("With these settings a video asks ZeroGPU for 192 s.")
    url = launch(demo, server_name="127.0.0.1")
    try:
        client = Client(url, verbose=False, download_files=False)
        refusal = ("1 parameter(s) failed validation:\n- max_duration: This video needs about 267 s of GPU time; a "
                   "ZeroGPU call may take at most 200 s. To fit, shorten the maximum duration to 2.2 s, or use 7 steps "
                   "or fewer, or lower the resolution to 96 px.")
        with model_work(tiny_pipe) as ran, pytest.raises(ValidationError, match=f"^{re.escape(refusal)}$"):
            client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), steps=11,
                           resolution=128, max_duration=3.4, api_name="/generate")
        assert ran == []  # refused as it joined, before any GPU time
    finally:
        demo.close()


def test_upload_over_the_size_limit_is_refused(client, tmp_path):
    big = tmp_path / "long.wav"
    soundfile.write(big, speech_like(40.0), 16_000)  # 1.3 MB > the 1 MB limit of this test app
    with pytest.raises(ValueError, match=r"exceeds the maximum file size of 1048576 bytes"):
        client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(big), api_name="/generate", **FAST)


def test_our_own_size_check_when_the_server_has_no_limit(tiny_pipe, tmp_path):
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path,
                          max_upload_mb=0.25)
    url = launch(demo, server_name="127.0.0.1")  # e.g. a host that ignores max_file_size
    try:
        client = Client(url, verbose=False, download_files=False)
        with pytest.raises(ValidationError,
                           match=r"- image: The portrait file 'portrait.png' is 412.5 KB; the limit is 256 KB"):
            client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), api_name="/generate",
                           **FAST)
    finally:
        demo.close()


def _wait_for(job, codes: set, timeout: float = 60) -> None:
    """Wait for a state the test has made stable (a held run cannot end), polling the client; not a proof."""
    deadline = time.monotonic() + timeout
    while job.status().code not in codes:
        assert time.monotonic() < deadline, f"job stuck in {job.status().code}"
        time.sleep(0.05)


# "One generation at a time, a bounded queue": test_faults_app.test_a_full_queue_says_the_same_on_the_page_and_
# through_the_api, with the running generation held at its first step.


@pytest.mark.slow
def test_stop_during_denoising_ends_the_run_at_that_step_and_frees_the_device(tiny_pipe, tmp_path):
    """The page's streaming generation stopped (what Stop does) while held in its first denoising step: it takes
    no second step, writes no video, and the next generation runs while the stopped one still sits in its step."""
    gated = GatedPipe(tiny_pipe)
    demo = app.build_demo(gated, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path)
    url = launch(demo, server_name="127.0.0.1")
    try:
        client = Client(url, verbose=False, download_files=False)
        client.predict(handle_file(EXAMPLE_IMAGE), handle_file(EXAMPLE_SPEECH), "A person is talking.", 0.5, 0.5,
                       5.0, 5.0, 1.0, 50, 1111, 64, 1.0, api_name="/start")  # Generate's checks; then its run:
        job = client.submit(api_name="/generate_stream")
        assert gated.reached.wait(180)
        for attempt in range(3):  # the reply waits until the server has closed the run; a loaded box can be slow
            try:
                job.cancel()
                break
            except httpx.TimeoutException:
                if attempt == 2:
                    raise
        second = client.submit(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), max_duration=1.0,
                               api_name="/generate", **FAST)
        admission = demo.fantasy_studio.admission
        deadline = time.monotonic() + 120
        while not (admission.running == 1 and admission.waiting == 0):  # the second holds the slot ...
            assert time.monotonic() < deadline, (admission.running, admission.waiting)
            time.sleep(0.05)
        assert not gated.release.is_set() and not second.done()  # ... while the stopped one still sits in its step
        gated.release.set()
        video, _, _ = second.result(timeout=300)
        assert probe(video["path"]).frames == 25
        assert gated.steps == 1 + 2  # the stopped run never took its second step
        assert job.status().code == Status.CANCELLED
        finished = list(tmp_path.glob("*/*.mp4"))
        assert len(finished) == 1 and probe(finished[0]).frames == 25  # only the second one ever finished
        assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    finally:
        gated.release.set()
        demo.close()


@pytest.mark.slow
def test_python_app_py_starts_in_tiny_demo_mode_with_a_banner(tmp_path):
    """...and SIGTERM stops it, with its running generation: exit 143, one line, the job's files removed."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path)}
    env.pop("SPACE_ID", None)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "app.py did not start in 240 s"
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/config", timeout=5)
                if config.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert "a tiny random model, the output is noise" in config.text  # the banner is on the page
        assert "[app] preset tiny" in log.read_text()
        assert config.json()["max_file_size"] == 20 * 1024 * 1024
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        job = client.submit(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), steps=50,
                            resolution=128, max_duration=10, api_name="/generate")  # 2 windows x 50 steps
        _wait_for(job, {Status.PROGRESS}, timeout=240)  # denoising has begun
        outputs = tmp_path / "fantasy-studio"
        assert len([p for p in outputs.iterdir() if p.is_dir()]) == 1  # the running job's folder
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    assert lines[-1] == "[app] stopped (SIGTERM); 1 running generation stopped, its files removed"
    assert list(outputs.iterdir()) == []
    noise = ("Traceback", "torchao", "_pytree", "torchvision", "it/s]")  # a quiet console, also on errors
    assert not [line for line in lines if any(word in line for word in noise)], lines


@pytest.mark.slow
def test_on_a_space_the_app_is_built_at_import_time(monkeypatch):
    import importlib

    import gradio as gr

    import app as space_entry  # the repository's app.py, the Space's entry file

    monkeypatch.setenv("SPACE_ID", "someone/fantasytalking-studio")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        module = importlib.reload(space_entry)
        assert isinstance(module.demo, gr.Blocks)  # models loaded and page built by the import itself
        config = module.demo.get_config_file()
        assert any("a tiny random model, the output is noise" in str(c.get("props", {}).get("value", ""))
                   for c in config["components"])
    finally:
        monkeypatch.delenv("SPACE_ID")
        assert importlib.reload(space_entry).demo is None  # elsewhere importing builds nothing


def test_speed_flags_reach_the_pipeline_and_few_step_mode_sets_the_slider_defaults(monkeypatch, tmp_path, capsys):
    from fantasy.speed.switches import SpeedOptions

    args = app.parse_args(["--step-cache", "fbc:0.1", "--batch-guidance", "--adapter", str(tmp_path / "m.safetensors")])
    assert app.speed_options(args) == SpeedOptions(batch_guidance=True, step_cache="fbc", cache_threshold=0.1)
    assert args.adapter == str(tmp_path / "m.safetensors")
    monkeypatch.setenv("FANTASY_ADAPTER", "/x/modules.safetensors")
    assert app.parse_args([]).adapter == "/x/modules.safetensors"
    monkeypatch.delenv("FANTASY_ADAPTER")

    class Pipe:
        few_step_mode = False

    assert app.slider_defaults(Pipe(), get_preset("tiny")) == {"steps": 30, "text_guidance": 5.0, "audio_guidance": 5.0}
    Pipe.few_step_mode = True
    assert app.slider_defaults(Pipe(), get_preset("tiny")) == {"steps": 4, "text_guidance": 1.0, "audio_guidance": 1.0}

    with pytest.raises(SystemExit, match="error: LoRA file not found: .*missing.safetensors"):
        app.main(["--preset", "tiny", "--fast", str(tmp_path / "missing.safetensors")])


def test_every_flag_but_where_to_listen_can_come_from_a_fantasy_variable(tmp_path):
    """A Space has no command line: its owner sets FANTASY_<FLAG> variables in the Space's settings."""
    environ = {"FANTASY_STEP_CACHE": "fbc:0.2", "FANTASY_BATCH_GUIDANCE": "1", "FANTASY_DIT": "q8_0",
               "FANTASY_VRAM": "model-offload", "FANTASY_FAST": "/lora/lightx2v.safetensors", "FANTASY_LORA_SCALE": "0.8",
               "FANTASY_NO_FUSE_LORA": "true", "FANTASY_PRESET": "tiny", "FANTASY_PRECISION": "stock",
               "FANTASY_ATTENTION": "flash", "FANTASY_COMPILE": "no", "FANTASY_FP8_LINEARS": "0",
               "FANTASY_ADAPTER": "/x/modules.safetensors", "FANTASY_CONTEXT_PARALLEL": "2",
               "FANTASY_CONTEXT_PARALLEL_KIND": "ring", "FANTASY_SERVE": "http://127.0.0.1:8000",
               "FANTASY_HOST": "0.0.0.0", "FANTASY_PORT": "80"}  # where to listen is not theirs to set
    args = app.parse_args([], environ=environ)
    assert (args.step_cache, args.batch_guidance, args.dit, args.vram, args.fast, args.lora_scale, args.no_fuse_lora,
            args.preset, args.precision, args.attention, args.compile, args.fp8_linears, args.adapter,
            args.context_parallel, args.context_parallel_kind, args.serve, args.host, args.port) == (
        "fbc:0.2", True, "q8_0", "model-offload", "/lora/lightx2v.safetensors", 0.8, True, "tiny", "stock", "flash",
        False, False, "/x/modules.safetensors", 2, "ring", "http://127.0.0.1:8000", None, None)
    assert set(args.from_environment) == set(environ) - {"FANTASY_HOST", "FANTASY_PORT"}
    # the command line wins
    assert app.parse_args(["--dit", "bf16", "--lora-scale", "0.5"], environ=environ).dit == "bf16"
    assert app.parse_args(["--lora-scale", "0.5"], environ=environ).lora_scale == 0.5
    assert app.parse_args([], environ={"FANTASY_STEP_CACHE": " "}).step_cache is None  # empty: not set


@pytest.mark.parametrize("variable, value, message", [
    ("FANTASY_DIT", "q9", "FANTASY_DIT=q9: choose one of q8_0, q4_k_m, bf16, bf16-int8, bf16-fp8, bf16-fp8-storage"),
    ("FANTASY_BATCH_GUIDANCE", "maybe", "FANTASY_BATCH_GUIDANCE=maybe: a switch takes 1 or 0 (true or false)"),
    ("FANTASY_LORA_SCALE", "strong", "FANTASY_LORA_SCALE=strong: not a valid float"),
])
def test_a_bad_fantasy_variable_is_named_before_any_model_loads(variable, value, message):
    from fantasy.errors import InvalidSetting

    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$"):
        app.parse_args([], environ={variable: value})


def test_the_space_doc_lists_exactly_the_variables_the_app_reads():
    from fantasy.app.flags import env_variable

    table = (REPO / "docs" / "space.md").read_text()
    listed = set(re.findall(r"^\| `(FANTASY_[A-Z0-9_]+)` \| `(--[a-z0-9-]+)` \|", table, flags=re.M))
    _, from_env = app.app_parser()
    read_by_their_own_code = {("FANTASY_LORA", "--lora"), ("FANTASY_COMFY_MODELS", "--comfy-models")}
    assert listed == {(env_variable(a), a.option_strings[0]) for a in from_env} | read_by_their_own_code


def test_the_controls_doc_matches_the_code():
    from fantasy.app.controls import CONTROLS

    rows = re.findall(r"^\| ([A-Z][^|]+?) \| ([0-9.]+)–([0-9.]+|2⁶³−1) \|", (REPO / "docs" / "app.md").read_text(), flags=re.M)
    documented = {label: (float(low), 2**63 - 1 if high == "2⁶³−1" else float(high)) for label, low, high in rows}
    assert documented == {c.label: (c.minimum, c.maximum) for c in CONTROLS.values()}

