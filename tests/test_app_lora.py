"""The app's LoRA control: a strength slider per LoRA kept as separate layers, set for one run and restored after.

The LoRA is a file in ComfyUI's layout for the tiny DiT (`tests.test_loras`); what a run really used is read from
the PEFT layers themselves while the DiT runs (their `scaling`), not from our own bookkeeping.
"""

from __future__ import annotations

import re
import threading

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import ValidationError

from fantasy.app import ui as app
from fantasy.app.lora_strengths import fused_note, page_loras
from fantasy.app.parallel_jobs import CONTINUE, JobChannel, job_spec
from fantasy.app.streaming import Finished
from fantasy.app.studio import Controls, Studio
from fantasy.errors import GenerationCancelled, InvalidSetting
from fantasy.weights.loras import LoraSpec, load_loras
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from tests.test_app import FAKE_FACES, launch
from tests.test_loras import lora_tensors, spelled, write
from tests.test_speed import fresh

LOADED = 0.5  # the strength given at launch (`--lora style.safetensors:0.5`)
FAST = Controls(steps=1, longest_edge=64, max_duration_s=1.0)  # one 25-frame window, one step


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("loras"), "style.safetensors", spelled(lora_tensors(), "comfy"))


def loaded_pipe(lora_file, fuse: bool):
    pipe = fresh()
    return pipe, load_loras(pipe, [LoraSpec(lora_file, LOADED)], fuse=fuse)


@pytest.fixture(scope="module")
def separate(lora_file):
    """A tiny pipeline with the LoRA kept as separate layers (`--no-fuse-lora`), and what `load_loras` said."""
    return loaded_pipe(lora_file, fuse=False)


def scaling(pipe) -> float:
    """The strength the DiT uses now, read from one of the LoRA's PEFT layers (diffusers folds the file's alpha / rank
    into the weights as it converts them, so a layer's `scaling` is the strength)."""
    return pipe.transformer.blocks[0].attn1.to_q.scaling["lora_0"]


class Watch:
    """The LoRA strength at every DiT call; `then` runs after recording (a fault, a stop)."""

    def __init__(self, pipe, then=None):
        self.pipe, self.then, self.seen = pipe, then, []

    def __enter__(self):
        def record(*_):
            self.seen.append((round(scaling(self.pipe), 6), dict(self.pipe.lora_scales)))
            if self.then is not None:
                self.then()

        self.handle = self.pipe.transformer.register_forward_pre_hook(record)
        return self

    def __exit__(self, *_):
        self.handle.remove()


def studio_for(pipe, applied, tmp_path) -> Studio:
    return Studio(pipe, get_preset("tiny"), FAKE_FACES, tmp_path, loras=page_loras(applied))


def blocks(demo, prefix: str) -> list:
    return [b for b in demo.blocks.values() if str(getattr(b, "elem_id", None) or "").startswith(prefix)]


@pytest.mark.slow
def test_the_slider_is_on_the_page_only_when_the_loras_are_kept_as_separate_layers(separate, lora_file, tmp_path):
    pipe, applied = separate
    demo = app.build_demo(pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path, loras=applied)
    [slider] = blocks(demo, "lora-strength-")
    assert (slider.label, slider.minimum, slider.maximum, slider.step, slider.value) == (
        "style.safetensors", -4.0, 4.0, 0.05, LOADED)
    assert slider.info.startswith("How strongly this LoRA acts on this video: 0 turns it off, 1 is its full effect")
    assert blocks(demo, "lora-fused") == []
    advanced = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "advanced")
    assert slider.parent is advanced or slider.parent.parent is advanced  # in the Advanced settings

    fused_pipe, fused = loaded_pipe(lora_file, fuse=True)
    demo = app.build_demo(fused_pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path, loras=fused)
    assert blocks(demo, "lora-strength-") == []
    [line] = blocks(demo, "lora-fused")
    assert line.value == (
        "LoRAs fused into the model at launch: **style.safetensors** ×0.50. Their strength is fixed; to set it per "
        "video with a slider, start the app with `--no-fuse-lora` (on a Space: the variable `FANTASY_NO_FUSE_LORA=1`).")

    demo = app.build_demo(fresh(), get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path)
    assert blocks(demo, "lora-") == []  # no LoRA: nothing shown


