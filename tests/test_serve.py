"""Ray Serve: 2 CPU replicas of the tiny pipeline behind the HTTP gateway, started once for this module (~40 s).

What is checked: events stream (progress, playable chunks, then the video, which is the one the app makes
in-process); a full queue answers 503 at once and a waiting request hears its place; a client that goes away
frees its replica and leaves no file; oversize uploads and malformed controls are refused by the gateway before
any replica sees them (the replica's memory does not move); a context-parallel replica whose follower dies ends
the running request with an error event, fails its health check and is replaced; SIGTERM to `fantasy serve`
stops it with one line and leaves no file; the app's thin front end runs its generations there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from fantasy.app.serve import APP_NAME, ServeConfig, build_app, package_root
from fantasy.app.serve_client import RemoteStudio, ServerUnreachable, fetch_info
from fantasy.app.streaming import ChunkReady, Finished, PreviewReady, StageProgress
from fantasy.app.studio import Controls, Studio
from fantasy.app.validation import FaceChecker
from fantasy.cli import main as cli_main
from tests.conftest import EXAMPLE_IMAGE, speech_like
from tests.mp4_probe import probe

ray = pytest.importorskip("ray", reason="Ray Serve is optional: pip install -r requirements-serve.txt (CI does)")
from ray import serve  # noqa: E402

QUICK = {"steps": 3, "longest_edge": 64, "seed": 3}
SLOW = {"steps": 50, "longest_edge": 256, "seed": 3}  # the most steps the controls allow, ~1 s each: busy until cancelled
SKIPPED_FACES = FaceChecker(None, "face check skipped: test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    import soundfile

    path = tmp_path_factory.mktemp("serve-inputs") / "speech.wav"
    soundfile.write(path, speech_like(1.0), 16_000)
    return path


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """Where the module's replicas keep their requests' files (`ServeConfig.work_dir`)."""
    return tmp_path_factory.mktemp("replicas")


def accepted_event(lines) -> dict:
    """The `accepted` event of a stream: a request waits in the gateway's line (`queued` events) until a replica
    takes it, even for a moment when one is free."""
    event = json.loads(next(lines))
    while event["event"] == "queued":
        event = json.loads(next(lines))
    assert event["event"] == "accepted", event
    return event


def request_folders(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("fantasy-replica-*/request-*"))


@pytest.fixture(scope="module")
def server(work_dir):
    """One local Ray instance for the module: 2 replicas, one waiting request allowed."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": package_root(), "OMP_NUM_THREADS": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeConfig(replicas=2, max_queued=1, min_chunk_seconds=0.5, work_dir=str(work_dir),
                                    keepalive_s=2.0)), name=APP_NAME, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def post(url: str, speech: Path, controls: dict):
    """An open streaming POST /generate (headers arrive once a replica has accepted the request)."""
    files = {"image": ("portrait.png", EXAMPLE_IMAGE.read_bytes()), "audio": ("speech.wav", speech.read_bytes())}
    return httpx.stream("POST", f"{url}/generate", files=files, data={"controls": json.dumps(controls)},
                        timeout=httpx.Timeout(30.0, read=None))


def in_process_video(tmp_path: Path, speech: Path, controls: dict) -> bytes:
    """What the app makes in one process for the same request (one thread, as each replica)."""
    from fantasy.weights.presets import get_preset, load_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = load_pipeline("tiny")
        studio = Studio(pipe, get_preset("tiny"), SKIPPED_FACES, tmp_path, min_chunk_seconds=0.5)
        job = studio.check(EXAMPLE_IMAGE, speech, Controls(**controls))
        done = [e for e in studio.run(job) if isinstance(e, Finished)][0]
        return done.result.path.read_bytes()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_progress_chunks_and_the_video_stream_back(server, speech, tmp_path):
    with post(server, speech, QUICK) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in reply.iter_lines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "accepted" and kinds[-1] == "done" and kinds.count("done") == 1
    assert [e["fraction"] for e in events if e.get("stage") == "denoise"] == [1 / 3, 2 / 3, 1.0]
    previews = [e for e in events if e["event"] == "preview"]  # the live preview: the first step's at least
    assert previews and previews[0]["step"] == 1 and previews[0]["shape"] == [7, 8, 8, 3]  # latent frames, h/8, w/8
    assert len(base64.b64decode(previews[0]["frames"])) == 7 * 8 * 8 * 3
    chunks = [e for e in events if e["event"] == "chunk"]
    assert [c["index"] for c in chunks] == [0, 1] and sum(c["num_frames"] for c in chunks) == 25
    last_decode = max(i for i, e in enumerate(events) if e.get("stage") == "decode")
    assert kinds.index("chunk") < last_decode  # the first chunk arrives while the rest is still decoding
    for chunk in chunks:  # each chunk is a playable mp4 of its frames, with sound
        path = tmp_path / f"chunk{chunk['index']}.mp4"
        path.write_bytes(base64.b64decode(chunk["data"]))
        info = probe(path)
        assert info.frames == chunk["num_frames"] and info.audio_codec == "aac"
    video = base64.b64decode(events[-1]["video"])
    assert events[-1]["result"]["num_frames"] == 25 and events[-1]["steps_run"] == 3
    assert hashlib.md5(video).digest() == hashlib.md5(in_process_video(tmp_path, speech, QUICK)).digest()


