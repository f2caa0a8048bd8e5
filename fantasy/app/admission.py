"""How many generations the app runs and lets wait, decided atomically as each request arrives.

Gradio checks its queue's `max_size` before a join's validator runs (the validator awaits a thread), so requests
joining at the same moment all pass that check: 16 simultaneous joins got 14-16 places where 9 existed. Here one
lock decides: `enter()` gives a ticket or raises `StudioBusy`; a ticket waits its turn (first come, first served)
in `wait()`, which returns every `timeout` seconds so that the waiting request can report its place and notice a
closed page; `leave()` gives the place or the slot back. A request therefore holds its place only while its
handler runs, and whatever ends the handler (done, error, Stop, a closed page, a cancelled API call) frees it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from fantasy.errors import FantasyError

BUSY = "The studio is busy: {waiting} waiting, the most it queues. Please try again in a few minutes."


class StudioBusy(FantasyError):
    """Every generation slot is taken and the waiting line is full."""

    title = "Studio busy"


@dataclass(eq=False)
class Ticket:
    """One request's place: in the line until it gets a slot, then running until it leaves."""

    number: int
    entered: float = field(default_factory=time.monotonic)
    started: float | None = None  # when it got its slot


class Admission:
    """At most `slots` generations at once and `max_waiting` waiting behind them; the rest are turned away."""

    def __init__(self, slots: int = 1, max_waiting: int = 8):
        if slots < 1 or max_waiting < 0:
            raise ValueError(f"need slots >= 1 and max_waiting >= 0, got {slots} and {max_waiting}")
        self.slots, self.max_waiting = slots, max_waiting
        self._changed = threading.Condition()
        self._line: deque[Ticket] = deque()
        self._running: set[Ticket] = set()
        self._issued = 0

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._line)

    @property
    def running(self) -> int:
        with self._changed:
            return len(self._running)

    def enter(self) -> Ticket:
        """A place: a slot at once when one is free and nobody waits, else in the line; `StudioBusy` when
        `slots` run and `max_waiting` wait."""
        with self._changed:
            if self._full():
                raise self._busy()
            self._issued += 1
            ticket = Ticket(self._issued)
            self._line.append(ticket)
            self._promote()
            return ticket

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """True once `ticket` holds a slot; False after `timeout` seconds (then ask again, or `leave`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while ticket not in self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def busy(self) -> StudioBusy | None:
        """The refusal `enter()` would raise now, or None (a hint: only `enter()` decides)."""
        with self._changed:
            return self._busy() if self._full() else None

    def _full(self) -> bool:
        return len(self._running) + len(self._line) >= self.slots + self.max_waiting

    def _busy(self) -> StudioBusy:
        waiting = len(self._line)
        return StudioBusy(BUSY.format(waiting=f"{waiting} video{'s' * (waiting != 1)}"))

    def _promote(self) -> None:
        """Give free slots to the front of the line (under the lock)."""
        while self._line and len(self._running) < self.slots:
            ticket = self._line.popleft()
            ticket.started = time.monotonic()
            self._running.add(ticket)
        self._changed.notify_all()

    def ahead(self, ticket: Ticket) -> int:
        """Requests before `ticket` in the line (0 when it is next, or running)."""
        with self._changed:
            for i, other in enumerate(self._line):
                if other is ticket:
                    return i
            return 0

    def leave(self, ticket: Ticket) -> None:
        """Give back the ticket's slot or place (twice is harmless)."""
        with self._changed:
            self._running.discard(ticket)
            with suppress(ValueError):
                self._line.remove(ticket)
            self._promote()

    @contextmanager
    def place(self) -> Iterator[Ticket]:
        """`enter()` ... `leave()`, whatever ends the block."""
        ticket = self.enter()
        try:
            yield ticket
        finally:
            self.leave(ticket)
