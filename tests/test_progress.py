"""Progress people can read: `generate` reports every step and decoded chunk with its window, step, elapsed time
and ETA; the console display draws one tqdm line on a terminal and plain lines in a log; the API takes the same
callback."""

from __future__ import annotations

import io

import pytest

from fantasy.progress import ConsoleProgress, Progress, ProgressClock, describe


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def two_windows(clock: FakeClock) -> list[Progress]:
    """A run of 2 windows x 3 steps, 10 s per step, 97 frames decoded after each window (81, then 16)."""
    progress = ProgressClock(2, 3, 97, clock=clock)
    events = []
    for index, frames in enumerate((81, 97)):
        clock.now += 5  # conditioning
        progress.window_begins(index)
        for step in (1, 2, 3):
            clock.now += 10
            events.append(progress.denoised(step))
        clock.now += 4
        events.append(progress.decoded(frames))
    return events


def test_each_report_has_its_window_step_elapsed_time_and_eta():
    events = two_windows(FakeClock())
    first, third, decoded, fourth = events[0], events[2], events[3], events[4]
    assert first == Progress("denoise", 1 / 6, 1, 2, 1, 3, 0, 97, elapsed_s=15.0, window_elapsed_s=10.0,
                             eta_s=50.0, window_eta_s=20.0)
    assert (third.fraction, third.window_eta_s, third.eta_s) == (0.5, 0.0, 30.0)
    assert decoded == Progress("decode", 81 / 97, 1, 2, 3, 3, 81, 97, elapsed_s=39.0, window_elapsed_s=34.0,
                               eta_s=(34.0 / 3) * 3, window_eta_s=0.0)
    # window 2: its own clock restarts; the run's ETA spreads the decode and conditioning over the steps so far
    assert (fourth.window, fourth.step, fourth.run_step, fourth.window_elapsed_s) == (2, 1, 4, 10.0)
    assert fourth.eta_s == pytest.approx(49.0 / 4 * 2)
    assert events[-1].fraction == 1.0 and events[-1].frames == 97


def test_plain_lines_in_a_log_first_and_last_step_of_each_window_and_each_decode():
    clock, stream = FakeClock(), io.StringIO()
    display = ConsoleProgress(stream, every_s=1000, terminal=False, clock=clock)
    with display:
        for event in two_windows(FakeClock()):
            display(event)
    assert stream.getvalue().splitlines() == [
        "denoise: window 1/2, step 1/3 (00:10<00:20); run 1/6 steps (00:15<00:50)",
        "denoise: window 1/2, step 3/3 (00:30<00:00); run 3/6 steps (00:35<00:30)",
        "decode: 81/97 frames (00:39 elapsed)",
        "denoise: window 2/2, step 1/3 (00:10<00:20); run 4/6 steps (00:54<00:24)",
        "denoise: window 2/2, step 3/3 (00:30<00:00); run 6/6 steps (01:14<00:00)",
        "decode: 97/97 frames (01:18 elapsed)",
    ]


def test_plain_lines_in_between_at_most_every_few_seconds():
    clock, stream = FakeClock(), io.StringIO()
    display = ConsoleProgress(stream, every_s=25, terminal=False, clock=clock)
    progress = ProgressClock(1, 10, 25, clock=clock)
    progress.window_begins(0)
    for step in range(1, 11):
        clock.now += 10
        display(progress.denoised(step))
    display.close()
    steps = [line.split(",")[0].split("step ")[1].split(" ")[0] for line in stream.getvalue().splitlines()]
    assert steps == ["1/10", "4/10", "7/10", "10/10"]  # first, then every 30 s (>= 25 s), the last


def test_one_updating_tqdm_line_on_a_terminal():
    stream = io.StringIO()
    with ConsoleProgress(stream, terminal=True) as display:
        for event in two_windows(FakeClock()):
            display(event)
    text = stream.getvalue()
    assert "\n" not in text.rstrip("\n") and text.count("\r") >= 3  # redrawn in place (tqdm skips some), one line
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("window 2/2 ") and "6/6 steps [" in last and "decoding 97/97 frames" in last


def test_one_window_reads_without_window_counts():
    clock = FakeClock()
    progress = ProgressClock(1, 30, 81, clock=clock)
    progress.window_begins(0)
    clock.now += 12
    assert describe(progress.denoised(1)) == "denoise: step 1/30 (00:12<05:48)"


@pytest.mark.slow
def test_the_api_takes_the_same_callback(tiny_pipe, tmp_path):
    from fantasy import ConsoleProgress as Exported
    from fantasy import Settings, generate, get_preset

    from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH

    stream, events = io.StringIO(), []
    display = Exported(stream, terminal=False, every_s=0)

    def both(event: Progress) -> None:
        events.append(event)
        display(event)

    generate(tiny_pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, tmp_path / "o.mp4",
             Settings(steps=2, longest_edge=64, max_duration=4, max_frames=49), get_preset("tiny"), progress=both)
    display.close()
    # 4 s at 23 fps: 97 frames in 3 windows of at most 49
    denoise = [(e.window, e.windows, e.step, e.steps) for e in events if e.stage == "denoise"]
    assert denoise == [(w, 3, s, 2) for w in (1, 2, 3) for s in (1, 2)]
    assert [e.frames for e in events if e.stage == "decode"][-1] == 97
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("denoise: window 1/3, step 1/2 (") and lines[-1].startswith("decode: 97/97 frames")
