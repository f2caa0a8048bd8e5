"""The app's logic without Gradio: slider values -> settings, checked jobs, the status line, ZeroGPU pickling."""

from __future__ import annotations

import pickle

import pytest

from fantasy.app.streaming import ChunkReady, Finished
from fantasy.app.studio import Controls, Studio, settings_from_controls
from fantasy.app.validation import FaceChecker
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