@pytest.mark.slow
def test_a_full_queue_answers_503_a_waiting_request_hears_its_place_and_a_client_that_leaves_frees_its_replica(
        server, speech, work_dir):
    info = httpx.get(f"{server}/info").json()
    assert info["replicas"] == 2 and info["max_queued"] == 1 and info["preset"] == "tiny"
    first = post(server, speech, SLOW)
    second = post(server, speech, SLOW)
    r1, r2 = first.__enter__(), second.__enter__()  # both replicas busy now
    lines1, lines2 = r1.iter_lines(), r2.iter_lines()  # kept: a dropped line iterator closes its response
    accepted1 = accepted_event(lines1)
    assert accepted_event(lines2)["replica"] != accepted1["replica"]
    assert re.fullmatch(r"request-[0-9a-f]{12}", accepted1["request"])  # an id, not a server path

    answers: dict[str, object] = {}
    finished: dict[str, list[dict]] = {}

    def send(name: str) -> None:
        try:
            with post(server, speech, QUICK) as reply:
                lines = reply.iter_lines()
                answers[name] = (reply.status_code, json.loads(next(lines)))
                finished[name] = [json.loads(line) for line in lines]
        except BaseException as exc:  # reported by the assertions below
            answers[name] = (None, repr(exc))

    threads = [threading.Thread(target=send, args=(name,), daemon=True) for name in ("a", "b")]
    for t in threads:
        t.start()
    # one of the two waits (the queue holds one) and is told so at once; the other is refused at once
    for _ in range(600):
        if len(answers) == 2:
            break
        time.sleep(0.1)
    assert sorted(answers.values(), key=lambda v: v[0]) == [
        (200, {"event": "queued", "position": 1}),
        (503, {"event": "busy", "message": "The server is busy: every replica is generating and the queue (1 "
                                           "waiting) is full. Try again in a moment."})]
    time.sleep(5)  # waiting: its stream gets a queued event every 2 s (the keepalive), so no proxy drops it

    first.__exit__(None, None, None)  # the client goes away: its generation stops and its replica is free
    for t in threads:
        t.join(120)
    name = next(k for k, v in answers.items() if v[0] == 200)
    events = finished[name]
    kinds = [e["event"] for e in events]
    started = kinds.index("accepted")
    assert started >= 2 and events[:started] == [{"event": "queued", "position": 1}] * started, kinds
    assert events[started]["replica"] == accepted1["replica"]
    # it ran to the end on that replica, which runs one generation at a time: the slow one had stopped
    assert kinds[-1] == "done"
    for _ in range(300):  # the stopped request's files go once its worker has cleaned up (a moment later)
        if not list(work_dir.glob(f"fantasy-replica-*/{accepted1['request']}")):
            break
        time.sleep(0.1)
    assert not list(work_dir.glob(f"fantasy-replica-*/{accepted1['request']}"))
    second.__exit__(None, None, None)
    for _ in range(300):
        if not request_folders(work_dir):
            break
        time.sleep(0.1)
    assert request_folders(work_dir) == []


def post_raw(url: str, body, headers: dict) -> httpx.Response:
    return httpx.post(f"{url}/generate", content=body, headers=headers, timeout=httpx.Timeout(60.0))


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "fantasyboundary") -> tuple[bytes, dict]:
    parts = []
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def replica_rss() -> list[int]:
    """Resident memory of the module's replicas (the Ray actors of `FantasyReplica`), bytes."""
    import psutil

    return sorted(p.memory_info().rss for p in psutil.process_iter(["cmdline"])
                  if any("ServeReplica:fantasy:FantasyReplica" in part for part in (p.info["cmdline"] or [])))


