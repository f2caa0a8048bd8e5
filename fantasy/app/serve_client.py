"""The app's thin front end over a Ray Serve deployment (`app.py --serve URL`; see `fantasy.app.serve`).

`RemoteStudio` is a `Studio` whose generations run on the server: the page checks the inputs here (fast
feedback, same messages), posts them to `URL/generate`, and turns the NDJSON events back into the events
the page already shows (progress, chunks written locally as they arrive, the finished mp4). Stop closes the
HTTP stream; the server then cancels the request and stops the generation at its next step. Only httpx
(which Gradio brings) is needed here, not Ray.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import httpx

from fantasy.app.streaming import Chunk, ChunkReady, Finished, Idle, PreviewReady, StageProgress, StreamEvent
from fantasy.app.studio import Controls, Job, Studio
from fantasy.errors import FantasyError, GenerationCancelled
from fantasy.generation import Result
from fantasy.media.output import publish, remove_quietly, temp_path

CONNECT_TIMEOUT_S = 10.0


class ServerBusy(FantasyError):
    """The deployment's queue is full (HTTP 503)."""


class ServerUnreachable(FantasyError):
    """No deployment answers at the given URL."""


@dataclass
class RemoteInfo:
    """What the page needs to know about the pipeline it cannot see (the attributes it reads on one)."""

    info: dict
    url: str

    @property
    def device(self) -> str:
        return f"Ray Serve at {self.url} ({self.info['replicas']} × {self.info['device']})"

    @property
    def motion_context(self):
        return True if self.info["trained_motion"] else None

    @property
    def motion_mode(self) -> str:
        return self.info["motion_mode"]

    @property
    def few_step_mode(self) -> bool:
        return self.info["few_step_mode"]


def fetch_info(url: str) -> RemoteInfo:
    url = url.rstrip("/")
    try:
        response = httpx.get(f"{url}/info", timeout=CONNECT_TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ServerUnreachable(f"cannot reach the serve deployment at {url} ({exc}); start it with "
                                "`python -m fantasy serve`") from None
    return RemoteInfo(response.json(), url)


@dataclass
class RemoteJob(Job):
    controls: Controls | None = None


class RemoteStudio(Studio):
    def __init__(self, remote: RemoteInfo, preset, face_checker, output_root, **limits):
        super().__init__(remote, preset, face_checker, output_root, **limits)
        self.remote = remote

    def check(self, image, audio, controls: Controls, portrait_name: str | None = None) -> RemoteJob:
        job = super().check(image, audio, controls, portrait_name)
        return RemoteJob(**{f.name: getattr(job, f.name) for f in fields(Job)}, controls=controls)

    def run(self, job: RemoteJob, cancel: threading.Event | None = None,
            heartbeat_s: float | None = None) -> Iterator[StreamEvent]:
        """Stream the job from the server; tracked like a local run, so `shutdown` stops it and removes its
        files (the server gets no heartbeat from here: it sends an event every step)."""
        job.folder.mkdir(parents=True, exist_ok=True)
        cancel = cancel if cancel is not None else threading.Event()
        self._running[job.folder] = cancel
        return self._tracked(job.folder, self._stream(job, cancel))

    def _stream(self, job: RemoteJob, cancel: threading.Event) -> Iterator[StreamEvent]:
        files = {"image": (job.image.name, job.image.read_bytes()), "audio": (job.audio.name, job.audio.read_bytes())}
        data = {"controls": json.dumps(asdict(job.controls))}
        chunks: list[Chunk] = []
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=None)  # a step may take a while on a busy server
        try:
            with httpx.stream("POST", f"{self.remote.url}/generate", files=files, data=data, timeout=timeout) as reply:
                if reply.status_code == 503:
                    raise ServerBusy(json.loads(reply.read())["message"])
                if reply.status_code != 200:
                    raise FantasyError(_refusal(reply.status_code, reply.read()))
                for line in reply.iter_lines():
                    if cancel.is_set():  # leaving the stream closes it: the server cancels the request
                        raise GenerationCancelled("Generation stopped.")
                    event = json.loads(line)
                    kind = event["event"]
                    if kind == "error":
                        raise (GenerationCancelled if event["kind"] == "GenerationCancelled" else FantasyError)(
                            event["message"])
                    if kind == "progress":
                        yield StageProgress(event["stage"], event["fraction"])
                    elif kind == "queued":  # every replica is busy: waiting, `position` 1 = next
                        yield StageProgress("queued", 0.0)
                    elif kind == "keepalive":
                        yield Idle()
                    elif kind == "preview":
                        yield PreviewReady(_preview(event))
                    elif kind == "chunk":
                        chunk = _save_chunk(job.chunk_dir, event)
                        chunks.append(chunk)
                        yield ChunkReady(chunk)
                    elif kind == "done":  # the server verified it; here it appears whole or not at all
                        partial = temp_path(job.out_path, "download")
                        try:
                            partial.write_bytes(base64.b64decode(event["video"]))
                            publish(partial, job.out_path)
                        finally:
                            remove_quietly(partial)
                        result = Result(path=job.out_path, **event["result"])
                        yield Finished(result, chunks, event["steps_run"])
                        return
        except httpx.HTTPError as exc:
            raise ServerUnreachable(f"lost the serve deployment at {self.remote.url} ({exc})") from None
        if cancel.is_set():
            raise GenerationCancelled("Generation stopped.")
        raise FantasyError("the server ended the stream without a video")


def _refusal(status: int, body: bytes) -> str:
    """The server's one-line reason (`{"error": ...}`), else the status and the start of the body."""
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"the server answered {status}: {body.decode(errors='replace')[:200]}"


def _preview(event: dict):
    import numpy as np

    from fantasy.model.preview import Preview

    frames = np.frombuffer(base64.b64decode(event["frames"]), dtype=np.uint8).reshape(event["shape"])
    return Preview(frames, event["step"], event["steps"], event["window"], event["windows"])


def _save_chunk(folder: Path, event: dict) -> Chunk:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"chunk{event['index']:03d}.mp4"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(base64.b64decode(event["data"]))
    partial.replace(path)
    return Chunk(path, event["index"], event["first_frame"], event["num_frames"], event["fps"])
