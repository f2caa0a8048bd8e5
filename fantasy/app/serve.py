"""Many videos on many GPUs: the resident pipeline as a Ray Serve deployment (`python -m fantasy serve`).

Two deployments. `FantasyReplica` holds one loaded pipeline (one per GPU, `num_gpus` in its actor options)
and runs one generation at a time (`max_ongoing_requests=1`): the request's inputs are checked, then its
progress, each mp4 chunk as it is encoded, and the finished mp4 stream back as events
(`Replica.generate`, an async generator). Requests past `max_queued` waiting ones are refused by Ray
(`BackPressureError`, HTTP 503) instead of piling up. Cancelling a request (`response.cancel()`, or an HTTP
client that goes away) stops the generation at its next step and leaves no file. `FantasyGateway` is the
HTTP entry: `GET /info` and `POST /generate` (multipart: image, audio, controls JSON -> NDJSON events).

Bounded and self-healing: the gateway reads the request body as it streams in, counting bytes, and refuses
it (413) past the upload limit before anything reaches a replica; malformed controls get a 400 naming the
field. A request that waits for a replica gets `queued` events (its place in the line) and every stream a
`keepalive` when nothing else was sent for a while, so proxies keep it open. A replica's own failure (a
device fault, a lost context-parallel follower) ends the client's stream with an `error` event and removes the
request's files; `check_health` then fails, and Serve replaces the replica (and its followers). Requests'
files live in the replica's folder, named after the user's files; a replica removes it when it stops, and
the next one removes those of replicas that were killed outright.

With `context_parallel` N, a replica is a context-parallel group (`fantasy.speed.parallel`) on N GPUs: it starts
N-1 follower processes itself (`python -m fantasy.app.serve`, joined through a local TCP rendezvous) that follow
each job as torchrun's ranks do for the app (`fantasy.app.parallel_jobs`).

Ray is optional: `pip install -r requirements-serve.txt`. Nothing here is imported by the rest of the
package; the app's thin front end (`app.py --serve URL`) talks HTTP through `fantasy.app.serve_client`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fantasy.errors import FantasyError
from fantasy.speed.switches import SpeedOptions

APP_NAME = "fantasy"
REPLICA_NAME = "FantasyReplica"
GATEWAY_NAME = "FantasyGateway"
DEFAULT_MAX_QUEUED = 8
ROOT_PREFIX = "fantasy-replica-"  # + the replica's pid: stale folders of replicas killed outright are found by it
QUEUE_NOTICE_S = 1.0  # a request with no event from its replica after this long is told it is queued


@dataclass(frozen=True)
class ServeConfig:
    """One deployment: what every replica loads, how many there are, and the queue bound."""

    preset: str = "tiny"
    adapter: str | None = None
    replicas: int = 1
    gpus_per_replica: float = 0.0  # 1 per replica on a GPU machine (the CLI's default there)
    cpus_per_replica: float = 1.0
    max_queued: int = DEFAULT_MAX_QUEUED
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    min_chunk_seconds: float = 1.0
    face_check: bool = False  # face-alignment on the replicas (the front end usually checks already)
    context_parallel: int = 1  # processes (GPUs) per replica, one video split over them
    work_dir: str | None = None  # where replicas keep their requests' files (None: the system's temp folder)
    health_check_period_s: float = 10.0  # how often Serve asks a replica whether it (and its followers) still work
    keepalive_s: float = 15.0  # a stream quiet this long gets a keepalive (or queued) event


def check_config(config: ServeConfig) -> None:
    from fantasy.errors import InvalidSetting

    if config.replicas < 1:
        raise InvalidSetting(f"--replicas must be at least 1, got {config.replicas}")
    if config.max_queued < 0:
        raise InvalidSetting(f"--max-queued must be 0 or more, got {config.max_queued}")
    if config.gpus_per_replica < 0 or config.cpus_per_replica < 0:
        raise InvalidSetting("GPUs and CPUs per replica must not be negative")
    if config.context_parallel < 1:
        raise InvalidSetting(f"--context-parallel must be at least 1, got {config.context_parallel}")
    if config.work_dir is not None and not Path(config.work_dir).is_dir():
        raise InvalidSetting(f"--work-dir {config.work_dir} is not a folder")
    if config.context_parallel > 1:
        from fantasy.speed.layout import ContextParallel, check_context_parallel
        from fantasy.speed.switches import attention_backend_name
        from fantasy.weights.presets import get_preset

        attention = attention_backend_name(config.speed.attention) if config.speed.attention else None
        check_context_parallel(ContextParallel(config.context_parallel), attention, world_size=config.context_parallel,
                               heads=get_preset(config.preset).dit_heads)


# ---- the model replica ---------------------------------------------------------------------------------


class Replica:
    """One resident pipeline; one generation at a time; events out as it runs."""

    def __init__(self, config: ServeConfig):
        from fantasy.app.studio import Studio
        from fantasy.app.validation import FaceChecker, default_face_check
        from fantasy.weights.presets import get_preset

        self.config = config
        self.preset = get_preset(config.preset)
        base = Path(config.work_dir or tempfile.gettempdir())
        remove_stale_roots(base)
        self.root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=base))
        self.broken: str | None = None  # why this replica can no longer generate (its group lost a process)
        self.followers = _start_followers(config) if config.context_parallel > 1 else []
        pipe, self.speed, self.channel = _load(config)
        faces = default_face_check() if config.face_check else FaceChecker(None, "face check skipped: done by the front end")
        self.studio = Studio(pipe, self.preset, faces, self.root, min_chunk_seconds=config.min_chunk_seconds,
                             channel=self.channel)
        self.id = uuid.uuid4().hex[:8]

    def __del__(self):
        """Serve stops the replica: stop a running generation, remove every request's files, release the followers
        (they also leave if this process dies; its folder is then removed by the next replica that starts)."""
        studio = getattr(self, "studio", None)
        if studio is not None:
            with contextlib.suppress(Exception):
                studio.shutdown()
        if getattr(self, "root", None) is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        if getattr(self, "channel", None) is not None and self.broken is None:
            self.channel.shutdown()
            for follower in self.followers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    follower.wait(timeout=60)
        for follower in getattr(self, "followers", []):
            if follower.poll() is None:
                follower.kill()

    def check_health(self) -> None:
        """Serve's health check: a replica whose group lost a process cannot generate again; failing here makes
        Serve replace it (followers included) instead of failing every later request at once."""
        if self.broken is not None:
            raise RuntimeError(self.broken)
        for rank, follower in enumerate(self.followers, start=1):
            code = follower.poll()
            if code is not None:
                raise RuntimeError(f"context-parallel follower rank {rank} exited with status {code}")

    def info(self) -> dict:
        pipe = self.studio.pipe
        device = self.studio.device + (f" × {self.config.context_parallel} (context parallel)"
                                       if self.config.context_parallel > 1 else "")
        return {"preset": self.preset.name, "demo": self.preset.demo, "longest_edge": self.preset.longest_edge,
                "steps": self.preset.steps, "device": device, "motion_mode": pipe.motion_mode,
                "trained_motion": pipe.motion_context is not None, "few_step_mode": pipe.few_step_mode,
                "speed": self.speed, "replica": self.id}

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        """`request`: image/audio bytes and file names, `controls` (`fantasy.app.studio.Controls` fields)."""
        from fantasy.app.studio import Controls

        folder = self.root / f"request-{uuid.uuid4().hex[:12]}"
        folder.mkdir()
        cancel = threading.Event()
        stream, pending, ended = None, None, False
        try:
            if self.broken is not None:
                raise RuntimeError(self.broken)
            image = _save_upload(folder / "image", request["image_name"], request["image"], "portrait")
            audio = _save_upload(folder / "audio", request["audio_name"], request["audio"], "speech")
            try:
                job = self.studio.check(image, audio, Controls(**request.get("controls", {})))
            except FantasyError as exc:
                yield _error(exc, folder)
                return
            job.folder = folder / "job"
            yield {"event": "accepted", "replica": self.id, "request": folder.name, "frames": job.checked.num_frames,
                   "notices": [_scrub(n, folder) for n in job.notices],
                   "status": _scrub(self.studio.status(job, state="Generating…"), folder)}
            stream = self.studio.run(job, cancel=cancel, heartbeat_s=None)  # Ray cancels at each await: no Idle
            while True:
                # The generation runs in the stream's worker thread; its events are awaited off the event loop,
                # shielded so that a cancelled request can still follow the stream to its end (below).
                pending = asyncio.ensure_future(asyncio.to_thread(next, stream, None))
                try:
                    event = await asyncio.shield(pending)
                except FantasyError as exc:
                    ended = True
                    yield _error(exc, folder)
                    return
                if event is None:
                    ended = True
                    return
                yield _wire(event, job, self.studio, folder)
        except Exception as exc:  # noqa: BLE001 - not the product's own error: the replica failed; say so, clean up
            ended = True
            yield self._failed(exc, folder)
        finally:  # also on cancellation: stop the worker at its next step, let it clean up, then remove the files
            cancel.set()
            if stream is not None and not ended:
                await _drain(pending, stream)
            shutil.rmtree(folder, ignore_errors=True)

    def _failed(self, exc: Exception, folder: Path) -> dict:
        from fantasy.speed.group import collective_error, describe_lost, one_line

        if collective_error(exc):  # the group is gone for good: fail the health check, Serve replaces the replica
            self.broken = describe_lost(exc)
        message = self.broken if collective_error(exc) else _scrub(one_line(exc), folder)
        return {"event": "error", "kind": "ReplicaFailed",
                "message": f"The server failed while generating ({message}); the request was cancelled and its "
                           "files removed. Try again."}


def remove_stale_roots(base: Path) -> list[Path]:
    """Folders of replicas that were killed outright (their pid is gone): their uploads and partial videos."""
    removed = []
    for folder in base.glob(f"{ROOT_PREFIX}*"):
        match = re.match(rf"{ROOT_PREFIX}(\d+)-", folder.name)
        if match is None or not folder.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _scrub(text: str, folder: Path) -> str:
    """Messages name the user's files, never the server's folders."""
    for part in ("image", "audio"):
        text = text.replace(f"{folder / part}/", "")
    return text.replace(str(folder), "the request")


def _error(exc: FantasyError, folder: Path) -> dict:
    return {"event": "error", "kind": type(exc).__name__, "message": _scrub(str(exc), folder)}


async def _drain(pending, stream) -> None:
    """Follow a stopped stream to its end: then its worker has stopped and removed what it was writing."""
    try:
        event = True if pending is None else await pending  # a finished future gives its result again
        while event is not None:
            event = await asyncio.to_thread(next, stream, None)
    except FantasyError:  # GenerationCancelled, raised once the worker has cleaned up
        pass


def _load(config: ServeConfig):
    """(pipeline, speed log, job channel or None), the same in a replica and in its followers."""
    from fantasy.app.group_loading import load_in_group
    from fantasy.weights.presets import get_preset

    parallel, channel, device = None, None, None
    if config.context_parallel > 1:
        from fantasy.app.parallel_jobs import join_group
        from fantasy.speed.layout import ContextParallel

        parallel = ContextParallel(config.context_parallel)
        channel, device = join_group(timeout_s=parallel.timeout_s)
    pipe, lines = load_in_group(get_preset(config.preset), device, config.adapter, None, config.speed, parallel)
    return pipe, lines, channel


def _start_followers(config: ServeConfig) -> list[subprocess.Popen]:
    """Ranks 1..N-1 of this replica's group, on the GPUs Ray gave it; this process becomes rank 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(config.context_parallel)}
    os.environ.update(group, RANK="0", LOCAL_RANK="0")
    blob = base64.b64encode(pickle.dumps(config)).decode()
    return [
        subprocess.Popen([sys.executable, "-m", "fantasy.app.serve"],
                         env=dict(os.environ, **group, RANK=str(rank), LOCAL_RANK=str(rank),
                                  FANTASY_SERVE_CONFIG=blob, FANTASY_SERVE_PARENT=str(os.getpid())))
        for rank in range(1, config.context_parallel)
    ]


