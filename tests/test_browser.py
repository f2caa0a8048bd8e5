"""The page in a real browser, at a laptop's size (1440x900) and a phone's (390x844): Debian Chromium driven by
Playwright (never `playwright install`).

A person's path: load the example, open Advanced settings, make the run small, click Generate. The generation is
held at chosen denoising steps and decoded frames (hooks on the models, no sleeps), so the page can be checked and
photographed while it denoises, while it streams, and when it is done: the result area is on the first screen (or
scrolled into view on the phone), the preview, the live video and the finished video take one place, the status
is an ARIA live region that speaks at each stage, an error stays on the page. Screenshots go to
`$FANTASY_SCREENSHOT_DIR` when set (docs/images is made that way: see docs/app.md), else the test's temp dir,
with `layout.json` (the page's height at each size).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from fantasy.app import ui as app
from fantasy.weights.presets import get_preset
from tests.conftest import EXAMPLE_SPEECH
from tests.mp4_probe import probe

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SIZES = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed: apt-get install -y chromium"),
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Gradio's video streaming needs ffmpeg on PATH"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

STREAMING = """() => {
    const v = document.querySelector('#live video');
    return v !== null && v.src !== '' && v.readyState >= 1 && v.checkVisibility();
}"""
PLAYING = """(player) => {
    const v = document.querySelector(`${player} video`);
    return v !== null && !v.paused && v.currentTime > 0 && v.readyState >= 2 && v.checkVisibility();
}"""
# Every text the status line takes, recorded in the page as it changes (what a screen reader is told).
RECORD_STATUS = """() => {
    window.statusTexts = [];
    const status = document.querySelector('#status [data-testid="markdown"]');  // the live region (not the timer)
    new MutationObserver(() => {
        const text = status.innerText.trim();
        if (text && window.statusTexts[window.statusTexts.length - 1] !== text) window.statusTexts.push(text);
    }).observe(status, {childList: true, subtree: true, characterData: true});
}"""
STATUS_HAS = "(text) => document.querySelector('#status').innerText.includes(text)"
PREVIEW_OF_STEP = """(step) => {
    const img = document.querySelector('#preview img');
    return img !== null && img.complete && img.naturalWidth > 0 && img.checkVisibility()
        && document.querySelector('#preview').innerText.includes(`step ${step}/3`);
}"""


def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("FANTASY_SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(p, url: str, size: str, errors: list[str]):
    browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport=SIZES[size], device_scale_factor=1)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#generate")
    page.wait_for_function(
        "() => document.querySelector('#status [data-testid=\"markdown\"]')?.getAttribute('aria-live') === 'polite'")
    page.evaluate(RECORD_STATUS)
    return browser, page


def box(page, selector: str) -> dict:
    return page.locator(selector).bounding_box()


def on_first_screen(page, selector: str) -> bool:
    """Entirely inside the viewport as it is scrolled now."""
    b, height = box(page, selector), page.viewport_size["height"]
    return b is not None and b["y"] >= 0 and b["y"] + b["height"] <= height


def settings(page, **values) -> None:
    """Open Advanced settings (as a person would) and type the values into the sliders' number boxes."""
    if not page.locator("#steps").is_visible():
        page.get_by_text("Advanced settings").click()
    for name, value in values.items():
        number = page.locator(f"#{name} input[type=number]")
        number.fill(str(value))
        number.press("Enter")


def load_example(page) -> None:
    page.locator("#examples button").first.click()
    page.wait_for_selector("#portrait img")
    page.wait_for_selector("#speech audio, #speech [data-testid='waveform-controls'], #speech .waveform-container",
                           state="attached")


