"""The page in a real browser: Debian Chromium driven by Playwright (never `playwright install`).

Loads the app (tiny preset), uploads the example portrait and speech, moves a slider, clicks Generate,
waits until the streaming video element is actually playing, and saves a screenshot (to
`$FANTASY_SCREENSHOT_DIR` when set, else the test's temp dir). The live preview is checked mid-denoising,
with the generation held at a step so the screenshot is taken while it denoises.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageStat

from fantasy.app import ui as app
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from tests.mp4_probe import probe

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed: apt-get install -y chromium"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Gradio's video streaming needs ffmpeg on PATH"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

PLAYING = """() => {
    const v = document.querySelector('#live video');
    return v !== null && !v.paused && v.currentTime > 0 && v.readyState >= 2;
}"""


def open_page(p, url: str, errors: list[str]):
    browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#generate")
    return browser, page


def upload_examples(page) -> None:
    page.locator("#portrait input[type=file]").set_input_files(str(EXAMPLE_IMAGE))
    page.locator("#speech input[type=file]").set_input_files(str(EXAMPLE_SPEECH))
    page.wait_for_selector("#portrait img")


def set_number(page, slider: str, value: str) -> None:
    box = page.locator(f"{slider} input[type=number]")
    box.fill(value)
    box.press("Enter")


STEP_PROGRESS = """() => Array.from(document.querySelectorAll('#final *')).some(
    e => e.children.length === 0 && /^\\d+\\/\\d+ steps/.test(e.textContent.trim()))"""


@pytest.fixture
def served(tiny_pipe, tmp_path):
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), output_root=tmp_path / "outputs")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options(host="127.0.0.1"))
    yield url
    demo.close()


def test_generate_in_the_browser_streams_a_playing_video(served, tmp_path):
    shots = Path(os.environ.get("FANTASY_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, served, errors)
        try:
            assert "The output is noise from a random model" in page.locator("#demo-banner").inner_text()
            upload_examples(page)
            for slider, value in (("#steps", "2"), ("#resolution", "64"), ("#duration", "1.5")):
                set_number(page, slider, value)
            expression = page.locator("#expression input[type=range]")  # moved like a person: arrow keys
            expression.focus()
            expression.press("ArrowRight")
            expression.press("ArrowRight")
            assert page.locator("#expression input[type=number]").input_value() == "0.6"

            page.click("#generate")
            page.wait_for_function(PLAYING, timeout=180_000)
            page.screenshot(path=str(shots / "browser-playing.png"), full_page=True)
            player = page.locator("#live video").bounding_box()
            page.wait_for_selector("#final video", timeout=180_000)
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')",
                                   timeout=60_000)
            status = page.locator("#status").inner_text()
            page.screenshot(path=str(shots / "browser-done.png"), full_page=True)
            boxes = {name: page.locator(f"#{name}").bounding_box() for name in ("live", "final")}
        finally:
            browser.close()
    # the moved slider and the typed settings reached the generation
    assert "audio weight 1.08, audio guidance 5.4" in status
    assert "37 frames 64×64" in status and "2 steps × 3 passes" in status
    assert "it was cut to the maximum duration of 1.5 s" in status  # the 6.4 s example was cut, visibly
    assert not errors, errors
    # both players keep their height whatever the video's size, so the finished video is on the first screen
    assert boxes["live"]["height"] == boxes["final"]["height"] == app.PLAYER_HEIGHT
    assert boxes["final"]["y"] + boxes["final"]["height"] <= 1100
    with Image.open(shots / "browser-playing.png") as shot:
        assert shot.width == 1400 and shot.height >= 1100
        # the live player shows frames (noise from the random model), not the empty white placeholder
        x, y, w, h = player["x"], player["y"], player["width"], player["height"]
        assert w > 200 and h > 200
        inside = shot.convert("L").crop((int(x + w / 4), int(y + h / 4), int(x + 3 * w / 4), int(y + 3 * h / 4)))
        assert ImageStat.Stat(inside).mean[0] < 230


def test_stop_ends_the_generation_without_a_video(served, tmp_path):
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, served, errors)
        try:
            upload_examples(page)
            for slider, value in (("#steps", "50"), ("#resolution", "128")):
                set_number(page, slider, value)
            page.click("#generate")
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Denoising')",
                                   timeout=120_000)
            # the progress bar counts denoising steps (shown over the player the finished video will fill)
            page.wait_for_function(STEP_PROGRESS, timeout=30_000)
            page.click("#stop")
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Stopped')",
                                   timeout=30_000)
            page.wait_for_timeout(1000)
            assert page.locator("#final video").count() == 0  # nothing finished
            page.screenshot(path=str(tmp_path / "browser-stopped.png"), full_page=True)
            # A new generation needs the model, which the stopped worker holds until it ends: had it not
            # stopped, its 50-step video would be written before this small one could start.
            for slider, value in (("#steps", "2"), ("#resolution", "64"), ("#duration", "1")):
                set_number(page, slider, value)
            page.click("#generate")
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')",
                                   timeout=120_000)
        finally:
            browser.close()
    finished = list((tmp_path / "outputs").glob("*/talking.mp4"))
    assert len(finished) == 1 and probe(finished[0]).frames == 25  # only the small one
    assert not errors, errors


def test_an_error_leaves_the_status_line_readable(served, tmp_path):
    notes = tmp_path / "notes.mp3"
    notes.write_text("meeting notes, not audio")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, served, errors)
        try:
            page.locator("#portrait input[type=file]").set_input_files(str(EXAMPLE_IMAGE))
            page.locator("#speech input[type=file]").set_input_files(str(notes))
            page.wait_for_selector("#portrait img")
            page.click("#generate")
            page.get_by_text("Could not read 'notes.mp3' as audio").wait_for(timeout=60_000)  # the error toast
            page.screenshot(path=str(tmp_path / "browser-error.png"), full_page=True)
            box = page.locator("#status").bounding_box()
        finally:
            browser.close()
    assert not errors, errors
    # Gradio draws a red "Error" badge over an event's outputs; the status line must not get one
    with Image.open(tmp_path / "browser-error.png") as shot:
        line = np.asarray(shot.convert("RGB").crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                                    int(box["y"] + box["height"]))), dtype=int)
    red = (line[..., 0] > 160) & (line[..., 1] < 110) & (line[..., 2] < 110)
    assert red.sum() == 0


class HoldAtSteps:
    """A forward pre-hook on the DiT that stops the generation at the first pass of each given step until the
    test releases it, so the page can be inspected while denoising is under way (no sleeps, no timing)."""

    def __init__(self, transformer, passes_per_step: int, steps: tuple[int, ...]):
        self.steps = {passes_per_step * (step - 1) + 1: step for step in steps}  # transformer call -> step
        self.calls = 0
        self.reached = {step: threading.Event() for step in steps}
        self.release = {step: threading.Event() for step in steps}
        self.handle = transformer.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1
        step = self.steps.get(self.calls)
        if step is not None:
            self.reached[step].set()
            assert self.release[step].wait(timeout=300), "the test never released the held generation"

    def remove(self) -> None:
        for event in self.release.values():
            event.set()
        self.handle.remove()


PREVIEW_OF_STEP = """(step) => {
    const img = document.querySelector('#preview img');
    return img !== null && img.complete && img.naturalWidth > 0 && img.checkVisibility()
        && document.querySelector('#preview').innerText.includes(`step ${step}/3`);
}"""


@pytest.fixture
def served_preview_every_step(tiny_pipe, tmp_path):
    """The page with a preview at every step (the tiny model's steps are too quick for the 2 % budget to allow
    that, and the test must know which steps show one)."""
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), output_root=tmp_path / "outputs", preview_budget=float("inf"))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options(host="127.0.0.1"))
    yield url
    demo.close()


def test_the_preview_updates_on_the_page_while_denoising(tiny_pipe, served_preview_every_step, tmp_path):
    shots = Path(os.environ.get("FANTASY_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    hold = HoldAtSteps(tiny_pipe.transformer, passes_per_step=3, steps=(2, 3))
    errors: list[str] = []
    seen = []
    try:
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, served_preview_every_step, errors)
            try:
                upload_examples(page)
                for slider, value in (("#steps", "3"), ("#resolution", "64"), ("#duration", "1.5")):
                    set_number(page, slider, value)
                assert page.locator("#preview").is_hidden()  # nothing to preview yet
                page.click("#generate")
                for step in (2, 3):  # held inside step 2, then inside step 3: the preview of the step before
                    assert hold.reached[step].wait(timeout=180)
                    page.wait_for_function(PREVIEW_OF_STEP, arg=step - 1, timeout=60_000)
                    assert f"Denoising… {step - 1}/3 steps" in page.locator("#status").inner_text()
                    assert page.locator("#live video").count() == 0  # no frame is decoded yet
                    seen.append((page.locator("#preview").inner_text(),
                                 page.eval_on_selector("#preview img", "i => [i.src, i.naturalWidth, i.naturalHeight]")))
                    if step == 3:
                        box = page.locator("#preview img").bounding_box()
                        page.screenshot(path=str(shots / "browser-preview.png"), full_page=True)
                    hold.release[step].set()
                page.wait_for_function("() => document.querySelector('#status').innerText.includes('Done')",
                                       timeout=120_000)
                page.wait_for_function("() => document.querySelector('#preview img') === null || "
                                       "!document.querySelector('#preview img').checkVisibility()", timeout=30_000)
                assert page.locator("#live video").count() == 1  # the streamed video replaced the preview
            finally:
                browser.close()
    finally:
        hold.remove()
    (first_caption, (first_url, *first_size)), (caption, (url, *size)) = seen
    assert "step 1/3" in first_caption and "step 2/3" in caption and "an estimate" in caption
    assert first_url != url and url.endswith(".webp")  # a new clip at each step
    assert first_size == size == [256, 256]  # 8x8 latents of a 64 px video, upscaled
    assert not errors, errors
    with Image.open(shots / "browser-preview.png") as shot:
        inside = shot.convert("L").crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                         int(box["y"] + box["height"])))
        assert ImageStat.Stat(inside).stddev[0] > 20  # a picture (noise from the random model), not a blank box