def _follow() -> None:
    """A follower process of a context-parallel replica: load, then run rank 0's jobs until it shuts down."""
    from fantasy.weights.presets import get_preset

    config: ServeConfig = pickle.loads(base64.b64decode(os.environ["FANTASY_SERVE_CONFIG"]))
    parent = int(os.environ["FANTASY_SERVE_PARENT"])

    def leave_with_parent() -> None:  # a replica killed outright cannot shut its group down
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=leave_with_parent, daemon=True).start()
    pipe, _, channel = _load(config)
    channel.follow(pipe, get_preset(config.preset))


def _save_upload(folder: Path, name: str, data: bytes, fallback: str) -> Path:
    """The upload under the user's own file name (its last part, safe characters), so that messages name it."""
    folder.mkdir()
    base = re.sub(r"[^\w.\- ]", "_", Path(name or "").name).strip(" .")[:120]
    path = folder / (base or fallback)
    path.write_bytes(data)
    return path


def _wire(event, job, studio, folder: Path) -> dict:
    from fantasy.app.streaming import ChunkReady, Finished, PreviewReady, StageProgress

    if isinstance(event, StageProgress):
        return {"event": "progress", "stage": event.stage, "fraction": event.fraction}
    if isinstance(event, PreviewReady):  # the live preview at latent resolution (uint8 frames, tiny)
        p = event.preview
        return {"event": "preview", "frames": p.frames.tobytes(), "shape": list(p.frames.shape), "step": p.step,
                "steps": p.steps, "window": p.window, "windows": p.windows}
    if isinstance(event, ChunkReady):
        c = event.chunk
        return {"event": "chunk", "index": c.index, "first_frame": c.first_frame, "num_frames": c.num_frames,
                "fps": c.fps, "data": c.path.read_bytes()}
    if isinstance(event, Finished):
        result = {k: v for k, v in asdict(event.result).items() if k != "path"}
        return {"event": "done", "result": result, "steps_run": event.steps_run, "video": event.result.path.read_bytes(),
                "status": _scrub(studio.status(job, event.result, steps_run=event.steps_run), folder)}
    raise TypeError(f"unknown stream event {event!r}")


