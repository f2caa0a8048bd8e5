"""A watchdog for the multi-process tests: a group that hangs fails the test fast, with each rank's last stage.

A deadlock between processes has no error of its own: without this, a fixture waits for its subprocess timeout
(minutes) and then says only "timed out". `run_watched` starts the command in its own session, polls it, and
fails when it exits non-zero, runs past `timeout`, or when no rank has reported a new stage for `quiet` seconds
(each rank writes where it is to STAGES/rankR: `tests.parallel_worker.stage`). The failure names every rank's
last stage and how long ago it was reached, and ends with the group's stderr. The processes also join with a
collective timeout (`FANTASY_TEST_COLLECTIVE_TIMEOUT`, read by the workers), so a collective that waits for a
peer that will never come raises in that process instead of waiting for the watchdog.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


class GroupFailed(AssertionError):
    pass


def last_stages(stages: Path) -> str:
    now = time.time()
    if not stages.is_dir():
        return "no rank reported a stage"
    parts = []
    for path in sorted(stages.glob("rank*")):
        parts.append(f"{path.name.replace('rank', 'rank ')}: '{path.read_text()}' ({now - path.stat().st_mtime:.0f} s ago)")
    return "; ".join(parts) or "no rank reported a stage"


def _newest(stages: Path) -> float | None:
    times = [p.stat().st_mtime for p in stages.glob("rank*")] if stages.is_dir() else []
    return max(times) if times else None


def run_watched(command: list[str], cwd: Path, env: dict, stages: Path, timeout: float = 900.0,
                quiet: float = 240.0, ok: bool = True) -> subprocess.CompletedProcess:
    """Run `command` (torchrun and its ranks) under the watchdog; its CompletedProcess (text output)."""
    log_out, log_err = stages.parent / f"{stages.name}.stdout", stages.parent / f"{stages.name}.stderr"
    started = time.time()
    with open(log_out, "w") as out, open(log_err, "w") as err:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        reason = None
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.time()
            newest = _newest(stages) or started
            if now - started > timeout:
                reason = f"the group ran past {timeout:.0f} s"
            elif now - newest > quiet:
                reason = f"no rank reached a new stage for {quiet:.0f} s (a hang)"
            if reason:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
    done = subprocess.CompletedProcess(command, proc.returncode, log_out.read_text(), log_err.read_text())
    if reason or (done.returncode == 0) != ok:
        why = reason or f"the group exited with {done.returncode}"
        raise GroupFailed(f"{why}; last stages: {last_stages(stages)}\n--- stderr (end) ---\n{done.stderr[-4000:]}")
    return done
