"""The app's logic without Gradio: controls -> settings, checked jobs, the status and its details, the progress line,
the download's name, ZeroGPU pickling."""

from __future__ import annotations

import pickle
import re

import pytest

from fantasy.app.controls import check_controls
from fantasy.app.progress import RunClock, clock
from fantasy.app.sliders import effective_values
from fantasy.app.streaming import ChunkReady, Finished
from fantasy.app.studio import Controls, Studio, download_name, settings_from_controls
from fantasy.app.validation import FaceChecker
from fantasy.errors import InvalidSetting
from fantasy.generation import DEFAULT_PROMPT
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH


def test_controls_become_settings():
    settings, mode = settings_from_controls(Controls(prompt="  ", expression=1.0, body=0.0, steps=12.0, seed=5.0,
                                                     longest_edge=96.0, text_guidance=3))
    assert mode == "training-free (prompt + audio weight)"
    assert settings.prompt == DEFAULT_PROMPT  # an empty prompt falls back to the release's
    assert (settings.steps, settings.seed, settings.longest_edge) == (12, 5, 96)  # sliders send floats
    assert isinstance(settings.steps, int) and isinstance(settings.seed, int)
    assert (settings.audio_weight, settings.audio_guidance, settings.text_guidance) == (1.4, 7.0, 3.0)
    defaults, _ = settings_from_controls(Controls())
    assert defaults.steps is None and defaults.longest_edge is None  # the preset decides


@pytest.mark.slow
def test_a_job_runs_and_its_status_says_everything(tiny_pipe, tmp_path):
    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "face check skipped: test"), tmp_path)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(steps=2, longest_edge=64, max_duration_s=1.0, seed=3))
    assert not job.folder.exists()  # checking alone leaves nothing on disk
    # ZeroGPU hands the job to a forked worker and the events back through queues: all must pickle
    assert pickle.loads(pickle.dumps(job)).checked.num_frames == 25
    events = list(studio.run(job))
    assert all(pickle.loads(pickle.dumps(e)) == e for e in events if isinstance(e, ChunkReady))
    done = events[-1]
    assert isinstance(done, Finished) and pickle.loads(pickle.dumps(done)).result == done.result
    assert job.out_path.is_file() and done.steps_run == 2
    status = studio.status(job, done.result, steps_run=done.steps_run)
    line, notice = status.split("\n\n")
    assert line.startswith("**Done** in ")
    for part in ("preset **tiny** (random weights: output is noise)", "device cpu",
                 "motion: training-free (prompt + audio weight)", "25 frames 64×64 @ 23 fps (1.1 s)",
                 "2 steps × 3 passes", "seed 3", "face check skipped: test"):
        assert part in line
    assert notice == "⚠️ The speech is 6.4 s long; it was cut to the maximum duration of 1.0 s."
    waiting = studio.status(job, state="Denoising…")
    assert waiting.startswith("**Denoising…** · ") and "25 frames, 2 steps" in waiting


def test_old_outputs_are_cleaned_up(tiny_pipe, tmp_path):
    import os
    import time

    old, recent = tmp_path / "old-job", tmp_path / "recent-job"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "talking.mp4").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "skipped"), tmp_path)
    studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls())
    assert not old.exists() and recent.exists()


def test_window_count_follows_the_core(tiny_pipe, tmp_path):
    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "skipped"), tmp_path)
    assert studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(max_duration_s=3.0)).window_count == 1  # 73 frames
    assert studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls()).window_count == 2  # 149 frames = 81 + 68


# ---- the controls' ranges, the download's name, the short status and its details ------------------------------


@pytest.mark.parametrize("name, value, message", [
    ("steps", 60, "Denoising steps must be between 1 and 50, got 60."),
    ("steps", 2.5, "Denoising steps must be a whole number, got 2.5."),
    ("resolution", 500, "Resolution (longest edge, px) must be a multiple of 16, got 500."),
    ("resolution", 4096, "Resolution (longest edge, px) must be between 64 and 1024, got 4096."),
    ("expression", 1.5, "Expression intensity must be between 0 and 1, got 1.5."),
    ("audio_guidance", float("nan"), "Audio guidance must be between 1 and 10, got nan."),
    ("text_guidance", "loud", "Text guidance needs a number, got 'loud'."),
    ("max_duration", True, "Maximum duration (s) needs a number, got True."),
    ("seed", -1, "Seed must be between 0 and 9223372036854775807, got -1."),
    ("prompt", "x" * 1001, "The prompt is 1001 characters long; the limit is 1000."),
])
def test_a_control_out_of_range_is_refused_naming_it(name, value, message):
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$") as refused:
        check_controls(**{name: value})
    assert refused.value.concerns == name  # an API client reads it against that parameter


def test_controls_come_back_as_numbers_of_their_kind():
    assert check_controls(steps=12.0, resolution="96", audio_weight=1, seed=2**40, prompt=None) == {
        "steps": 12, "resolution": 96, "audio_weight": 1.0, "seed": 2**40, "prompt": ""}


