"""`python -m fantasy generate` end to end on the tiny preset, and its error handling."""

import shlex
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from fantasy.cli import main
from tests.mp4_probe import moov_before_mdat, probe

from .conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH, ROOT


@pytest.mark.slow  # the whole tiny run, 30 steps x 3 passes x 2 windows: ~25 s alone, 250 s on a loaded machine
@pytest.mark.timeout(600)
def test_readme_command_writes_a_talking_video(tmp_path):
    """The README's generate command, read from the README and run as a subprocess (its output in tmp_path)."""
    from tests.test_docs import README, shell_commands

    command = next(c for c in shell_commands(README.read_text()) if c.startswith("python -m fantasy generate "))
    words = shlex.split(command)
    assert words[words.index("--image") + 1:][:1] == [str(EXAMPLE_IMAGE.relative_to(ROOT))]
    assert words[words.index("--audio") + 1:][:1] == [str(EXAMPLE_SPEECH.relative_to(ROOT))]
    out = tmp_path / "out.mp4"
    words[words.index("--out") + 1] = str(out)
    proc = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "output is noise" in proc.stderr  # the demo mode says so
    info = probe(out)
    # 6.41 s of speech at 23 fps: int(147.4 // 4)*4 + 5 = 149 frames in 2 windows (81 + 68), 128 px.
    assert (info.frames, info.fps, info.width, info.height) == (149, 23.0, 128, 128)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.duration == pytest.approx(149 / 23, abs=0.05)
    assert moov_before_mdat(out)
    assert "2 windows" in proc.stdout and "30 steps x 3 passes" in proc.stdout


def generate(tmp_path, *extra, image=EXAMPLE_IMAGE, audio=EXAMPLE_SPEECH):
    out = tmp_path / "o.mp4"
    code = main(["generate", "--image", str(image), "--audio", str(audio), "--out", str(out), "--preset", "tiny",
                 "--steps", "2", "--size", "64", *extra])
    return code, out


@pytest.mark.slow
def test_settings_reach_the_video(tmp_path, capsys):
    speech = tmp_path / "s.wav"
    soundfile.write(speech, np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32) * 0.3, 16_000)
    code, out = generate(tmp_path, "--fps", "16", "--text-guidance", "1", audio=speech)
    assert code == 0
    info = probe(out)
    # 1 s at 16 fps: int(16 // 4)*4 + 5 = 21 frames.
    assert (info.frames, info.fps, info.width) == (21, 16.0, 64)
    assert "2 steps x 2 passes" in capsys.readouterr().out


@pytest.mark.parametrize("make_input, message", [
    (lambda d: ("image", d / "missing.png"), "Portrait file not found"),
    (lambda d: ("audio", d / "missing.wav"), "Speech file not found"),
    (lambda d: ("audio", write(d / "silence.wav", np.zeros(16_000))), "is silent"),
    (lambda d: ("audio", write(d / "short.wav", np.ones(1600) * 0.5)), "at least 0.2 s"),
    (lambda d: ("image", text_file(d / "photo.jpg")), "Could not read 'photo.jpg' as an image"),
    (lambda d: ("audio", text_file(d / "speech.mp3")), "Could not read 'speech.mp3' as audio"),
])
def test_bad_input_exits_2_with_a_clear_message_and_no_file(tmp_path, capsys, make_input, message):
    which, path = make_input(tmp_path)
    code, out = generate(tmp_path, **{which: path})
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


def test_bad_setting_is_rejected_before_loading_models(tmp_path, capsys):
    code, _ = generate(tmp_path, "--max-frames", "80")
    assert code == 2
    assert "max frames must be 4k+1" in capsys.readouterr().err
    code, _ = generate(tmp_path, "--max-duration", "0")
    assert code == 2
    assert "maximum duration must be between 0.2 and 600 s, got 0.0" in capsys.readouterr().err


def write(path, samples):
    soundfile.write(path, np.asarray(samples, dtype=np.float32), 16_000)
    return path


def text_file(path):
    path.write_text("not media\n" * 50)
    return path
