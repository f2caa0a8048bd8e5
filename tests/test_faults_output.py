"""Fault injection on the output path: a full disk (before and during the write), read-only and directory
outputs, a mux that fails (also with exit status 0), a file that does not read back, two runs to one path.

Each asserts the one message, the exit status where a command ran, that nothing is left behind and that an
existing file at the target is untouched.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fantasy.cli import main
from fantasy.errors import OutputError
from fantasy.generation import Settings, generate
from fantasy.media.audio import ffmpeg_executable
from fantasy.media.video import Mp4Writer
from fantasy.weights.presets import get_preset, load_pipeline
from tests.conftest import EXAMPLE_IMAGE, EXAMPLE_SPEECH
from tests.faults import ffmpeg_script, fill, tmpfs
from tests.mp4_probe import probe

PREVIOUS = b"an earlier video that must survive a failed run\n"
SMALL = Settings(steps=2, longest_edge=64, max_duration=1.0)  # 25 frames of 64x64


def cli(out: Path) -> int:
    return main(["generate", "--image", str(EXAMPLE_IMAGE), "--audio", str(EXAMPLE_SPEECH), "--out", str(out),
                 "--preset", "tiny", "--steps", "2", "--size", "64", "--max-duration", "1"])


@pytest.fixture
def no_model_loading(monkeypatch):
    """The CLI must refuse before it loads a model: loading one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr("fantasy.weights.presets.load_pipeline", refuse)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_full_disk_is_refused_before_any_model_loads(tmp_path, capsys, no_model_loading):
    with tmpfs(tmp_path / "disk", 256) as disk:
        code = cli(disk / "o.mp4")
        # 25 frames of 64x64 at <= 0.75 byte/px + 1.09 s of AAC + 1 MiB slack, twice (stream + muxed copy)
        assert (code, capsys.readouterr().err) == (
            2, f"error: not enough free space in '{disk}' for the video: about 2.3 MB needed, 0.3 MB free\n")
        assert names(disk) == []


def test_disk_filling_up_during_the_write_leaves_nothing_and_keeps_the_old_file(tiny_pipe, tmp_path):
    with tmpfs(tmp_path / "disk", 4096) as disk:
        out = disk / "o.mp4"
        out.write_bytes(PREVIOUS)
        filled: list[Path] = []

        def progress(event) -> None:
            if event.stage == "decode" and not filled:  # the first frames are in the encoder: now the disk is full
                filled.append(fill(disk))

        with pytest.raises(OutputError, match=r"^could not (encode|write) 'o\.mp4': .*No space left on device$"):
            generate(tiny_pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, out, SMALL, get_preset("tiny"), progress=progress)
        assert filled and names(disk) == ["filler.bin", "o.mp4"]
        assert out.read_bytes() == PREVIOUS


def fake_ffmpeg(tmp_path: Path, on_mux: str) -> str:
    """ffmpeg, except that the mux (the run with +faststart) does `on_mux` instead (bash; $out is its output)."""
    return ffmpeg_script(tmp_path / "bin", f'case " $* " in *" +faststart "*) out="${{@: -1}}"; {on_mux} ;; esac\n'
                                           f'exec {ffmpeg_executable()} "$@"')


@pytest.mark.parametrize("on_mux, message", [
    # Debian's ffmpeg 5.1 reports a failed trailer on stderr and may still exit 0: half a file, then the error.
    ('head -c 3000 /dev/urandom > "$out"; echo "[mp4 @ 0x5581] Error writing trailer of $out: '
     'No space left on device" >&2; exit 0',
     r"could not write 'o\.mp4': \[mp4 @ 0x5581\] Error writing trailer of o\.mp4: No space left on device$"),
    ('head -c 3000 /dev/urandom > "$out"; echo "Conversion failed!" >&2; exit 1',
     r"could not write 'o\.mp4': Conversion failed!$"),
    # silent: exit 0, no message, but the file holds half the video; reading it back catches it
    (f'{ffmpeg_executable()} "$@" || exit; size=$(stat -c %s "$out"); truncate -s $((size / 2)) "$out"; exit 0',
     r"^the finished video does not read back: \[mov,mp4,m4a,3gp,3g2,mj2 @ 0x[0-9a-f]+\] "
     r"stream 0, offset 0x[0-9a-f]+: partial file$"),
])
def test_a_failed_mux_leaves_nothing_and_keeps_the_old_file(tiny_pipe, tmp_path, monkeypatch, on_mux, message):
    fake = fake_ffmpeg(tmp_path, on_mux)
    monkeypatch.setattr("fantasy.media.video.ffmpeg_executable", lambda: fake)
    out = tmp_path / "videos" / "o.mp4"
    out.parent.mkdir()
    out.write_bytes(PREVIOUS)
    with pytest.raises(OutputError, match=message):
        generate(tiny_pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, out, SMALL, get_preset("tiny"))
    assert names(out.parent) == ["o.mp4"]
    assert out.read_bytes() == PREVIOUS


def test_output_naming_a_directory_is_refused_before_any_model_loads(tmp_path, capsys, no_model_loading):
    out = tmp_path / "video.mp4"
    out.mkdir()
    assert (cli(out), capsys.readouterr().err) == (
        2, f"error: the output '{out}' is a directory: give a file name ending in .mp4\n")
    assert names(tmp_path) == ["video.mp4"] and names(out) == []


def test_read_only_output_is_refused_before_any_model_loads(tmp_path, capsys, no_model_loading):
    # A read-only mount: permission bits alone do not stop root, which CI runs as.
    with tmpfs(tmp_path / "ro", 256, read_only=True) as folder:
        assert (cli(folder / "o.mp4"), capsys.readouterr().err) == (
            2, f"error: cannot write in '{folder}': Read-only file system\n")


@pytest.mark.slow
def test_two_runs_to_one_path_use_their_own_temporary_files(tiny_pipe, tmp_path, monkeypatch):
    out = tmp_path / "o.mp4"
    temporaries: list[Path] = []

    class RecordingWriter(Mp4Writer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            temporaries.append(self._video_tmp)

    monkeypatch.setattr("fantasy.generation.Mp4Writer", RecordingWriter)
    both_writing = threading.Barrier(2, timeout=120)
    results, errors = [], []

    def run(pipe) -> None:
        waited = []

        def progress(event) -> None:
            if event.stage == "decode" and not waited:
                waited.append(True)
                both_writing.wait()  # both runs are writing beside the same target now

        try:
            results.append(generate(pipe, EXAMPLE_IMAGE, EXAMPLE_SPEECH, out, SMALL, get_preset("tiny"),
                                    progress=progress))
        except BaseException as exc:  # reported below
            errors.append(exc)
            both_writing.abort()

    threads = [threading.Thread(target=run, args=(pipe,)) for pipe in (tiny_pipe, load_pipeline("tiny"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(results) == 2 and all(r.path == out for r in results)
    assert len(set(temporaries)) == 2 and {p.parent for p in temporaries} == {tmp_path}
    assert names(tmp_path) == ["o.mp4"]  # one finished video, no temporary file left
    info = probe(out)
    assert (info.frames, info.width, info.has_audio) == (25, 64, True)