def test_two_loras_of_one_file_name_are_told_apart(lora_file, tmp_path):
    pipe = fresh()
    applied = load_loras(pipe, [LoraSpec(lora_file, 0.5), LoraSpec(lora_file, -1.0)], fuse=False)
    assert [(lora.label, lora.adapter, lora.loaded) for lora in page_loras(applied)] == [
        ("style.safetensors (1)", "lora_0", 0.5), ("style.safetensors (2)", "lora_1", -1.0)]
    assert fused_note(page_loras(applied)) == ""


@pytest.mark.slow
def test_a_run_uses_the_chosen_strength_and_the_loaded_one_comes_back(separate, tmp_path):
    pipe, applied = separate
    studio = studio_for(pipe, applied, tmp_path)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(**{**vars(FAST), "lora_strengths": {
        "style.safetensors": 0.8}}))
    assert job.lora_scales == {"lora_0": 0.8}
    with Watch(pipe) as watch:
        [finished] = [e for e in studio.run(job, heartbeat_s=None) if isinstance(e, Finished)]
    assert watch.seen and set(map(repr, watch.seen)) == {repr((0.8, {"lora_0": 0.8}))}  # every DiT call
    assert (scaling(pipe), pipe.lora_scales) == (pytest.approx(LOADED), {"lora_0": LOADED})
    assert "LoRA style.safetensors ×0.80" in studio.status(job, finished.result)
    assert "- LoRA style.safetensors ×0.80\n" in studio.details(job, finished.result)
    assert studio.run_data(job, finished.result)["loras"] == {"style.safetensors": 0.8}
    # no strength given: the loaded one, and nothing is changed for the run
    default = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, FAST)
    assert default.lora_strengths == {"style.safetensors": LOADED}
    assert "LoRA style.safetensors ×0.50" in studio.details(default)


@pytest.mark.parametrize("ending", ["fails", "is stopped"])
def test_the_loaded_strength_comes_back_when_a_run_fails_or_is_stopped(separate, tmp_path, ending):
    pipe, applied = separate
    studio = studio_for(pipe, applied, tmp_path)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(**{**vars(FAST), "lora_strengths": {
        "style.safetensors": -2.0}}))
    cancel = threading.Event()

    def fault():
        raise RuntimeError("injected device fault")

    error, message = (RuntimeError, "^injected device fault$") if ending == "fails" else (
        GenerationCancelled, "^Generation stopped.$")
    with Watch(pipe, fault if ending == "fails" else cancel.set) as watch, pytest.raises(error, match=message):
        list(studio.run(job, cancel=cancel, heartbeat_s=None))
    assert watch.seen[0] == (-2.0, {"lora_0": -2.0})
    assert (scaling(pipe), pipe.lora_scales) == (pytest.approx(LOADED), {"lora_0": LOADED})
    assert studio.lock.acquire(blocking=False)  # restored before the lock was released
    studio.lock.release()


@pytest.mark.parametrize("given, message", [
    ({"style.safetensors": 4.5}, "Strength of style.safetensors must be between -4 and 4, got 4.5."),
    ({"style.safetensors": "strong"}, "Strength of style.safetensors needs a number, got 'strong'."),
    ({"style.safetensors": True}, "Strength of style.safetensors needs a number, got True."),
    ({"detail.safetensors": 1.0}, "No LoRA named 'detail.safetensors' is loaded; adjustable: style.safetensors."),
    ([0.8], "LoRA strengths must be an object of LoRA name -> strength, got [0.8]."),
])
def test_a_bad_strength_is_refused_in_one_line_before_any_file_is_read(separate, tmp_path, given, message):
    pipe, applied = separate
    with pytest.raises(InvalidSetting, match=f"^{re.escape(message)}$") as refusal:
        studio_for(pipe, applied, tmp_path).check(None, None, Controls(lora_strengths=given))  # no file read yet
    assert refusal.value.concerns == "lora_strengths"


