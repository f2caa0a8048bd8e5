"""`fantasy generate`'s paths: an output never overwrites an input (same file by inode, whatever the spelling), an
output that cannot be written or replaced is refused before any model work (and before torch loads), names that are
not UTF-8 work end to end, a named pipe is read once; and the CLI runs the app's face check and its `auto` preset."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import fantasy.weights.presets
from fantasy.app import generate_command
from fantasy.cli import main
from tests.faults import tmpfs
from tests.mp4_probe import probe

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT
from .test_cli_parser import run_light

SMALL = ["--preset", "tiny", "--steps", "1", "--size", "64", "--max-duration", "1"]


@pytest.fixture
def no_model_loading(monkeypatch):
    monkeypatch.setattr(fantasy.weights.presets, "load_pipeline", lambda *a, **k: pytest.fail("models were loaded"))


@pytest.fixture
def inputs(tmp_path):
    """Copies of the example portrait and speech, which an output must never overwrite."""
    image, audio = tmp_path / "portrait.png", tmp_path / "speech.wav"
    shutil.copy(EXAMPLE_IMAGE, image)
    shutil.copy(EXAMPLE_SPEECH, audio)
    return image, audio


def _generate(image, audio, out, *extra) -> list[str]:
    return ["generate", "--image", str(image), "--audio", str(audio), "--out", str(out), *SMALL, *map(str, extra)]


# ---- an output that is an input ------------------------------------------------------------------------------


def test_out_that_is_the_portrait_or_the_speech_is_refused_by_inode_before_torch(inputs, tmp_path):
    image, audio = inputs
    before = image.read_bytes(), audio.read_bytes()
    (tmp_path / "sub").mkdir()
    os.link(audio, tmp_path / "hard-link.mp4")  # another name, the same inode
    (tmp_path / "symlink.mp4").symlink_to(image)
    cases = [
        (tmp_path / "sub" / ".." / "hard-link.mp4", "--audio"),
        (tmp_path / "symlink.mp4", "--image"),
    ]
    for out, flag in cases:
        code, stdout, err, heavy, _ = run_light(*_generate(image, audio, out))
        assert (code, stdout, heavy) == (2, "", [])
        assert err == (f"error: --out '{out.name}' is the same file as {flag}: writing it would overwrite that "
                       "input; choose another name")
    assert (image.read_bytes(), audio.read_bytes()) == before


def test_preview_that_is_an_input_or_the_output_is_refused(inputs, tmp_path):
    image, audio = inputs
    shutil.copy(EXAMPLE_IMAGE, tmp_path / "face.webp")
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old video")
    os.link(out, tmp_path / "same.webp")
    for preview, flag in ((tmp_path / "face.webp", "--face"), (tmp_path / "same.webp", "--out")):
        code, _, err, heavy, _ = run_light(*_generate(image, audio, out, "--face", tmp_path / "face.webp",
                                                      "--preview", preview))
        assert (code, heavy) == (2, [])
        assert err == (f"error: --preview '{preview.name}' is the same file as {flag}: writing it would overwrite "
                       "that input; choose another name")
    assert out.read_bytes() == b"old video"


# ---- outputs that cannot be written or replaced --------------------------------------------------------------


def _chattr(flag: str, path) -> bool:
    return shutil.which("chattr") is not None and subprocess.run(["chattr", flag, str(path)],
                                                                 capture_output=True).returncode == 0


@pytest.mark.parametrize("flag, words", [("+i", "immutable (chattr +i)"), ("+a", "append-only (chattr +a)")])
def test_an_existing_out_that_cannot_be_replaced_is_refused_before_torch(inputs, tmp_path, flag, words):
    image, audio = inputs
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old video")
    if not _chattr(flag, out):
        pytest.skip("this file system keeps no inode flags")
    try:
        code, _, err, heavy, _ = run_light(*_generate(image, audio, out))
    finally:
        _chattr(flag.replace("+", "-"), out)
    assert (code, heavy) == (2, [])
    assert err == (f"error: --out 'o.mp4' exists and is {words}, so it cannot be replaced: give another name, "
                   "or clear the flag with chattr")
    assert out.read_bytes() == b"old video" and sorted(p.name for p in tmp_path.iterdir()) == [
        "o.mp4", "portrait.png", "speech.wav"]


def test_an_out_that_is_not_a_regular_file_is_refused(inputs, tmp_path):
    image, audio = inputs
    os.mkfifo(tmp_path / "o.mp4")
    code, _, err, heavy, _ = run_light(*_generate(image, audio, tmp_path / "o.mp4"))
    assert (code, err, heavy) == (2, "error: --out 'o.mp4' exists and is not a regular file: give another name", [])


def test_publishing_onto_an_unreplaceable_file_is_one_line_not_a_traceback(tmp_path):
    """The backstop behind the checks: a rename that fails at the very end is an `OutputError`."""
    from fantasy.errors import OutputError
    from fantasy.media.output import publish

    folder = tmp_path / "target.mp4"
    (folder / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced by a file
    tmp = tmp_path / "tmp.mp4"
    tmp.write_bytes(b"new")
    with pytest.raises(OutputError, match=r"^could not replace 'target\.mp4': Is a directory$"):
        publish(tmp, folder)


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "p.webp").mkdir() or d / "p.webp", "error: --preview 'p.webp' is a directory: give a file name"),
    (lambda d: d / "missing" / "p.webp", "error: --preview: folder {d}/missing does not exist"),
])
def test_a_preview_onto_a_directory_or_a_missing_folder_is_refused_before_torch(inputs, tmp_path, make, message):
    image, audio = inputs
    preview = make(tmp_path)
    code, _, err, heavy, _ = run_light(*_generate(image, audio, tmp_path / "o.mp4", "--preview", preview))
    assert (code, err, heavy) == (2, message.format(d=tmp_path), [])
    assert not (tmp_path / "o.mp4").exists()


def test_a_preview_onto_a_read_only_folder_is_refused_before_any_model_loads(inputs, tmp_path, capsys,
                                                                            no_model_loading):
    image, audio = inputs
    with tmpfs(tmp_path / "ro", 256, read_only=True) as folder:
        code = main(_generate(image, audio, tmp_path / "o.mp4", "--preview", folder / "p.webp"))
        assert (code, capsys.readouterr().err) == (
            2, f"error: --preview: cannot write in {folder}: Read-only file system\n")
    assert not (tmp_path / "o.mp4").exists()


# ---- names that are not UTF-8, named pipes ----------------------------------------------------------------------


@pytest.mark.slow
def test_names_that_are_not_utf8_work_end_to_end(tmp_path):
    folder = os.fsencode(tmp_path)
    speech, out = folder + b"/speech-\xff.wav", folder + b"/out-\xfe\xe9.mp4"
    shutil.copy(EXAMPLE_SPEECH, speech)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONIOENCODING", None)
    proc = subprocess.run([sys.executable, "-m", "fantasy", "generate", "--image", str(EXAMPLE_IMAGE), "--audio", speech,
                           "--out", out, *SMALL], cwd=ROOT, capture_output=True, env=env, timeout=600)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stdout.startswith(f"wrote {tmp_path}/out-\\xfe\\xe9.mp4 (25 frames, 64x64")
    assert probe(out.decode("utf-8", "surrogateescape")).has_audio


def _feed(fifo, data: bytes) -> threading.Thread:
    def write() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_named_pipe_as_audio_is_read_once(tmp_path, capsys):
    fifo = tmp_path / "speech.fifo"
    os.mkfifo(fifo)
    writer = _feed(fifo, EXAMPLE_SPEECH.read_bytes())
    out = tmp_path / "o.mp4"
    assert main(_generate(EXAMPLE_IMAGE, fifo, out)) == 0
    writer.join(5)
    err = capsys.readouterr().err
    size = EXAMPLE_SPEECH.stat().st_size / 1024 / 1024
    assert (f"note: --audio {fifo} is a named pipe: read once into a temporary copy ({size:.1f} MB; a pipe cannot "
            "be sized in advance, at most 256.0 MB is read)") in err
    info = probe(out)
    assert info.has_audio and info.frames == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4", "speech.fifo"]


def test_a_named_pipe_longer_than_the_limit_is_refused(tmp_path, capsys, monkeypatch, no_model_loading):
    monkeypatch.setattr(generate_command, "PIPE_LIMIT_BYTES", 1000)
    fifo = tmp_path / "speech.fifo"
    os.mkfifo(fifo)
    _feed(fifo, b"\0" * 5000)
    assert main(_generate(EXAMPLE_IMAGE, fifo, tmp_path / "o.mp4")) == 2
    assert capsys.readouterr().err == ("error: --audio: the named pipe gave more than 0.0 MB (a pipe cannot be sized "
                                       "in advance, so that is where reading stops); save it to a file and pass the "
                                       "file\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.fifo"]


# ---- the app's face check and its automatic preset -------------------------------------------------------------


def test_the_cli_runs_the_apps_face_check_before_any_model_loads(tmp_path, capsys, no_model_loading):
    cup = tmp_path / "cup.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(cup)
    assert main(["generate", "--image", str(cup), "--audio", str(EXAMPLE_SPEECH), "--out", str(tmp_path / "o.mp4"),
                 "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No face found in the portrait") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [cup]


def test_no_face_check_skips_it(tmp_path, capsys, monkeypatch):
    from fantasy.errors import FantasyError

    def loaded(*_a, **_k):
        raise FantasyError("the models would load now")

    monkeypatch.setattr(fantasy.weights.presets, "load_pipeline", loaded)
    cup = tmp_path / "cup.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(cup)
    assert main(["generate", "--image", str(cup), "--audio", str(EXAMPLE_SPEECH), "--out", str(tmp_path / "o.mp4"),
                 "--preset", "tiny", "--no-face-check"]) == 2
    assert capsys.readouterr().err.endswith("error: the models would load now\n")


def test_preset_auto_is_the_default_and_says_what_it_chose(tmp_path, capsys, monkeypatch):
    from fantasy.errors import FantasyError

    def loaded(name, *_a, **_k):
        raise FantasyError(f"would load {name}")

    monkeypatch.setattr(fantasy.weights.presets, "load_pipeline", loaded)
    assert main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH),
                 "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("preset auto: tiny (no CUDA GPU)\n") and err.endswith("error: would load tiny\n")


def test_auto_needs_a_gpu_and_complete_weights(tmp_path, monkeypatch):
    import torch

    from fantasy.app.launch import auto_preset

    assert auto_preset() == ("tiny", "no CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    name, why = auto_preset(weights=str(tmp_path))
    assert name == "tiny" and why.startswith("the real weights are incomplete (")
