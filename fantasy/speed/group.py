"""The process group of a context-parallel launch: joining it, agreeing, and failing in bounded time.

Several processes that run one video must (1) decide the same things, or they run different weights or
wait forever for each other in a collective, and (2) stop together, saying the real reason once.

- Joining (`init_processes`): NCCL on GPUs, gloo on CPUs, with a collective timeout the user sets
  (`--collective-timeout`, default 10 min): a collective that waits longer raises in every process that waits.
  Each process then dies with its launcher: torchrun's ranks get SIGTERM when torchrun is gone (`kill -9`
  included), through the kernel's parent-death signal, so no orphaned rank goes on computing and writing.
- Agreeing (`agreed`, `agree_min`): steps whose outcome may differ between processes (checking the inputs
  each process reads, choosing the DiT from each GPU's free memory, loading the weights) run everywhere and
  their outcomes are exchanged on a gloo group with a long timeout (loading may take minutes, and not equally
  long everywhere); if any process failed, every process raises the first failing rank's error.
- Saying it once (`claim_report`): a failure outside those steps (in the middle of a generation) is reported by
  the first process that claims it in the launch's key-value store; the others' later errors are consequences
  (a peer that left, a collective that timed out) and stay quiet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from fantasy.errors import FantasyError

T = TypeVar("T")
AGREE_TIMEOUT = timedelta(minutes=30)  # an agreement waits this long for the slowest process (loading)
CONTROL_TIMEOUT = timedelta(days=30)  # the app's job channel waits for the next request this long
REPORT_KEY = "fantasy/first-failure"
STORE_TIMEOUT = timedelta(seconds=5)  # the report's claim, when the launcher's store may be gone
PR_SET_PDEATHSIG = 1
_groups: dict[str, object] = {}


class GroupFailed(FantasyError):
    """Another process of the group failed (its message is this one's), or stopped answering."""


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `signum` when the parent process ends (Linux `prctl(PR_SET_PDEATHSIG)`); elsewhere
    a thread checks every second. A parent already gone (the process was adopted) sends it at once."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signum)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
        return
    if os.getppid() != parent or parent == 1:  # it ended before the request took effect
        os.kill(os.getpid(), signum)


def init_processes(device: str | None = None, timeout_s: float | None = None) -> torch.device:
    """Join the launcher's process group (NCCL on GPUs, gloo on CPUs); the device this process uses.

    `timeout_s`: the collective timeout (None: `fantasy.speed.layout.TIMEOUT_S`). Under torchrun this process
    also ends with torchrun (SIGTERM: it stops and cleans up as on Ctrl-C).
    """
    from fantasy.speed.layout import TIMEOUT_S

    use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    if launched_by_torchrun():
        die_with_parent()
    if not dist.is_initialized():
        timeout = timedelta(seconds=TIMEOUT_S if timeout_s is None else timeout_s)
        if use_cuda:
            dist.init_process_group("nccl", device_id=local, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        _groups.clear()
        _groups["agree"] = dist.new_group(backend="gloo", timeout=AGREE_TIMEOUT)
    return local


def control_group():
    """A gloo group with a long timeout, for the app's jobs and stop decisions (`fantasy.app.parallel_jobs`).

    Every process must call it, in the same order, after `init_processes`.
    """
    return dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def leave_processes() -> None:
    """Leave the process group, if this process joined one (a clean exit for torchrun)."""
    if dist.is_available() and dist.is_initialized():
        _groups.clear()
        with contextlib.suppress(RuntimeError):  # peers already gone: nothing left to leave cleanly
            dist.destroy_process_group()


def in_group() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group, or before joining in the launch (torchrun's RANK); 0 alone."""
    return dist.get_rank() if in_group() else int(os.environ.get("RANK", "0"))


def is_leader() -> bool:
    """The process that prints and writes files: rank 0 of the group (before joining: of the launch)."""
    return rank() == 0


def _agreement_group():
    if "agree" not in _groups:  # joined by someone else (accelerate, a test): made on first use, by every rank
        _groups["agree"] = dist.new_group(backend="gloo", timeout=AGREE_TIMEOUT)
    return _groups["agree"]


def one_line(exc: BaseException) -> str:
    """What a user reads about an error: a `FantasyError`'s message; the type and first line of anything else."""
    if isinstance(exc, FantasyError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def agreed(step: Callable[[], T], what: str = "") -> T:
    """Run `step` in every process; if it failed in any, every process raises (and only the leader says it).

    Alone (no group): just `step()`. A failing process raises its own exception; the others raise
    `GroupFailed` with the first failing rank's message, prefixed with that rank (and `what`) unless every
    process failed alike. All of them are marked `agreed`, so that `print_failure` leaves the saying to rank 0.
    """
    if not in_group():
        return step()
    error: BaseException | None = None
    result = None
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001 - every outcome is exchanged, then re-raised below
        error = exc
    outcomes: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, None if error is None else one_line(error), group=_agreement_group())
    failed = [(r, message) for r, message in enumerate(outcomes) if message is not None]
    if not failed:
        return result
    if error is None:
        first_rank, message = failed[0]
        alike = len(failed) == len(outcomes) and len({m for _, m in failed}) == 1
        error = GroupFailed(message if alike else f"rank {first_rank}{f' ({what})' if what else ''}: {message}")
    error.agreed = True
    raise error


def leader_check(check: Callable[[], object]) -> None:
    """Run `check` on the leader only (e.g. of the output path, which only rank 0 writes) and raise its
    `FantasyError` in every process of the group, so that they stop together instead of waiting for rank 0
    in their next collective."""
    if not in_group():
        check()
        return
    box: list[FantasyError | None] = [None]
    if dist.get_rank() == 0:
        try:
            check()
        except FantasyError as exc:
            box = [exc]
    dist.broadcast_object_list(box, src=0, group=_agreement_group())
    if box[0] is not None:
        box[0].agreed = True
        raise box[0]


def agree_min(value: int) -> int:
    """The smallest of every process's `value` (e.g. free GPU memory), the same in all of them."""
    if not in_group():
        return value
    values: list[int | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, int(value), group=_agreement_group())
    return min(values)


def agree_first(value):
    """Rank 0's `value` (any picklable object), in every process."""
    if not in_group():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_agreement_group())
    return box[0]


def agree_all(flag: bool) -> bool:
    """True in every process if `flag` is true in every process."""
    return bool(agree_min(int(bool(flag))))


def claim_report(unreachable: bool = True) -> bool:
    """Whether this process should print the error it is failing with: the first process of the group to claim
    it does (its failure is the real reason; later ones follow from it). Alone, or before joining: the leader of
    the launch (every process of a launch finds the same bad flag). `unreachable`: the answer when the launcher's
    store cannot be reached (it goes when the launcher tears the group down after a failure it has seen)."""
    if not in_group():
        return is_leader()
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(STORE_TIMEOUT)
        me = str(dist.get_rank())
        return store.compare_set(REPORT_KEY, "", me).decode() == me
    except Exception:  # noqa: BLE001 - the store is the launcher's; it may have gone with it
        return unreachable


def failure_reported() -> bool:
    """Whether a process of the group has already said why it failed (then a stop that follows is no news)."""
    if not in_group():
        return False
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(STORE_TIMEOUT)
        return store.check([REPORT_KEY])
    except Exception:  # noqa: BLE001 - the launcher's store may be gone
        return False


def collective_error(exc: BaseException) -> bool:
    """A failure of a collective itself: a peer that left, a timeout (gloo's RuntimeError, NCCL's DistError)."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and ("/gloo/" in str(exc) or "ProcessGroupNCCL" in str(exc))


def describe_lost(exc: BaseException) -> str:
    """One line for a collective that failed: whether a peer left or did not answer in time."""
    text = str(exc)
    detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    detail = detail.split("] ", 1)[-1].split(". This is typically", 1)[0]  # gloo's source location and advice
    if "Timed out" in text or "timeout" in text.lower():
        return (f"no answer from the other processes of the group within the collective timeout ({detail}); "
                "a process is stuck or gone (raise --collective-timeout if it was only slow)")
    return f"another process of the group stopped ({detail}); every process stops"


def print_failure(exc: BaseException) -> None:
    """`error: ...` on stderr, once for the group: by rank 0 after an agreement (`agreed`, `leader_check`), else by
    the first process to claim it (`claim_report`), naming its rank unless it is rank 0."""
    if getattr(exc, "agreed", False):
        if not is_leader():
            return
    elif not claim_report(unreachable=not collective_error(exc)):  # a lost peer with the launcher gone: the launcher
        return  # is tearing the group down after a failure it saw (said by that process, or by the launcher)
    message = describe_lost(exc) if collective_error(exc) else one_line(exc)
    prefix = f"rank {rank()}: " if not getattr(exc, "agreed", False) and not is_leader() else ""
    print(f"error: {prefix}{message}", file=sys.stderr, flush=True)