# ---- the HTTP entry ------------------------------------------------------------------------------------


class UploadRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def upload_limit() -> int:
    """The most a POST /generate body may hold: two uploads at the app's limit, plus room for the form."""
    from fantasy.app.validation import MAX_UPLOAD_BYTES

    return 2 * MAX_UPLOAD_BYTES + 256 * 1024


async def read_generate_form(request) -> dict:
    """The request's uploads and controls, read as the body streams in with a running byte count: past the limit
    the request is refused (413) without reading further (and nothing reaches a replica)."""
    from starlette.requests import Request

    from fantasy.app.validation import MAX_UPLOAD_BYTES, human_size

    limit = upload_limit()
    too_large = UploadRefused(413, f"The upload is larger than {human_size(limit)} (the limit is "
                                   f"{human_size(MAX_UPLOAD_BYTES)} per file, portrait and speech). Use smaller files.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    received = 0

    async def counted():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large
        return message

    try:
        form = await Request(request.scope, counted).form(max_files=2, max_fields=4)
    except UploadRefused:
        raise
    except Exception as exc:  # noqa: BLE001 - starlette's parser: a body that is not a multipart form
        raise UploadRefused(400, f"the body is not a multipart form ({exc})") from None
    try:
        uploads = {}
        for name in ("image", "audio"):
            upload = form[name]
            if not hasattr(upload, "read"):
                raise KeyError(name)
            data = await upload.read()
            if len(data) > MAX_UPLOAD_BYTES:
                what = "portrait" if name == "image" else "speech"
                raise UploadRefused(413, f"The {what} file '{Path(upload.filename or name).name}' is "
                                         f"{human_size(len(data))}; the limit is {human_size(MAX_UPLOAD_BYTES)}. "
                                         "Use a smaller file (a shorter clip, or a compressed photo).")
            uploads[name], uploads[f"{name}_name"] = data, upload.filename
    except KeyError:
        raise UploadRefused(400, "send multipart fields image, audio (files) and controls (JSON)") from None
    finally:
        await form.close()
    uploads["controls"] = check_controls(form.get("controls"))
    return uploads


def check_controls(text) -> dict:
    """The controls JSON as `Controls` fields of the right types; a 400 naming what is wrong otherwise."""
    from fantasy.app.studio import Controls

    if text is None or text == "":
        return {}
    try:
        controls = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise UploadRefused(400, f"controls: not JSON ({exc})") from None
    if not isinstance(controls, dict):
        raise UploadRefused(400, f"controls: a JSON object of slider values, not {type(controls).__name__}")
    known = {f.name: f.default for f in fields(Controls)}
    for key, value in controls.items():
        if key not in known:
            raise UploadRefused(400, f"controls: unknown field '{key}'; known: {', '.join(known)}")
        expected = str if isinstance(known[key], str) else (int, float)
        if key == "seed" or key == "steps" or key == "longest_edge":
            expected = int
        if key == "lora_strengths":  # LoRA name -> strength (`Studio.check` says which LoRAs there are)
            expected = dict
        if value is None and known[key] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, expected) or (
                expected is int and isinstance(value, float)):
            kind = {str: "text", int: "a whole number", dict: "an object of LoRA name -> strength"}.get(expected, "a number")
            raise UploadRefused(400, f"controls: '{key}' must be {kind}, got {json.dumps(value)}")
    return controls