def test_a_fused_loras_strength_cannot_be_chosen(lora_file, tmp_path):
    pipe, applied = loaded_pipe(lora_file, fuse=True)
    studio = studio_for(pipe, applied, tmp_path)
    with pytest.raises(InvalidSetting, match=r"^LoRA style.safetensors is fused into the weights; its strength is "
                                             r"fixed \(start the app with --no-fuse-lora to set it per video\).$"):
        studio.check(None, None, Controls(lora_strengths={"style.safetensors": 1.0}))
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, FAST)
    assert (job.lora_scales, studio.details(job).count("- LoRA style.safetensors ×0.50 (fused)")) == ({}, 1)


class FakeWire(JobChannel):
    """A group's channel without the group: rank 0 records what it announces; a follower gets `jobs`."""

    def __init__(self, jobs=()):
        self.rank, self.size, self.group, self.jobs, self.announced = 0, 2, None, list(jobs), []

    def _announce(self, spec=None):
        self.announced.append(spec)
        return self.jobs.pop(0) if self.jobs else None

    def _word(self, word=CONTINUE):
        return word


@pytest.mark.slow
def test_every_rank_of_a_group_runs_the_job_at_its_strengths(separate, tmp_path):
    pipe, applied = separate
    leader = FakeWire()
    studio = Studio(pipe, get_preset("tiny"), FAKE_FACES, tmp_path, loras=page_loras(applied), channel=leader)
    job = studio.check(EXAMPLE_IMAGE, EXAMPLE_SPEECH, Controls(**{**vars(FAST), "lora_strengths": {
        "style.safetensors": 1.5}}))
    with Watch(pipe) as watch:
        list(studio.run(job, heartbeat_s=None))
    assert leader.announced[0].lora_scales == {"lora_0": 1.5} and {s for s, _ in watch.seen} == {1.5}
    follower = FakeWire([job_spec(job.image, job.audio, job.settings, inputs=job.checked.inputs,
                                  lora_scales={"lora_0": -0.75})])
    with Watch(pipe) as watch:
        log = follower.follow(pipe, get_preset("tiny"))
    assert [outcome for *_, outcome in log.jobs] == ["done"] and {s for s, _ in watch.seen} == {-0.75}
    assert pipe.lora_scales == {"lora_0": LOADED}


@pytest.mark.slow
def test_the_api_takes_lora_strengths_when_the_app_has_a_slider(separate, tmp_path):
    pipe, applied = separate
    demo = app.build_demo(pipe, get_preset("tiny"), face_checker=FAKE_FACES, output_root=tmp_path, loras=applied)
    url = launch(demo, server_name="127.0.0.1")
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
        assert [p["parameter_name"] for p in api["parameters"]] == [*app.PARAMETERS, "lora_strengths"]
        with Watch(pipe) as watch:
            _, status, details = client.predict(
                image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), steps=1, resolution=64,
                max_duration=1.0, lora_strengths={"style.safetensors": 0.8}, api_name="/generate")
        assert {s for s, _ in watch.seen} == {0.8} and pipe.lora_scales == {"lora_0": LOADED}
        assert "LoRA style.safetensors ×0.80" in status and details["loras"] == {"style.safetensors": 0.8}
        refusal = ("1 parameter(s) failed validation:\n- lora_strengths: Strength of style.safetensors must be "
                   "between -4 and 4, got 9.")
        with pytest.raises(ValidationError, match=f"^{re.escape(refusal)}$"):
            client.predict(image=handle_file(EXAMPLE_IMAGE), audio=handle_file(EXAMPLE_SPEECH), steps=1,
                           resolution=64, lora_strengths={"style.safetensors": 9}, api_name="/generate")
    finally:
        demo.close()


def test_a_serve_deployment_reads_lora_strengths_as_an_object():
    """The front end sends every `Controls` field to a deployment (`python -m fantasy serve`), which loads no LoRA:
    an object reaches `Studio.check` (which names the LoRAs there are), anything else is a 400 saying what it takes."""
    from fantasy.app.serve import UploadRefused, check_controls

    assert check_controls('{"lora_strengths": {"style.safetensors": 1}, "steps": 2}') == {
        "lora_strengths": {"style.safetensors": 1}, "steps": 2}
    assert check_controls('{"lora_strengths": null}') == {"lora_strengths": None}
    with pytest.raises(UploadRefused, match=r"^controls: 'lora_strengths' must be an object of LoRA name -> strength, "
                                            r"got 3$"):
        check_controls('{"lora_strengths": 3}')