class Hold:
    """Forward pre-hooks that stop the generation at given calls of a module until the test releases them, so the
    page can be inspected at that moment (no sleeps, no timing)."""

    def __init__(self, module, calls: dict[int, str]):
        self.calls = calls  # call number -> name
        self.count = 0
        self.reached = {name: threading.Event() for name in calls.values()}
        self.release = {name: threading.Event() for name in calls.values()}
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.count += 1
        name = self.calls.get(self.count)
        if name is not None:
            self.reached[name].set()
            assert self.release[name].wait(timeout=300), f"the test never released {name}"

    def go_on(self, name: str) -> None:
        self.release[name].set()

    def remove(self) -> None:
        for event in self.release.values():
            event.set()
        self.handle.remove()


@pytest.fixture
def served(tiny_pipe, tmp_path):
    """The page, with a preview at every step (the tiny model's steps are too quick for the 2 % budget to allow
    that, and the test must know which steps show one)."""
    demo = app.build_demo(tiny_pipe, get_preset("tiny"), output_root=tmp_path / "outputs", preview_budget=float("inf"))
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app.launch_options(host="127.0.0.1"))
    yield url
    demo.close()


def record_height(folder: Path, size: str, page) -> int:
    height = page.evaluate("document.documentElement.scrollHeight")
    path = folder / "layout.json"
    layout = json.loads(path.read_text()) if path.exists() else {}
    layout[size] = {"viewport": SIZES[size], "page_height_px": height,
                    "screens": round(height / SIZES[size]["height"], 2)}
    path.write_text(json.dumps(layout, indent=2, sort_keys=True) + "\n")
    return height


