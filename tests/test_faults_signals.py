"""SIGTERM and SIGINT (and SIGHUP) in each stage of `python -m fantasy generate`, as real processes.

Each run is paused in its stage by `tests.stage_hooks` and signalled from here. Each must end with the
conventional status (128 + the signal), one line saying it stopped, no traceback, no third-party noise,
no temporary file, no ffmpeg left running, and the earlier video at the target untouched; a signal during
the final rename waits for it and says the video is complete.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT
from tests.faults import alive, ffmpeg_children
from tests.mp4_probe import probe
from tests.stage_hooks import STAGES

PREVIOUS = b"an earlier video that a stopped run must not touch\n"
CASES = [(stage, sig) for stage in STAGES for sig in (signal.SIGTERM, signal.SIGINT)] + [("decode", signal.SIGHUP)]
OUR_LINES = re.compile(r"^(\[tiny\] |  (denoise|decode): \d+%$|note: |STAGE |stopped \()")


@dataclass
class Outcome:
    code: int
    stderr: str
    stdout: str
    left: list[str]
    encoders: list[int]  # ffmpeg children of the run when it was signalled
    out: Path


def run_case(root: Path, stage: str, sig: signal.Signals) -> Outcome:
    folder = root / f"{stage}-{sig.name}"
    folder.mkdir()
    out = folder / "o.mp4"
    out.write_bytes(PREVIOUS)
    cmd = [sys.executable, "-m", "tests.stage_hooks", stage, "generate", "--image", str(EXAMPLE_IMAGE), "--audio",
           str(EXAMPLE_SPEECH), "--out", str(out), "--preset", "tiny", "--steps", "2", "--size", "64",
           "--max-duration", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("STAGE "):
            break
    encoders = ffmpeg_children(proc.pid)
    proc.send_signal(sig)
    lines.append(proc.stderr.read())
    stdout = proc.stdout.read()
    code = proc.wait(timeout=300)
    return Outcome(code, "".join(lines), stdout, sorted(p.name for p in folder.iterdir()), encoders, out)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict:
    """All cases, each its own process, three at a time (each imports torch and builds the tiny models)."""
    root = tmp_path_factory.mktemp("signals")
    with ThreadPoolExecutor(3) as pool:
        futures = {case: pool.submit(run_case, root, *case) for case in CASES}
        return {case: future.result() for case, future in futures.items()}


@pytest.mark.slow
# The module fixture runs 13 real generations (3 at a time) inside the first case's time: 408 s measured on the
# 2-core machine shared with other jobs, over the suite's 300 s per test.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage, sig", CASES, ids=[f"{stage}-{sig.name}" for stage, sig in CASES])
def test_a_stop_signal_in_each_stage_leaves_nothing_behind(outcomes, stage, sig):
    run = outcomes[(stage, sig)]
    lines = run.stderr.splitlines()
    assert f"STAGE {stage}" in lines, run.stderr  # the signal came in that stage
    assert run.code == 128 + sig, run.stderr
    assert "Traceback" not in run.stderr and all(OUR_LINES.match(line) for line in lines), run.stderr
    assert len(run.encoders) == (stage in ("denoise", "decode"))  # the encoder waits for frames from the start
    assert not any(alive(pid) for pid in run.encoders)  # and is gone after the stop
    if stage == "publish":  # the rename had begun: it finishes, and the message says so
        assert lines[-1] == f"stopped ({sig.name}), {run.out} was already complete"
        assert run.left == ["o.mp4"] and probe(run.out).frames == 25
        return
    assert lines[-1] == f"stopped ({sig.name}), nothing written"
    assert run.stdout == ""
    assert run.left == ["o.mp4"] and run.out.read_bytes() == PREVIOUS
