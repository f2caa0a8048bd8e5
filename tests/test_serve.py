"""Ray Serve: 2 CPU replicas of the tiny pipeline behind the HTTP gateway, started once for this module (~40 s).

What is checked: events stream (progress, playable chunks, then the video, which is the one the app makes
in-process); a full queue answers 503 at once; a client that goes away frees its replica and leaves no file;
the app's thin front end runs its generations there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
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
SLOW = {"steps": 100, "longest_edge": 256, "seed": 3}  # ~1 s a step here: busy until the test cancels it
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


@pytest.fixture(scope="module")
def server():
    """One local Ray instance for the module: 2 replicas, one waiting request allowed."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": package_root(), "OMP_NUM_THREADS": "1"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeConfig(replicas=2, max_queued=1, min_chunk_seconds=0.5)), name=APP_NAME, route_prefix="/")
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
def test_a_full_queue_answers_503_and_a_client_that_leaves_frees_its_replica(server, speech):
    info = httpx.get(f"{server}/info").json()
    assert info["replicas"] == 2 and info["max_queued"] == 1 and info["preset"] == "tiny"
    first = post(server, speech, SLOW)
    second = post(server, speech, SLOW)
    r1, r2 = first.__enter__(), second.__enter__()  # both replicas busy now
    lines1, lines2 = r1.iter_lines(), r2.iter_lines()  # kept: a dropped line iterator closes its response
    accepted1 = json.loads(next(lines1))
    assert json.loads(next(lines2))["replica"] != accepted1["replica"]

    answers: dict[str, object] = {}

    def send(name: str) -> None:
        try:
            with post(server, speech, QUICK) as reply:
                lines = reply.iter_lines()
                answers[name] = (reply.status_code, json.loads(next(lines)))
                finished[name] = [json.loads(line)["event"] for line in lines]
        except BaseException as exc:  # reported by the assertions below
            answers[name] = (None, repr(exc))

    finished: dict[str, list[str]] = {}

    threads = [threading.Thread(target=send, args=(name,), daemon=True) for name in ("a", "b")]
    for t in threads:
        t.start()
    # one of the two waits (the queue holds one); the other is refused at once
    refused = None
    for _ in range(600):
        refused = next((v for v in answers.values() if v[0] == 503), None)
        if refused is not None:
            break
        threading.Event().wait(0.1)
    assert refused == (503, {"event": "busy", "message": "The server is busy: every replica is generating and the "
                                                          "queue (1 waiting) is full. Try again in a moment."})
    assert len(answers) == 1  # the other is still waiting for a replica

    first.__exit__(None, None, None)  # the client goes away: its generation stops and its replica is free
    for t in threads:
        t.join(120)
    name, waited = next((k, v) for k, v in answers.items() if v[0] == 200)
    assert waited[1]["event"] == "accepted" and waited[1]["replica"] == accepted1["replica"]
    # it ran to the end on that replica, which runs one generation at a time: the 100-step one had stopped
    assert finished[name][-1] == "done"
    left = Path(accepted1["request"])
    for _ in range(300):  # the stopped request's files go once its worker has cleaned up (a moment later)
        if not left.exists():
            break
        threading.Event().wait(0.1)
    assert not left.exists()
    second.__exit__(None, None, None)


@pytest.mark.slow
def test_a_replica_can_be_a_context_parallel_group(server, speech, tmp_path):
    """One replica = 2 processes splitting each video (its follower started by the replica): the same mp4."""
    serve.run(build_app(ServeConfig(replicas=1, context_parallel=2, min_chunk_seconds=0.5)), name="fantasy-cp",
              route_prefix="/cp")
    try:
        assert httpx.get(f"{server}/cp/info").json()["device"] == "cpu × 2 (context parallel)"
        with post(f"{server}/cp", speech, QUICK) as reply:
            events = [json.loads(line) for line in reply.iter_lines()]
    finally:
        serve.delete("fantasy-cp")
    assert [e["event"] for e in events].count("chunk") == 2 and events[-1]["event"] == "done"
    video = base64.b64decode(events[-1]["video"])
    assert hashlib.md5(video).digest() == hashlib.md5(in_process_video(tmp_path, speech, QUICK)).digest()


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
        video, status = client.predict(handle_file(str(EXAMPLE_IMAGE)), handle_file(str(speech)), app.DEFAULT_PROMPT,
                                       0.5, 0.5, 5.0, 5.0, 1.0, 3, 3, 64, 10.0, api_name="/generate")
    finally:
        demo.close()
    path = Path(video["video"] if isinstance(video, dict) else video)
    assert path.read_bytes() == job.out_path.read_bytes() and f"Ray Serve at {server}" in status


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