@pytest.mark.slow
def test_an_oversize_upload_is_refused_as_it_streams_before_any_replica_sees_it(server, speech):
    """114 MB of portrait: refused (413) from the declared length at once, and, sent chunked without a length,
    after the gateway has counted past the limit; the replicas' memory does not move (it grew by 574 MB when
    the whole upload was read and shipped through Ray before the 20 MB check)."""
    before = replica_rss()
    assert len(before) == 2
    big = os.urandom(1 << 20) * 114
    body, headers = multipart([("image", "huge.png", big), ("audio", "speech.wav", speech.read_bytes()),
                               ("controls", None, b"{}")])
    declared = post_raw(server, body, headers)
    message = "The upload is larger than 40.2 MB (the limit is 20 MB per file, portrait and speech). Use smaller files."
    assert (declared.status_code, declared.json()) == (413, {"error": message})

    def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    streamed = post_raw(server, chunks(), headers)  # no content-length: counted as it arrives
    assert (streamed.status_code, streamed.json()) == (413, {"error": message})
    one_file = multipart([("image", "portrait.png", os.urandom(21 << 20)), ("audio", "speech.wav", b"x"),
                          ("controls", None, b"{}")])
    single = post_raw(server, *one_file)
    assert (single.status_code, single.json()) == (413, {"error": "The portrait file 'portrait.png' is 21 MB; the "
                                                                  "limit is 20 MB. Use a smaller file (a shorter "
                                                                  "clip, or a compressed photo)."})
    after = replica_rss()
    grown = [(a - b) / 1e6 for a, b in zip(after, before, strict=True)]
    print(f"replica RSS before {[b / 1e6 for b in before]} MB, after {[a / 1e6 for a in after]} MB "
          f"(grown {grown} MB) for a 114 MB upload")
    assert max(grown) < 20, grown


@pytest.mark.slow
@pytest.mark.parametrize("controls,message", [
    (b"{steps: 3", r"^controls: not JSON \(Expecting property name enclosed in double quotes"),
    (b"[3]", r"^controls: a JSON object of slider values, not list$"),
    (b'{"stepz": 3}', r"^controls: unknown field 'stepz'; known: prompt, expression, body, text_guidance, "),
    (b'{"steps": "many"}', r"""^controls: 'steps' must be a whole number, got "many"$"""),
    (b'{"seed": 1.5}', r"^controls: 'seed' must be a whole number, got 1.5$"),
    (b'{"expression": true}', r"^controls: 'expression' must be a number, got true$"),
])
def test_malformed_controls_get_a_400_with_one_line(server, speech, controls, message):
    body, headers = multipart([("image", "portrait.png", EXAMPLE_IMAGE.read_bytes()),
                               ("audio", "speech.wav", speech.read_bytes()), ("controls", None, controls)])
    reply = post_raw(server, body, headers)
    assert reply.status_code == 400 and re.search(message, reply.json()["error"]), reply.text
    assert "\n" not in reply.json()["error"]


@pytest.mark.slow
def test_errors_name_the_users_file_not_the_servers_copy(server, tmp_path, work_dir):
    broken = tmp_path / "My Voice.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    body, headers = multipart([("image", "portrait.png", EXAMPLE_IMAGE.read_bytes()),
                               ("audio", "My Voice.wav", broken.read_bytes()), ("controls", None, b"{}")])
    with httpx.stream("POST", f"{server}/generate", content=body, headers=headers, timeout=60) as reply:
        events = [json.loads(line) for line in reply.iter_lines()]
    assert [e["event"] for e in events] == ["error"], events
    message = events[0]["message"]
    assert "My Voice.wav" in message and str(work_dir) not in message and "/tmp" not in message, message