def test_on_a_laptop_the_result_area_is_where_the_eye_is_from_preview_to_download(tiny_pipe, served, tmp_path):
    shots = screenshots(tmp_path)
    steps = Hold(tiny_pipe.transformer, {3 * 1 + 1: "step 2", 3 * 2 + 1: "step 3"})  # 3 passes a step
    decode = Hold(tiny_pipe.vae.decoder, {10: "first chunk"})  # 9 latent frames decoded: 33 frames, chunk 1 is out
    errors: list[str] = []
    seen = []
    try:
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, served, "desktop", errors)
            try:
                assert "the output is noise" in page.locator("#demo-banner").inner_text()
                # the first screen holds the inputs, the example, Generate and the result area
                for selector in ("#portrait", "#speech", "#examples", "#generate", "#status", "#final"):
                    assert on_first_screen(page, selector), selector
                assert page.locator("#steps").is_hidden()  # Advanced settings start folded
                height = record_height(shots, "desktop", page)
                load_example(page)
                settings(page, steps=3, resolution=64, **{"max-duration": 2.5})
                expression = page.locator("#expression input[type=range]")  # moved like a person: arrow keys
                expression.focus()
                expression.press("ArrowRight")
                expression.press("ArrowRight")
                page.wait_for_function("() => document.querySelector('#effective').innerText.includes('×1.08')")
                assert page.locator("#effective").inner_text() == (
                    "Used for the run: audio guidance 5.4, audio weight 1.08 (Expression 0.6 scales the Advanced "
                    "values ×1.08).")
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(shots / "app-desktop-before.png"))

                page.click("#generate")
                for step in (2, 3):  # held inside step 2, then inside step 3: the preview of the step before
                    assert steps.reached[f"step {step}"].wait(timeout=180)
                    page.wait_for_function(PREVIEW_OF_STEP, arg=step - 1, timeout=60_000)
                    page.wait_for_function(f"() => document.querySelector('#progress').innerText.includes("
                                           f"'Denoising · step {step - 1} of 3')", timeout=60_000)
                    for selector in ("#status", "#progress", "#preview"):
                        assert on_first_screen(page, selector), selector
                    assert page.locator("#final").is_hidden() and page.locator("#live").is_hidden()
                    seen.append((page.locator("#preview").inner_text(),
                                 page.eval_on_selector("#preview img", "i => [i.src, i.naturalWidth, i.naturalHeight]")))
                    if step == 3:
                        preview_box = box(page, "#preview img")
                        page.screenshot(path=str(shots / "app-desktop-during.png"))
                    steps.go_on(f"step {step}")
                assert decode.reached["first chunk"].wait(timeout=180)  # the rest of the video is still to come
                # the first chunk is in the live player, where the preview was (it starts playing once the HLS
                # player has buffered enough; with the decode held here, that is after the test lets it go on)
                page.wait_for_function(STREAMING, timeout=120_000)
                assert page.locator("#preview").is_hidden() and on_first_screen(page, "#live")
                page.screenshot(path=str(shots / "app-desktop-streaming.png"))
                decode.go_on("first chunk")
                page.wait_for_function(STATUS_HAS, arg="Done in", timeout=120_000)
                page.wait_for_function(PLAYING, arg="#final", timeout=60_000)  # the finished video plays itself
                page.screenshot(path=str(shots / "app-desktop-after.png"))
                status = page.locator("#status").inner_text()
                page.locator("#details-box").get_by_text("Details").click()  # folded until a person opens it
                details = page.locator("#details").inner_text()
                texts = page.evaluate("window.statusTexts")
                after = {s: page.locator(s).is_visible() for s in ("#live", "#preview", "#final", "#download")}
                final_on_screen = on_first_screen(page, "#final") and on_first_screen(page, "#download")
                download = page.locator("#download").inner_text()
            finally:
                browser.close()
    finally:
        steps.remove()
        decode.remove()
    assert not errors, errors
    (first_caption, (first_url, *first_size)), (caption, (url, *size)) = seen
    assert "step 1/3" in first_caption and "step 2/3" in caption and "an estimate" in caption
    assert first_url != url and url.endswith(".webp")  # a new clip at each step
    assert first_size == size == [256, 256]  # 8x8 latents of a 64 px video, upscaled
    with Image.open(shots / "app-desktop-during.png") as shot:
        inside = shot.convert("L").crop((int(preview_box["x"]), int(preview_box["y"]),
                                         int(preview_box["x"] + preview_box["width"]),
                                         int(preview_box["y"] + preview_box["height"])))
        assert ImageStat.Stat(inside).stddev[0] > 20  # a picture (noise from the random model), not a blank box
    # one player in the end, with its download, on the first screen
    assert after == {"#live": False, "#preview": False, "#final": True, "#download": True} and final_on_screen
    assert download == "⬇ Download the video"
    # the status is short; the rest is in Details; the moved slider and the typed settings reached the run
    assert status.startswith("Done in ") and ": a 2.7 s video, 64×64, seed 1111." in status
    assert "The speech is 6.4 s long; it was cut to the maximum duration of 2.5 s." in status
    assert "audio weight 1.08, audio guidance 5.4" in details and "3 steps × 3 passes" in details
    # the live region spoke at each stage, in order
    stages = ["Inputs look good. Starting…", "Denoising…", "Decoding video…", "Done in"]
    spoken = [next(i for i, t in enumerate(texts) if t.startswith(stage)) for stage in stages]
    assert spoken == sorted(spoken), texts
    assert height <= 1000  # about one screen (the footer may sit below)
    finished = list((tmp_path / "outputs").glob("*/*.mp4"))
    assert [f.name for f in finished] == ["portrait-seed1111.mp4"] and probe(finished[0]).frames == 61


