"""Progress of one generation: what `generate` reports after each denoising step and each decoded chunk, and a
console display of it (a tqdm bar on a terminal, plain periodic lines in logs).

`generate(..., progress=callback)` calls `callback(Progress(...))`; `ConsoleProgress()` is such a callback, the
one the CLI uses, and Python callers can pass it too. The reports themselves are deterministic (one per step and
per chunk, whatever the clock says: the processes of a context-parallel group count them in lockstep); only the
display decides how often it draws.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class Progress:
    """One report. Times are seconds; the ETAs extrapolate the mean time per step so far (None before a step)."""

    stage: str  # "denoise" or "decode"
    fraction: float  # of this stage over the whole run, 0..1
    window: int  # 1-based window of the long-video path (one window up to --max-frames frames)
    windows: int
    step: int  # denoising steps done in this window (decode: all of them)
    steps: int  # denoising steps per window
    frames: int  # video frames written so far
    total_frames: int  # frames of the whole video
    elapsed_s: float  # since the run started
    window_elapsed_s: float  # since this window's first step started
    eta_s: float | None  # until the last window's last step
    window_eta_s: float | None  # until this window's last step

    @property
    def run_step(self) -> int:
        """Denoising steps done over the whole run."""
        return (self.window - 1) * self.steps + self.step

    @property
    def run_steps(self) -> int:
        return self.windows * self.steps


ProgressFn = Callable[[Progress], None]


class ProgressClock:
    """Turns `generate`'s counts into `Progress` reports (elapsed times and ETAs from one monotonic clock)."""

    def __init__(self, windows: int, steps: int, total_frames: int, clock: Callable[[], float] = time.perf_counter):
        self.windows, self.steps, self.total_frames, self.clock = windows, steps, total_frames, clock
        self.started = clock()
        self.first_step_at: float | None = None  # when the first window's first step started
        self.window_started = self.started
        self.window, self.step, self.frames = 1, 0, 0

    def window_begins(self, index: int) -> None:
        """Window `index` (0-based) starts denoising now."""
        self.window, self.step = index + 1, 0
        self.window_started = self.clock()
        if self.first_step_at is None:
            self.first_step_at = self.window_started

    def denoised(self, step: int) -> Progress:
        self.step = step
        return self._report("denoise", ((self.window - 1) + step / self.steps) / self.windows)

    def decoded(self, frames: int) -> Progress:
        self.frames = frames
        return self._report("decode", frames / self.total_frames if self.total_frames else 1.0)

    def _report(self, stage: str, fraction: float) -> Progress:
        now = self.clock()
        window_elapsed = now - self.window_started
        done = (self.window - 1) * self.steps + self.step
        eta = window_eta = None
        if done and self.first_step_at is not None:
            eta = (now - self.first_step_at) / done * (self.windows * self.steps - done)
        if self.step:
            window_eta = window_elapsed / self.step * (self.steps - self.step)
        return Progress(stage, min(1.0, fraction), self.window, self.windows, self.step, self.steps, self.frames,
                        self.total_frames, now - self.started, window_elapsed, eta, window_eta)


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _interval(seconds: float | None) -> str:
    from tqdm import tqdm

    return "?" if seconds is None else tqdm.format_interval(seconds)


def describe(event: Progress) -> str:
    """One plain line: 'denoise: window 1/2, step 12/30 (00:20<00:21); run 12/60 steps (00:21<01:44)'."""
    if event.stage == "decode":
        return f"decode: {event.frames}/{event.total_frames} frames ({_interval(event.elapsed_s)} elapsed)"
    window = f"window {event.window}/{event.windows}, " if event.windows > 1 else ""
    line = (f"denoise: {window}step {event.step}/{event.steps} "
            f"({_interval(event.window_elapsed_s)}<{_interval(event.window_eta_s)})")
    if event.windows > 1:
        line += f"; run {event.run_step}/{event.run_steps} steps ({_interval(event.elapsed_s)}<{_interval(event.eta_s)})"
    return line


class ConsoleProgress:
    """Show `Progress` reports on a console: one updating tqdm line on a terminal; elsewhere (CI, logs, a pipe)
    a plain line at each window's first and last step, at the end of each window's decoding, and at most every
    `every_s` seconds in between.

    Use as `generate(..., progress=ConsoleProgress())`, and call `close()` (or use it as a context manager)
    when the run ends, so the terminal line is finished before anything else is printed.
    """

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0, terminal: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.every_s, self.clock = every_s, clock
        self.bar = None
        self.last_line_at: float | None = None
        self.last: Progress | None = None  # the latest report
        self.last_line: Progress | None = None  # the latest one printed
        self.pending: Progress | None = None  # a decode count not printed yet

    def __call__(self, event: Progress) -> None:
        if self.terminal:
            self._draw(event)
        else:
            if self.pending is not None and event.stage != "decode":
                self._line(self.pending)  # a window's decoding ended: its last count
            if self._line_due(event):
                self._line(event)
            self.pending = event if event.stage == "decode" and self.last_line is not event else None
        self.last = event

    def _line(self, event: Progress) -> None:
        print(describe(event), file=self.stream, flush=True)
        self.last_line, self.last_line_at, self.pending = event, self.clock(), None

    def _line_due(self, event: Progress) -> bool:
        last = self.last
        if event.stage == "denoise":
            if last is None or last.stage != "denoise" or last.window != event.window or event.step == event.steps:
                return True  # a window's first and last step
        elif event.frames == event.total_frames:
            return True  # the whole video is decoded
        return self.last_line_at is None or self.clock() - self.last_line_at >= self.every_s

    def _draw(self, event: Progress) -> None:
        from tqdm import tqdm

        where = f"window {event.window}/{event.windows}" if event.windows > 1 else "denoise"
        if self.bar is None:
            known = _columns(self.stream) > 0  # a terminal that reports no width (a bare pty) gets 100 columns
            self.bar = tqdm(total=event.run_steps, desc=where, unit="step", file=self.stream, leave=True,
                            dynamic_ncols=known, ncols=None if known else 100, nrows=None if known else 20,
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]{postfix}")
        if event.stage == "denoise":
            self.bar.set_description_str(where, refresh=False)
            self.bar.set_postfix_str(f"window: step {event.step}/{event.steps} "
                                     f"[{_interval(event.window_elapsed_s)}<{_interval(event.window_eta_s)}]",
                                     refresh=False)
            self.bar.update(event.run_step - self.bar.n)
        else:
            self.bar.set_postfix_str(f"decoding {event.frames}/{event.total_frames} frames", refresh=True)

    def close(self) -> None:
        if self.pending is not None:
            self._line(self.pending)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
