"""Where a generation is, how long it has taken and about how long it has left: the page's progress line.

`RunClock` follows a run's stream events (`fantasy.app.streaming.StageProgress`) and keeps its own start time,
so the elapsed time runs on from the click (Gradio's own timer restarts at every update). The estimate of what
is left comes from the run itself: the seconds per denoising step so far times the steps left, plus the decode
at the rate measured while it runs (before it starts: a share of the denoising time, `DECODE_SHARE`).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

STAGE_NAMES = {"waiting": "Waiting for the GPU", "starting": "Starting", "audio": "Encoding speech",
               "denoise": "Denoising", "decode": "Decoding video", "done": "Done", "stopped": "Stopped"}
DECODE_SHARE = 0.1  # decode time as a share of the denoising time, until the decode's own rate is measured


def clock(seconds: float) -> str:
    """0:07, 1:05, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class RunClock:
    """A run's stage, steps (over all windows), elapsed time and estimate of the time left."""

    steps_per_window: int
    windows: int = 1
    started: float = field(default_factory=time.monotonic)
    stage: str = "starting"
    steps_done: int = 0
    ahead: int = 0  # while waiting: requests before this one
    decode_fraction: float = 0.0
    _denoise_started: float | None = None
    _denoise_seconds: float | None = None
    _decode_started: float | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_window * self.windows

    def waiting(self, ahead: int) -> None:
        self.stage, self.ahead = "waiting", ahead

    def update(self, stage: str, fraction: float, now: float | None = None) -> None:
        """A `StageProgress`: `fraction` of `stage` ("audio", "denoise", "decode") is done."""
        now = time.monotonic() if now is None else now
        if stage == "denoise":
            if self._denoise_started is None:
                self._denoise_started = now
            self.steps_done = min(self.total_steps, round(fraction * self.total_steps))
        elif stage == "decode":
            if self._decode_started is None:
                self._decode_started = now
                if self._denoise_started is not None:
                    self._denoise_seconds = now - self._denoise_started
            self.decode_fraction = fraction
        self.stage = stage

    def finish(self, stage: str = "done") -> None:
        self.stage = stage

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def left(self, now: float | None = None) -> float | None:
        """Seconds left, or None while there is nothing to go by (before the first step)."""
        now = time.monotonic() if now is None else now
        if self.stage == "denoise" and self.steps_done and self._denoise_started is not None:
            per_step = (now - self._denoise_started) / self.steps_done
            denoise = per_step * self.total_steps
            return per_step * (self.total_steps - self.steps_done) + DECODE_SHARE * denoise
        if self.stage == "decode" and self._decode_started is not None:
            if self.decode_fraction > 0:
                spent = now - self._decode_started
                return spent / self.decode_fraction * (1 - self.decode_fraction)
            return DECODE_SHARE * (self._denoise_seconds or 0.0)
        return None

    def fraction(self) -> float:
        """How much of the whole run is done, for the bar (denoising counts 90 %, the decode the rest)."""
        if self.stage == "done":
            return 1.0
        denoise = self.steps_done / max(1, self.total_steps)
        if self.stage == "decode":
            return 0.9 + 0.1 * self.decode_fraction
        return 0.9 * denoise

    def line(self, now: float | None = None) -> str:
        """'Denoising · step 12 of 30 · 0:45 elapsed · about 1:10 left'."""
        parts = [STAGE_NAMES.get(self.stage, self.stage)]
        if self.stage == "waiting":
            parts.append("next in line" if self.ahead == 0 else f"{self.ahead} ahead of you")
        elif self.stage == "denoise":
            parts.append(f"step {self.steps_done} of {self.total_steps}")
            if self.windows > 1:
                window = min(self.windows, self.steps_done // max(1, self.steps_per_window) + 1)
                parts.append(f"clip {window} of {self.windows}")
        elif self.stage == "decode":
            parts.append(f"{self.decode_fraction:.0%}")
        parts.append(f"{clock(self.elapsed(now))} elapsed")
        left = self.left(now)
        if left is not None and self.stage not in ("done", "stopped"):
            parts.append(f"about {clock(left)} left")
        return " · ".join(parts)

    def html(self, now: float | None = None) -> str:
        """The bar and the line, for the page (hidden from screen readers: the status line speaks for it)."""
        percent = round(100 * self.fraction())
        return (f'<div class="fantasy-progress" aria-hidden="true"><progress max="100" value="{percent}"></progress>'
                f'<span>{html.escape(self.line(now))}</span></div>')


def idle_html(text: str = "") -> str:
    """The progress area with no run going: no bar, only `text` (nothing when empty)."""
    return f'<div class="fantasy-progress idle" aria-hidden="true"><span>{html.escape(text)}</span></div>' if text \
        else '<div class="fantasy-progress idle" aria-hidden="true"></div>'