def followers() -> list:
    """The follower processes of context-parallel replicas (`python -m fantasy.app.serve`)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[1:3] == ["-m", "fantasy.app.serve"]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_context_parallel_replica_gives_the_same_mp4_and_survives_losing_its_follower(server, speech, tmp_path,
                                                                                       work_dir):
    """One replica = 2 processes splitting each video (its follower started by the replica): the same mp4. Then
    its follower is killed (SIGKILL) in the middle of a request: that request ends with an error event and leaves
    no file, the replica fails its health check, Serve replaces it (with a new follower), and requests work again
    (before, every later request failed within 0.2 s and Ray never replaced the replica)."""
    serve.run(build_app(ServeConfig(replicas=1, context_parallel=2, min_chunk_seconds=0.5, work_dir=str(work_dir),
                                    health_check_period_s=2.0)), name="fantasy-cp", route_prefix="/cp")
    try:
        assert httpx.get(f"{server}/cp/info").json()["device"] == "cpu × 2 (context parallel)"
        with post(f"{server}/cp", speech, QUICK) as reply:
            events = [json.loads(line) for line in reply.iter_lines()]
        assert [e["event"] for e in events].count("chunk") == 2 and events[-1]["event"] == "done"
        video = base64.b64decode(events[-1]["video"])
        assert hashlib.md5(video).digest() == hashlib.md5(in_process_video(tmp_path, speech, QUICK)).digest()

        (follower,) = followers()
        with post(f"{server}/cp", speech, SLOW) as reply:
            lines = reply.iter_lines()
            accepted = accepted_event(lines)
            while json.loads(next(lines)).get("stage") != "denoise":  # generating on both processes
                pass
            follower.kill()
            rest = [json.loads(line) for line in lines]
        assert rest[-1]["event"] == "error" and rest[-1]["kind"] == "ReplicaFailed", rest[-3:]
        assert rest[-1]["message"].startswith("The server failed while generating (another process of the group "
                                              "stopped ("), rest[-1]
        assert not list(work_dir.glob(f"fantasy-replica-*/{accepted['request']}"))
        deadline, last = time.monotonic() + 300, None
        while time.monotonic() < deadline:  # the health check fails; Serve starts a new replica and follower
            with post(f"{server}/cp", speech, QUICK) as reply:
                last = [json.loads(line)["event"] for line in reply.iter_lines()] if reply.status_code == 200 else []
            if last and last[-1] == "done":
                break
            time.sleep(2)
        assert last and last[-1] == "done", last
        assert len(followers()) == 1 and followers()[0].pid != follower.pid
    finally:
        serve.delete("fantasy-cp")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_stops_the_server_with_one_line_and_leaves_no_file(speech, tmp_path):
    """`python -m fantasy serve` (its own Ray) gets SIGTERM while a generation runs: it stops the replicas, which
    remove their requests' uploads and partial videos, and says one line (before: Ray's crash report)."""
    work = tmp_path / "work"
    work.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "fantasy", "serve", "--port", str(port), "--replicas", "1", "--work-dir",
               str(work)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        seen: list[dict] = []

        def generate() -> None:
            try:
                with post(url, speech, SLOW) as reply:
                    for line in reply.iter_lines():
                        seen.append(json.loads(line))
            except httpx.HTTPError:
                pass

        client = threading.Thread(target=generate, daemon=True)
        client.start()
        while not any(e.get("stage") == "denoise" for e in seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any(e.get("stage") == "denoise" for e in seen) and list(work.glob("fantasy-replica-*/request-*"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()][-1] == "stopped (SIGTERM)", err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert list(work.iterdir()) == []  # no replica folder, upload or partial video


@pytest.mark.slow
def test_the_app_as_a_thin_front_end(server, speech, tmp_path):
    from fantasy.weights.presets import get_preset

    remote = fetch_info(server)
    studio = RemoteStudio(remote, get_preset("tiny"), SKIPPED_FACES, tmp_path / "front", min_chunk_seconds=0.5)
    job = studio.check(EXAMPLE_IMAGE, speech, Controls(**QUICK))
    events = list(studio.run(job))
    assert sum(isinstance(e, StageProgress) and e.stage == "denoise" for e in events) == 3
    previews = [e.preview for e in events if isinstance(e, PreviewReady)]
    assert previews and previews[0].frames.shape == (7, 8, 8, 3) and previews[0].steps == 3
    chunks = [e.chunk for e in events if isinstance(e, ChunkReady)]
    assert [c.path.is_file() for c in chunks] == [True, True]
    done = events[-1]
    assert isinstance(done, Finished) and done.result.path == job.out_path and done.steps_run == 3
    assert probe(job.out_path).frames == 25
    status = studio.status(job, done.result, steps_run=done.steps_run)
    assert f"device Ray Serve at {server} (2 × cpu)" in status and "3 steps × 3 passes" in status

    from gradio_client import Client, handle_file

    from fantasy.app import ui as app

    # the page itself over the deployment: its API returns the server's video
    demo = app.create_demo(app.parse_args(["--serve", server]))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        video, status, details = client.predict(handle_file(str(EXAMPLE_IMAGE)), handle_file(str(speech)),
                                                app.DEFAULT_PROMPT, 0.5, 0.5, 5.0, 5.0, 1.0, 3, 3, 64, 10.0,
                                                api_name="/generate")
    finally:
        demo.close()
    path = Path(video["video"] if isinstance(video, dict) else video)
    assert path.read_bytes() == job.out_path.read_bytes() and f"Ray Serve at {server}" in status
    assert (details["seed"], details["frames"], details["steps"], details["device"]) == (
        3, 25, 3, f"Ray Serve at {server} (2 × cpu)")


def test_front_end_without_a_server_says_so():
    with pytest.raises(ServerUnreachable, match=r"cannot reach the serve deployment at http://127\.0\.0\.1:9 \("):
        fetch_info("http://127.0.0.1:9/")


@pytest.mark.parametrize("flags,message", [
    (["--replicas", "0"], "--replicas must be at least 1, got 0"),
    (["--max-queued", "-1"], "--max-queued must be 0 or more, got -1"),
    (["--attention", "nope"], "unknown attention backend 'nope'"),
])
def test_serve_settings_are_checked_before_ray_starts(capsys, monkeypatch, flags, message):
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    assert cli_main(["serve", *flags]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {message}")
