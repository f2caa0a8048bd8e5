"""The app's admission: how many generations run and wait, decided atomically (threads released together)."""

from __future__ import annotations

import threading

import pytest

from fantasy.app.admission import Admission, StudioBusy


def together(count: int, action) -> list:
    """`action()` in `count` threads released at the same moment by a barrier; results or exceptions, in order."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = action()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_simultaneous_requests_get_exactly_the_places_there_are():
    for _ in range(20):  # many rounds: a check-then-act race shows up in some of them
        gate = Admission(slots=1, max_waiting=8)
        outcomes = together(16, gate.enter)
        accepted = [o for o in outcomes if not isinstance(o, Exception)]
        refused = [o for o in outcomes if isinstance(o, StudioBusy)]
        assert (len(accepted), len(refused)) == (9, 7)
        assert gate.running == 1 and gate.waiting == 8  # the first one in started at once
        assert {str(r) for r in refused} == {
            "The studio is busy: 8 videos waiting, the most it queues. Please try again in a few minutes."}


def test_turns_go_first_come_first_served_and_leaving_frees_the_place():
    gate = Admission(slots=1, max_waiting=2)
    first, second, third = gate.enter(), gate.enter(), gate.enter()
    with pytest.raises(StudioBusy, match=r"^The studio is busy: 2 videos waiting"):
        gate.enter()
    assert gate.wait(first, timeout=0) and (gate.running, gate.waiting) == (1, 2)  # a free slot: it started
    assert not gate.wait(second, timeout=0.01)  # the slot is taken
    assert (gate.ahead(first), gate.ahead(second), gate.ahead(third)) == (0, 0, 1)
    gate.leave(third)  # a waiting request goes away (a closed page): its place is free, the order stays
    fourth = gate.enter()
    assert (gate.ahead(second), gate.ahead(fourth)) == (0, 1)
    gate.leave(first)  # the slot goes to the first in line, not to whoever asks first
    assert not gate.wait(fourth, timeout=0.01) and gate.wait(second, timeout=0)
    gate.leave(second)
    gate.leave(second)  # twice is harmless
    assert gate.wait(fourth, timeout=0) and (gate.running, gate.waiting) == (1, 0)


def test_a_waiting_request_gets_the_slot_as_soon_as_it_is_free():
    gate = Admission(slots=1, max_waiting=1)
    running, waiting = gate.enter(), gate.enter()
    got = threading.Event()
    threading.Thread(target=lambda: gate.wait(waiting) and got.set()).start()
    assert not got.wait(0.05)
    gate.leave(running)
    assert got.wait(5)


def test_several_slots_run_together():
    gate = Admission(slots=2, max_waiting=1)
    a, b = gate.enter(), gate.enter()
    assert gate.wait(a, timeout=0) and gate.wait(b, timeout=0) and gate.running == 2
    with gate.place() as c:
        assert not gate.wait(c, timeout=0.01)  # both slots are taken
        with pytest.raises(StudioBusy, match="1 video waiting"):
            gate.enter()
    assert gate.waiting == 0  # the block gave its place back


def test_busy_says_what_enter_would_without_taking_a_place():
    gate = Admission(slots=1, max_waiting=1)
    assert gate.busy() is None
    gate.enter(), gate.enter()
    assert str(gate.busy()) == "The studio is busy: 1 video waiting, the most it queues. Please try again in a few minutes."
    assert (gate.running, gate.waiting) == (1, 1)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="need slots >= 1 and max_waiting >= 0, got 0 and 8"):
        Admission(0, 8)
