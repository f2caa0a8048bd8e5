"""`python -m tests.rank_faults FAULT RANK generate ...`: the CLI under torchrun with a fault on one rank only.

What a real cluster does to one process, made exact (not a matter of timing) for `tests/test_parallel_faults.py`:
  missing-weights  loading raises `WeightsMissing` on RANK only (the weights are not on the second node)
  error-at-step    RANK raises a `FantasyError` at the first denoising step (mid-run, outside any agreement)
  crash-at-step    RANK raises a RuntimeError there (a device fault)
  wait-at-step     RANK prints `STAGE wait pid=PID` at the first step and sleeps there, never answering; the
                   others go on into the next collective (the test then kills RANK, or torchrun, or lets the
                   collective timeout end them)
Every rank prints `STAGE step rank=R pid=PID` when it reaches the first step. `--heads 6` (first) builds the tiny
preset's DiT with 6 heads of the same width, so that Ulysses can split it over 3 processes (its 2 heads cannot).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from fantasy import quiet  # noqa: F401  (as the CLI does, before the imports below)

FAULTS = ("missing-weights", "error-at-step", "crash-at-step", "wait-at-step")


def say(text: str) -> None:
    sys.stderr.write(text + "\n")  # one write: the ranks share one stderr
    sys.stderr.flush()


def six_heads() -> None:
    import dataclasses
    import functools

    import fantasy.weights.presets as presets
    import fantasy.weights.tiny as tiny

    tiny.tiny_components = functools.partial(tiny.tiny_components, heads=6)
    presets.PRESETS["tiny"] = dataclasses.replace(presets.PRESETS["tiny"], dit_heads=6)


def install(fault: str, target: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    import fantasy.weights.presets
    from fantasy.errors import FantasyError, WeightsMissing

    rank = int(os.environ["RANK"])
    if fault == "missing-weights":
        load = fantasy.weights.presets.load_pipeline

        def missing(*args, **kwargs):
            if rank == target:
                raise WeightsMissing("Missing weight file /node2/weights/wav2vec2-base-960h/model.safetensors (test)")
            return load(*args, **kwargs)

        fantasy.weights.presets.load_pipeline = missing
        return
    step = FlowMatchEulerDiscreteScheduler.step
    seen = {"steps": 0}

    def faulty(self, *args, **kwargs):
        seen["steps"] += 1
        if seen["steps"] == 1:
            say(f"STAGE step rank={rank} pid={os.getpid()}")
            if rank == target:
                if fault == "error-at-step":
                    raise FantasyError("test: this rank's GPU reported an error")
                if fault == "crash-at-step":
                    raise RuntimeError("CUDA error: an illegal memory access was encountered (test)")
                say(f"STAGE wait pid={os.getpid()}")
                while True:
                    time.sleep(0.05)
        return step(self, *args, **kwargs)

    FlowMatchEulerDiscreteScheduler.step = faulty


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (see tests.stage_hooks)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    argv = sys.argv[1:]
    if argv[:2] == ["--heads", "6"]:
        six_heads()
        argv = argv[2:]
    fault, target = argv[0], int(argv[1])
    if fault not in FAULTS:
        raise SystemExit(f"unknown fault {fault}; one of {', '.join(FAULTS)}")
    install(fault, target)
    from fantasy.cli import main

    raise SystemExit(main(argv[2:]))