class Gateway:
    """`GET /info`, `POST /generate` (multipart form: image, audio, controls) -> NDJSON events."""

    def __init__(self, replica, config: ServeConfig):
        self.replica, self.config = replica, config
        self._info: dict | None = None
        self.waiting: list[str] = []  # requests with no event from a replica yet, in arrival order

    async def __call__(self, request):
        from starlette.responses import JSONResponse, StreamingResponse

        path = request.url.path.rstrip("/")
        if request.method == "GET" and path.endswith("/info"):
            if self._info is None:
                self._info = await self.replica.info.remote()
            return JSONResponse(self._info | {"replicas": self.config.replicas, "max_queued": self.config.max_queued})
        if request.method != "POST" or not path.endswith("/generate"):
            return JSONResponse({"error": "use GET /info or POST /generate"}, status_code=404)
        try:
            payload = await read_generate_form(request)
        except UploadRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        events = self.replica.options(stream=True).generate.remote(payload)
        ticket = uuid.uuid4().hex
        self.waiting.append(ticket)
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.wait({first}, timeout=QUEUE_NOTICE_S)
        if first.done() and first.exception() is not None:
            self._leave(ticket)
            busy = _backpressure(first.exception())
            if busy is not None:
                return JSONResponse({"event": "busy", "message": busy}, status_code=503)
        return StreamingResponse(self._ndjson(ticket, first, events), media_type="application/x-ndjson")

    def _leave(self, ticket: str) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(ticket)

    async def _ndjson(self, ticket: str, first, events) -> AsyncIterator[bytes]:
        """Events as JSON lines (bytes base64): `queued` with the request's place while it waits for a replica,
        `keepalive` when nothing else came for `keepalive_s`, an `error` event when the replica fails; a client
        that goes away cancels the generation."""
        pending = first
        try:
            while True:
                if not pending.done():
                    if ticket in self.waiting:  # its place among the requests no replica has taken yet (1: next)
                        yield _line({"event": "queued", "position": self.waiting.index(ticket) + 1})
                    done, _ = await asyncio.wait({pending}, timeout=self.config.keepalive_s)
                    if not done:
                        if ticket not in self.waiting:
                            yield _line({"event": "keepalive"})
                        continue
                self._leave(ticket)
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - the replica (or its process) failed, or the queue was full
                    busy = _backpressure(exc)
                    yield _line({"event": "error", "kind": "ServerBusy" if busy else "ReplicaFailed",
                                 "message": busy or "The server failed while generating (the replica running this "
                                                    f"request stopped: {type(exc).__name__}); try again."})
                    return
                yield _line(event)
                pending = asyncio.ensure_future(events.__anext__())
        finally:
            self._leave(ticket)
            pending.cancel()
            events.cancel()


