"""Stop signals as one exception in the main thread, so every `with` and `finally` on the way out cleans up.

SIGINT (Ctrl-C), SIGTERM (kill, systemd, docker stop) and SIGHUP (a closed terminal) each raise
`StopRequested` once; later signals are ignored while that unwinds, so the cleanup itself cannot be
interrupted. A signal the caller's shell set to "ignore" (e.g. `nohup`) stays ignored. The final rename of
a finished video runs with signals held (`held_signals`), so a stop can never leave a half-moved file and
says truthfully whether the video was already in place.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):  # noqa: N818 - not an error: a request, like KeyboardInterrupt
    """A stop signal arrived. A BaseException, so `except Exception` clean-up code cannot swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.written: Path | None = None  # set when the video was already in place as the signal arrived

    @property
    def exit_status(self) -> int:
        """The shell convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP)."""
        return 128 + self.signum


_state = {"stopping": False, "held": None}  # held: signals waiting for the end of a `held_signals` block


def _on_signal(signum: int, frame) -> None:
    if _state["stopping"]:
        return  # already unwinding: let the clean-up finish
    if _state["held"] is not None:
        _state["held"].append(signum)
        return
    _state["stopping"] = True
    raise StopRequested(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Inside the block, each of `signals` raises `StopRequested` in the main thread; restored afterwards."""
    if not _in_main_thread():
        yield
        return
    previous = {}
    for signum in signals:
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state["stopping"] = False


@contextmanager
def held_signals() -> Iterator[None]:
    """Signals arriving inside wait until the block has finished, then stop as usual."""
    if not _in_main_thread() or _state["held"] is not None:
        yield
        return
    _state["held"] = []
    try:
        yield
    except BaseException:
        _state["held"] = None
        raise
    pending, _state["held"] = _state["held"], None
    if pending and not _state["stopping"]:
        _state["stopping"] = True
        raise StopRequested(pending[0])
