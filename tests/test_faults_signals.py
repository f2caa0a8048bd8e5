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
OUR_LINES = re.compile(r"^(\[tiny\] |face check: |denoise: (window|step) \d|decode: \d+/\d+ frames |note: |STAGE |stopped \()")


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


def wait_until_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    """The pids still alive after up to `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def test_a_tied_child_dies_with_its_parent():
    """`die_with_parent`: a child started with it is killed when its parent is, even by SIGKILL."""
    script = ("import subprocess, sys, time\n"
              "from fantasy.media.tethered import die_with_parent\n"
              "tied = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent())\n"
              "free = subprocess.Popen(['sleep', '60'])\n"
              "print(tied.pid, free.pid, flush=True)\n"
              "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    tied, free = map(int, parent.stdout.readline().split())
    parent.kill()
    parent.wait()
    try:
        assert wait_until_gone([tied]) == []
        assert alive(free)  # untied, it outlives its parent: what every ffmpeg did
    finally:
        signal_quietly(free)


def signal_quietly(pid: int) -> None:
    import contextlib
    import os

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigkill_leaves_no_ffmpeg_and_the_next_run_removes_its_temporaries(tmp_path):
    """SIGKILL while frames are encoded (issue 25): the orphaned encoder saw its input end and finished a playable
    temporary on its own, which nothing ever removed. Now it dies with the run, and the next run into the folder
    removes the cut-off temporary, named after the dead process."""
    import os

    from fantasy.errors import OutputError
    from fantasy.media.audio import ffmpeg_executable
    from fantasy.media.output import read_stream

    out = tmp_path / "o.mp4"
    out.write_bytes(PREVIOUS)
    cmd = ["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
           "--preset", "tiny", "--steps", "2", "--size", "64", "--max-duration", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "tests.stage_hooks", "decode", *cmd], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("STAGE "):
            break
    encoders = ffmpeg_children(proc.pid)
    assert len(encoders) == 1, "".join(lines)
    proc.kill()
    proc.wait()
    assert wait_until_gone(encoders) == []
    left = sorted(p.name for p in tmp_path.iterdir())
    temporaries = [name for name in left if name.endswith(".partial.mp4")]
    assert left == [*temporaries, "o.mp4"] and len(temporaries) == 1
    with pytest.raises(OutputError, match="does not read back"):  # cut off, not finished by an orphan
        read_stream(ffmpeg_executable(), tmp_path / temporaries[0], "v:0")
    assert temporaries[0].startswith(".o.video.") and f".{proc.pid}." in temporaries[0]  # whose it is
    assert out.read_bytes() == PREVIOUS
    rerun = subprocess.run([sys.executable, "-m", "fantasy", *cmd], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"] and probe(out).frames == 25