def _backpressure(exc: BaseException) -> str | None:
    from ray.serve.exceptions import BackPressureError

    error = exc if isinstance(exc, BackPressureError) else getattr(exc, "cause", None)
    if not isinstance(error, BackPressureError):
        return None
    return (f"The server is busy: every replica is generating and the queue ({error.args[1]} waiting) is full. "
            "Try again in a moment.")


def _line(event: dict) -> bytes:
    encoded = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in event.items()}
    return (json.dumps(encoded) + "\n").encode()


# ---- building and running --------------------------------------------------------------------------------


def build_app(config: ServeConfig):
    """The Serve application: the replicas and their HTTP gateway."""
    from ray import serve

    check_config(config)
    replica = serve.deployment(
        Replica, name=REPLICA_NAME, num_replicas=config.replicas, max_ongoing_requests=1,
        max_queued_requests=config.max_queued, health_check_period_s=config.health_check_period_s,
        health_check_timeout_s=max(30.0, config.health_check_period_s),
        graceful_shutdown_timeout_s=20.0, graceful_shutdown_wait_loop_s=1.0,
        ray_actor_options={"num_gpus": config.gpus_per_replica, "num_cpus": config.cpus_per_replica},
    )
    gateway = serve.deployment(Gateway, name=GATEWAY_NAME, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0})
    return gateway.bind(replica.bind(config), config)


