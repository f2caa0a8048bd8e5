"""`python -m tests.stage_hooks STAGE generate ...`: the CLI, paused in one stage until a signal arrives.

On reaching the stage it prints `STAGE <name>` on stderr and waits there; the fault-injection tests send
the signal at that moment, so "a signal during stage X" is exact, not a matter of timing. Stages:
load (loading the models), denoise (after the first step), decode (the encoder has a frame), mux (the muxed
temporary file exists), verify (the muxed file was read back), publish (inside the final rename, where
signals are held until the video is in place).
"""

from __future__ import annotations

import signal
import sys
import time

from fantasy import quiet, stop  # noqa: F401  (quiet: as the CLI does, before the imports below)

STAGES = ("load", "denoise", "decode", "mux", "verify", "publish")


def reached(stage: str) -> None:
    # One write of the whole line: ranks under torchrun share one stderr and reach a stage at the same moment
    # (their steps are synchronised), and print() writes the text and its newline apart, so two lines could mix.
    sys.stderr.write(f"STAGE {stage}\n")
    sys.stderr.flush()
    if stage == "publish":
        while not stop._state["held"]:  # the rename's guard holds the signal; then the rename goes on
            time.sleep(0.01)
        return
    while True:  # the signal handler raises StopRequested out of this sleep
        time.sleep(0.05)


def after(function, stage: str):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        reached(stage)
        return result
    return wrapped


def install(stage: str) -> None:
    import fantasy.media.video
    import fantasy.weights.presets
    from fantasy.model.pipeline import FantasyTalkingPipeline

    if stage == "load":
        load = fantasy.weights.presets.load_pipeline
        fantasy.weights.presets.load_pipeline = lambda *a, **k: (reached(stage), load(*a, **k))[1]
    elif stage == "denoise":
        denoise = FantasyTalkingPipeline.denoise

        def reaching(self, *args, callback_on_step_end=None, **kwargs):
            def on_step(pipe, step: int, timestep, tensors: dict) -> dict:
                out = callback_on_step_end(pipe, step, timestep, tensors) if callback_on_step_end is not None else {}
                if step == 0:
                    reached(stage)
                return out
            return denoise(self, *args, callback_on_step_end=on_step, **kwargs)

        FantasyTalkingPipeline.denoise = reaching
    elif stage == "decode":
        fantasy.media.video.FrameEncoder.send = after(fantasy.media.video.FrameEncoder.send, stage)
    elif stage == "mux":
        fantasy.media.video.mux_audio = after(fantasy.media.video.mux_audio, stage)
    elif stage == "verify":
        fantasy.media.video.verify_mp4 = after(fantasy.media.video.verify_mp4, stage)
    elif stage == "publish":
        publish = fantasy.media.video.publish
        fantasy.media.video.publish = lambda *a, **k: (reached(stage), publish(*a, **k))[1]
    else:
        raise SystemExit(f"unknown stage {stage}; one of {', '.join(STAGES)}")


if __name__ == "__main__":
    # As when started from a terminal, whatever the test runner was started with: a shell's background job
    # ignores Ctrl-C, `nohup` ignores SIGHUP, and the product rightly leaves an ignored signal ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    install(sys.argv[1])
    from fantasy.cli import main

    raise SystemExit(main(sys.argv[2:]))