def test_on_a_phone_generate_brings_the_result_area_into_view(tiny_pipe, served, tmp_path):
    shots = screenshots(tmp_path)
    steps = Hold(tiny_pipe.transformer, {3 * 1 + 1: "step 2"})
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser, page = open_page(p, served, "phone", errors)
            try:
                assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
                height = record_height(shots, "phone", page)
                load_example(page)
                settings(page, steps=3, resolution=64, **{"max-duration": 1.5})
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(shots / "app-phone-before.png"))
                page.locator("#generate").scroll_into_view_if_needed()
                scrolled = page.evaluate("window.scrollY")
                page.click("#generate")
                assert steps.reached["step 2"].wait(timeout=180)
                page.wait_for_function(PREVIEW_OF_STEP, arg=1, timeout=60_000)
                page.wait_for_function("() => { const r = document.getElementById('preview').getBoundingClientRect();"
                                       " return r.top >= 0 && r.bottom <= innerHeight; }", timeout=10_000)
                for selector in ("#status", "#progress", "#preview"):
                    assert on_first_screen(page, selector), selector
                scroll_after = page.evaluate("window.scrollY")
                page.screenshot(path=str(shots / "app-phone-during.png"))
                steps.go_on("step 2")
                page.wait_for_function(STATUS_HAS, arg="Done in", timeout=120_000)
                page.wait_for_selector("#final video", timeout=60_000)
                page.wait_for_timeout(500)
                page.locator("#final").scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "app-phone-after.png"))
                download_visible = on_first_screen(page, "#download") or page.locator("#download").is_visible()
            finally:
                browser.close()
    finally:
        steps.remove()
    assert not errors, errors
    assert download_visible and scroll_after > scrolled  # Generate scrolled the page down to the result area
    assert height <= 2 * 844 + 300, height  # was 3.8 screens


def test_an_error_stays_on_the_page_with_its_title_until_the_next_run(served, tmp_path):
    notes = tmp_path / "notes.mp3"
    notes.write_text("meeting notes, not audio")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, served, "desktop", errors)
        try:
            load_example(page)
            page.locator("#speech button[aria-label='Clear']").click()
            page.locator("#speech input[type=file]").set_input_files(str(notes))
            page.click("#generate")
            page.wait_for_selector("#error", state="visible", timeout=60_000)
            page.wait_for_timeout(11_000)  # a toast would be gone by now
            error = page.locator("#error").inner_text()
            status = page.locator("#status").inner_text()
            error_on_screen = on_first_screen(page, "#error")
            page.screenshot(path=str(tmp_path / "browser-error.png"))
            # the next run clears it
            page.locator("#speech button[aria-label='Clear']").click()
            page.locator("#speech input[type=file]").set_input_files(str(EXAMPLE_SPEECH))
            settings(page, steps=1, resolution=64, **{"max-duration": 1})
            page.click("#generate")
            page.wait_for_selector("#error", state="hidden", timeout=60_000)
            page.wait_for_function(STATUS_HAS, arg="Done in", timeout=120_000)
            texts = page.evaluate("window.statusTexts")
        finally:
            browser.close()
    assert not errors, errors
    assert error.startswith("Unsupported speech file\n\nCould not read 'notes.mp3' as audio"), error
    assert "/" not in error.split("\n", 1)[1].split("(")[0]  # no server path
    assert status == "Could not generate: unsupported speech file." and error_on_screen
    assert texts[0] == "Could not generate: unsupported speech file."  # the live region said it


def test_stop_ends_the_generation_without_a_video(served, tmp_path):
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser, page = open_page(p, served, "desktop", errors)
        try:
            load_example(page)
            settings(page, steps=50, resolution=128)
            page.click("#generate")
            page.wait_for_function("() => document.querySelector('#progress').innerText.includes('Denoising · step')",
                                   timeout=120_000)
            page.click("#stop")
            page.wait_for_function(STATUS_HAS, arg="Stopped", timeout=30_000)
            page.wait_for_timeout(1000)
            assert page.locator("#final video").count() == 0  # nothing finished
            # A new generation needs the model, which the stopped worker holds until it ends: had it not
            # stopped, its 50-step video would be written before this small one could start.
            settings(page, steps=2, resolution=64, **{"max-duration": 1})
            page.click("#generate")
            page.wait_for_function(STATUS_HAS, arg="Done in", timeout=120_000)
        finally:
            browser.close()
    finished = list((tmp_path / "outputs").glob("*/*.mp4"))
    assert len(finished) == 1 and probe(finished[0]).frames == 25  # only the small one
    assert not errors, errors