def replica_handle(app_name: str = APP_NAME):
    """A handle on the replicas, for Python callers in the Ray cluster (`handle.options(stream=True)...`)."""
    from ray import serve

    return serve.get_deployment_handle(REPLICA_NAME, app_name=app_name)


def package_root() -> str:
    """The folder holding `fantasy/`: Ray's worker processes need it on their path."""
    return str(Path(__file__).resolve().parents[2])


def run(args) -> int:
    """`python -m fantasy serve`: start Ray and Serve, deploy, and serve until interrupted."""
    import torch

    from fantasy.app.flags import speed_options
    from fantasy.weights.presets import get_preset

    get_preset(args.preset)
    gpus, cp = torch.cuda.device_count(), args.context_parallel
    config = ServeConfig(
        preset=args.preset, adapter=args.adapter,
        replicas=max(1, gpus // max(cp, 1)) if args.replicas is None else args.replicas,
        gpus_per_replica=(float(cp) if gpus else 0.0) if args.gpus_per_replica is None else args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica, max_queued=args.max_queued, speed=speed_options(args),
        face_check=args.face_check, context_parallel=cp, work_dir=args.work_dir,
    )
    check_config(config)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise FantasyError("Ray Serve is not installed: pip install -r requirements-serve.txt") from None
    from fantasy.stop import stop_on_signals

    # The actors' logs stay in Ray's log folder: forwarded here they would print every request and, on a stop,
    # the tracebacks of the streams Serve cuts (not ours to show).
    context = ray.init(address=args.address, runtime_env={"env_vars": {"PYTHONPATH": package_root()}},
                       include_dashboard=False, log_to_driver=False)
    logs = Path(context.address_info.get("session_dir") or tempfile.gettempdir()) / "logs"
    with stop_on_signals():  # again: ray.init replaced our SIGTERM handler with a bare exit
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            print(f"serving {config.replicas} replica(s) of the {config.preset} preset on http://{args.host}:"
                  f"{args.port} (queue bound {config.max_queued}); Ctrl-C stops; Ray's logs: {logs}", flush=True)
            try:
                serve.run(build_app(config), name=APP_NAME, route_prefix="/", blocking=True)
            except RuntimeError as exc:  # Serve's "Deploying application ... failed", with the replica's error
                raise FantasyError(f"the replicas did not start: {str(exc).strip().splitlines()[-1]} (Ray's logs: "
                                   f"{logs})") from None
        finally:  # a stop signal too: the replicas stop their generations and remove their requests' files
            shut_down(config, started_here=args.address is None)
    return 0


def shut_down(config: ServeConfig, started_here: bool) -> None:
    """Stop Serve and Ray; then remove the folders of replicas that did not get to remove their own."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()
    if started_here:  # the replicas ran on this machine
        remove_stale_roots(Path(config.work_dir or tempfile.gettempdir()))


if __name__ == "__main__":  # a follower of a context-parallel replica (`_start_followers`)
    _follow()
