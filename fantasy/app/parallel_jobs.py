"""A context-parallel group serving jobs: rank 0 leads (the app, a Ray replica), the other ranks follow.

Every rank must run the same generation, step for step, or the DiT's collectives hang. Rank 0 announces
each job (input paths, settings, face crop) on a gloo control group; the followers run it with
`generate(..., out_path=None)` (they write nothing). Stopping is agreed, never decided alone: at every
checkpoint (each `generate` progress or frames callback, which all ranks reach in the same order) rank 0
broadcasts CONTINUE or STOP, and every rank acts on that one word. After the job rank 0 sends one more
word, so followers also learn when rank 0 failed after its last checkpoint (a full disk while muxing).

The protocol, per job: announce, then for every checkpoint one word, then (unless a checkpoint said STOP)
one closing word. Followers that fail on their own (a device fault) exit, and torchrun ends the group.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from PIL import Image

from fantasy.errors import FantasyError, GenerationCancelled
from fantasy.generation import PreparedInputs, Settings, generate
from fantasy.weights.loras import lora_scales_for_run

CONTINUE, STOP = 0, 1
T = TypeVar("T")
Agree = Callable[[bool], bool]  # rank 0's wish to stop -> what the whole group does


@dataclass(frozen=True)
class JobSpec:
    """What every rank needs to run the same generation: rank 0's prepared inputs (the resized portrait and
    the decoded speech, so the followers compute on exactly what rank 0 does and need not read the uploads),
    else paths on storage all ranks share."""

    image: str | Image.Image
    audio: str
    settings: Settings
    face_image: Image.Image | None = None
    inputs: PreparedInputs | None = None
    lora_scales: dict[str, float] | None = None  # this job's LoRA strengths (separate-layer LoRAs), on every rank


@dataclass
class FollowLog:
    """What a follower did, for its log and for tests: per job, the checkpoints passed and how it ended."""

    jobs: list[tuple[str, int, str]] = field(default_factory=list)  # (audio path, checkpoints, outcome)


def join_group(device: str | None = None, timeout_s: float | None = None) -> tuple[JobChannel, torch.device]:
    """Join the launch's process group and open the job channel on its control group; every process calls it,
    in the same order. Returns the channel and the device this process uses. `timeout_s`: the collective
    timeout of the generations (the channel itself waits for the next job as long as it takes)."""
    from fantasy.speed.group import control_group, init_processes

    local = init_processes(device, timeout_s)
    return JobChannel(control_group()), local


class JobChannel:
    """Rank 0's announcements and stop decisions on a control group (`fantasy.speed.group.control_group`)."""

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    # ---- rank 0 --------------------------------------------------------------------------------------

    def lead(self, spec: JobSpec, run: Callable[[Agree], T]) -> T:
        """Announce `spec`, run it (`run(agree)`, agreeing at each checkpoint), close it; rank 0 only."""
        self._announce(spec)
        stopped = False

        def agree(stop: bool) -> bool:
            nonlocal stopped
            stopped = self._word(STOP if stop else CONTINUE) == STOP
            return stopped

        try:
            result = run(agree)
        except BaseException:
            if not stopped:  # followers wait at their next checkpoint, or for the closing word
                self._word(STOP)
            raise
        self._word(CONTINUE)
        return result

    def shutdown(self) -> None:
        """Tell the followers to return from `follow` (rank 0, when the app or replica stops).

        Followers already gone (Ctrl-C under torchrun reaches every rank) are not an error at this point.
        """
        with contextlib.suppress(RuntimeError):  # gloo/NCCL: "connection closed by peer"
            self._announce(None)

    # ---- the other ranks -----------------------------------------------------------------------------

    def follow(self, pipe, preset, log: FollowLog | None = None) -> FollowLog:
        """Run every job rank 0 announces, until it shuts the group down."""
        log = log or FollowLog()
        while (spec := self._announce()) is not None:
            passed = 0

            def checkpoint(*_args) -> None:
                nonlocal passed
                passed += 1
                if self._word() == STOP:
                    raise GenerationCancelled("Generation stopped by rank 0.")

            try:
                with lora_scales_for_run(pipe, spec.lora_scales or {}):
                    generate(pipe, spec.image, spec.audio, None, spec.settings, preset, progress=checkpoint,
                             on_frames=checkpoint, face_image=spec.face_image, inputs=spec.inputs)
            except GenerationCancelled:
                log.jobs.append((spec.audio, passed, "stopped"))
                continue
            except FantasyError as exc:  # rank 0 read the same input and failed alike: it sends STOP
                self._word()
                log.jobs.append((spec.audio, passed, f"failed: {exc}"))
                continue
            closing = self._word()
            log.jobs.append((spec.audio, passed, "done" if closing == CONTINUE else "rank 0 failed"))
        return log

    # ---- the wire ------------------------------------------------------------------------------------

    def _announce(self, spec: JobSpec | None = None) -> JobSpec | None:
        box = [spec]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def _word(self, word: int = CONTINUE) -> int:
        value = torch.tensor([word], dtype=torch.int64)
        dist.broadcast(value, src=0, group=self.group)
        return int(value.item())


def job_spec(image, audio, settings: Settings, face_image: Image.Image | None = None,
             inputs: PreparedInputs | None = None, lora_scales: dict[str, float] | None = None) -> JobSpec:
    """A `JobSpec` with absolute paths (the followers may run from another directory)."""
    image = image if isinstance(image, Image.Image) else str(Path(image).resolve())
    return JobSpec(image, str(Path(audio).resolve()), settings, face_image, inputs, lora_scales or None)
