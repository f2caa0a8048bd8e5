"""Faults of a context-parallel launch end in bounded time, with the real reason said once, nothing written.

Each test runs `python -m fantasy generate --context-parallel N` under torchrun (2 or 3 CPU processes) with one
fault made exact by `tests.rank_faults`: weights missing on one rank only, an error or a crash on one rank in the
middle of denoising, a rank that stops answering (the collective timeout ends the others), a rank killed with
SIGKILL, and torchrun itself killed with SIGKILL (its ranks must not go on computing and writing).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.parallel_cases import portrait_file, speech_file

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
pytestmark = pytest.mark.slow


def command(processes: int, fault: str, rank: int, work: Path, *extra: str) -> list[str]:
    speech, portrait = speech_file(work.parent, 1.0), portrait_file(work.parent)
    heads = ["--heads", "6"] if processes == 3 else []
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m",
            "tests.rank_faults", *heads, fault, str(rank), "generate", "--image", str(portrait), "--audio", str(speech),
            "--out", "cp.mp4", "--steps", "3", "--size", "64", "--context-parallel", str(processes), "--no-face-check",
            *extra]  # a drawn portrait


class Launch:
    """torchrun in its own session; stderr collected line by line as it comes."""

    def __init__(self, argv: list[str], work: Path):
        work.mkdir(exist_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, cwd=work, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []
        self.out_lines: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stdout, self.out_lines), daemon=True)]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 300) -> list[re.Match]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.err))
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"'{pattern}' x{count} not seen; stderr:\n{self.err[-4000:]}")

    def finish(self, timeout: float = 300) -> float:
        """Wait for torchrun to end; the seconds since the launch."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        for reader in self.readers:  # the pipes close when every process holding them has ended
            reader.join(timeout=30)
        return time.monotonic() - self.started


def said(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line or "stopped (" in line]


def our_tracebacks(err: str) -> list[str]:
    return re.findall(r'File ".*/(?:fantasy|tests)/[^"]*"', err)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def nothing_written(work: Path) -> bool:
    return list(work.iterdir()) == []


@pytest.mark.parametrize("processes", [2, 3])
def test_weights_missing_on_one_rank_only_are_said_once_by_rank_0(tmp_path, processes):
    """The last rank cannot load (its node lacks a file): every rank stops after the agreement on loading, and the
    launch says that rank's own message once (before, rank 0 waited in its first collective and nobody said it)."""
    work = tmp_path / "run"
    launch = Launch(command(processes, "missing-weights", processes - 1, work), work)
    seconds = launch.finish()
    line = (f"error: rank {processes - 1} (loading the models): Missing weight file "
            "/node2/weights/wav2vec2-base-960h/model.safetensors (test)")
    assert launch.proc.returncode != 0 and launch.err.count(line) == 1, launch.err[-3000:]
    assert said(launch.err) == [line] and not our_tracebacks(launch.err), launch.err[-3000:]
    assert nothing_written(work) and seconds < 240


@pytest.mark.parametrize("processes,fault,message", [
    (2, "error-at-step", "error: rank 1: test: this rank's GPU reported an error"),
    (3, "crash-at-step", "error: rank 2: RuntimeError: CUDA error: an illegal memory access was encountered (test)"),
])
def test_an_error_on_one_rank_mid_run_is_said_once(tmp_path, processes, fault, message):
    """Outside any agreement (denoising): the failing rank claims the report; the others, whose collectives then
    fail, stay quiet; no rank prints a traceback; rank 0 leaves no temporary file."""
    work = tmp_path / "run"
    launch = Launch(command(processes, fault, processes - 1, work), work)
    seconds = launch.finish()
    assert launch.proc.returncode != 0 and launch.err.count(message) == 1, launch.err[-3000:]
    assert said(launch.err) == [message], launch.err[-3000:]
    assert not our_tracebacks(launch.err), launch.err[-3000:]
    assert nothing_written(work) and seconds < 240


def test_a_rank_that_stops_answering_ends_the_group_at_the_collective_timeout(tmp_path):
    """Rank 1 hangs at the first step; rank 0 waits in its next collective for --collective-timeout (8 s, not the
    default 10 minutes), then says so once and the launch ends."""
    work = tmp_path / "run"
    launch = Launch(command(2, "wait-at-step", 1, work, "--collective-timeout", "8"), work)
    launch.wait_for(r"STAGE wait pid=\d+")
    waited = time.monotonic()
    launch.finish()
    after = time.monotonic() - waited
    message = ("error: no answer from the other processes of the group within the collective timeout (Timed out "
               "waiting 8000ms")
    assert len(said(launch.err)) == 1 and said(launch.err)[0].startswith(message), launch.err[-3000:]
    assert "raise --collective-timeout if it was only slow" in launch.err
    assert 7 < after < 90 and nothing_written(work), (after, launch.err[-3000:])


def test_a_rank_killed_with_sigkill_stops_the_others_at_once(tmp_path):
    """SIGKILL of rank 2 of 3 while the others wait for it in a collective: they see the connection close and end,
    long before any timeout; nothing is written."""
    work = tmp_path / "run"
    launch = Launch(command(3, "wait-at-step", 2, work), work)
    pid = int(launch.wait_for(r"STAGE wait pid=(\d+)")[0].group(1))
    ranks = [int(m.group(1)) for m in launch.wait_for(r"STAGE step rank=\d pid=(\d+)", count=3)]
    time.sleep(1.0)  # the others are in their next collective
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    launch.finish()
    after = time.monotonic() - killed
    # The killed rank has nothing to say; torchrun names it. A survivor says why it stops, unless torchrun has
    # already torn the group down (its store gone): never more than once, never a traceback.
    lines = said(launch.err)
    assert lines in ([], [lines[0]]) and all(re.match(r"error: (rank [01]: )?another process of the group stopped \(",
                                                      line) for line in lines), launch.err[-3000:]
    assert "Signal 9 (SIGKILL) received by PID" in launch.err and not our_tracebacks(launch.err), launch.err[-3000:]
    assert after < 60 and not any(alive(p) for p in ranks) and nothing_written(work), after


def test_killing_torchrun_with_sigkill_ends_every_rank(tmp_path):
    """torchrun itself killed outright (it cannot stop its ranks): each rank gets SIGTERM from the kernel (parent
    death), stops and cleans up as on Ctrl-C; none goes on computing or writing."""
    work = tmp_path / "run"
    launch = Launch(command(2, "wait-at-step", 1, work), work)
    launch.wait_for(r"STAGE wait pid=\d+")
    ranks = [int(m.group(1)) for m in launch.wait_for(r"STAGE step rank=\d pid=(\d+)", count=2)]
    time.sleep(1.0)
    os.kill(launch.proc.pid, signal.SIGKILL)  # torchrun only, not its process group
    deadline = time.monotonic() + 60
    while any(alive(p) for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in ranks if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    launch.finish()
    assert left == [], launch.err[-3000:]
    time.sleep(2.0)  # had a rank gone on, it would be writing by now
    assert nothing_written(work), sorted(p.name for p in work.iterdir())