def test_the_studio_checks_the_controls_before_reading_any_file(tiny_pipe, tmp_path):
    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "skipped"), tmp_path)
    with pytest.raises(InvalidSetting, match="^Denoising steps must be between 1 and 50, got 0.$"):
        studio.check(tmp_path / "nothing.png", tmp_path / "nothing.wav", Controls(steps=0))


@pytest.mark.parametrize("portrait, seed, name", [
    ("anna.jpg", 7, "anna-seed7.mp4"), ("My photo (1).PNG", 1111, "My-photo-1-seed1111.mp4"),
    ("фото.webp", 3, "фото-seed3.mp4"), ("../../etc/x.png", 1, "x-seed1.mp4"), ("....png", 1, "portrait-seed1.mp4"),
])
def test_downloads_are_named_after_the_portrait_and_the_seed(portrait, seed, name):
    assert download_name(portrait, seed) == name


def test_the_video_file_carries_that_name_and_the_status_is_short_with_the_rest_in_details(tiny_pipe, tmp_path):
    studio = Studio(tiny_pipe, get_preset("tiny"), FaceChecker(None, "face check skipped: test"), tmp_path)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(steps=2, longest_edge=64, max_duration_s=1.0, seed=3),
                       portrait_name="Anna Smith.jpg")
    done = list(studio.run(job))[-1]
    assert done.result.path == job.folder / "Anna-Smith-seed3.mp4" and done.result.path.is_file()
    summary = studio.summary(job, done.result)
    head, notice = summary.split("\n\n")
    assert re.fullmatch(r"\*\*Done\*\* in \d+\.\d s: a 1\.1 s video, 64×64, seed 3\. \(Demo model: the output is "
                        r"noise\.\)", head), head
    assert notice == "⚠️ The speech is 6.4 s long; it was cut to the maximum duration of 1.0 s."
    assert studio.details(job, done.result, steps_run=done.steps_run).splitlines() == [
        "- preset **tiny** (random weights: output is noise)", "- device cpu",
        "- motion: training-free (prompt + audio weight)", "- 25 frames 64×64 @ 23 fps (1.1 s)",
        "- 2 steps × 3 passes", "- audio weight 1.00, audio guidance 5.0, text guidance 5.0, seed 3",
        "- face check skipped: test"]


def test_the_effective_audio_values_are_shown_where_expression_changes_them():
    assert effective_values(0.5, 5.0, 1.0, trained=False) == (
        "Used for the run: audio guidance **5.0**, audio weight **1.00** (as set in Advanced).")
    assert effective_values(0.6, 5.0, 1.0, trained=False) == (
        "Used for the run: audio guidance **5.4**, audio weight **1.08** (Expression 0.6 scales the Advanced "
        "values ×1.08).")
    assert effective_values(1.0, 9.0, 2.0, trained=False).startswith(  # clamped to the ranges, as the run does
        "Used for the run: audio guidance **10.0**, audio weight **2.00**")
    assert effective_values(0.9, 4.5, 1.0, trained=True) == (
        "Expression and body motion drive the trained motion module; audio guidance 4.5 and audio weight 1 are "
        "used as set.")
    assert effective_values(None, 5.0, 1.0, trained=False) == ""  # a value being typed
    # what the line says is what the run uses
    settings, _ = settings_from_controls(Controls(expression=0.6))
    assert (round(settings.audio_guidance, 1), round(settings.audio_weight, 2)) == (5.4, 1.08)


# ---- the progress line ---------------------------------------------------------------------------------------


def test_the_progress_line_counts_steps_over_clips_with_elapsed_time_and_an_estimate():
    clock = RunClock(steps_per_window=30, windows=2, started=100.0)
    clock.waiting(2)
    assert clock.line(now=103) == "Waiting for the GPU · 2 ahead of you · 0:03 elapsed"
    clock.update("audio", 1.0, now=110)
    assert clock.line(now=110) == "Encoding speech · 0:10 elapsed"
    clock.update("denoise", 0.0, now=110)
    clock.update("denoise", 12 / 60, now=134)  # 12 steps in 24 s: 2 s a step
    assert clock.line(now=134) == "Denoising · step 12 of 60 · clip 1 of 2 · 0:34 elapsed · about 1:48 left"
    assert clock.left(now=134) == pytest.approx(48 * 2 + 0.1 * 120)  # the steps left, then the decode's share
    assert clock.fraction() == pytest.approx(0.9 * 12 / 60)
    clock.update("denoise", 31 / 60, now=172)
    assert "step 31 of 60 · clip 2 of 2" in clock.line(now=172)
    clock.update("decode", 0.0, now=230)
    clock.update("decode", 0.25, now=234)  # 4 s for a quarter: 12 s left
    assert clock.line(now=234) == "Decoding video · 25% · 2:14 elapsed · about 0:12 left"
    clock.finish()
    assert clock.line(now=250) == "Done · 2:30 elapsed" and clock.fraction() == 1.0
    assert 'aria-hidden="true"' in clock.html(now=250) and 'value="100"' in clock.html(now=250)


@pytest.mark.parametrize("seconds, text", [(0, "0:00"), (7.4, "0:07"), (65, "1:05"), (3723, "1:02:03")])
def test_clock(seconds, text):
    assert clock(seconds) == text
