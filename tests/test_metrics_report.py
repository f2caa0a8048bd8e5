"""`evaluate` and the `eval` command end to end on drawn clips, plus bad input and the face tracker."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from fantasy.errors import InputFileNotFound, UnsupportedAudio, UnsupportedVideo
from fantasy.face import FaceBox
from fantasy.metrics import command, report
from fantasy.metrics.landmarks import TrackedLandmarks
from fantasy.metrics.plot import MOUTH_COLOUR, SPEECH_COLOUR
from fantasy.metrics.report import evaluate, format_table
from tests.synthetic_clips import speech_samples, syllable_envelope, talking_frames, write_mp4, write_wav
from tests.synthetic_faces import FaceStyle, draw_face, measured_landmarks, template_landmarks

N = 75
OTHER = FaceStyle(skin=(200, 140, 100), hair=(200, 170, 80), eye=(60, 120, 60), face_aspect=1.05, texture_seed=5)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    env = syllable_envelope(N, seed=7)
    wav = write_wav(d / "speech.wav", speech_samples(env))
    video = write_mp4(d / "talk.mp4", talking_frames(env), audio=wav)
    silent_video = write_mp4(d / "talk_no_audio.mp4", talking_frames(env))
    portrait = d / "portrait.png"
    Image.fromarray(draw_face(320, 320, 0.0)[0]).save(portrait)
    other = d / "other.png"
    Image.fromarray(draw_face(320, 320, 0.0, style=OTHER)[0]).save(other)
    blank = np.full((30, 160, 160, 3), 90, np.uint8)
    no_face = write_mp4(d / "no_face.mp4", blank, audio=wav)
    half = talking_frames(env)
    half[::3] = 90  # a third of the frames lose the face
    part_face = write_mp4(d / "part_face.mp4", half, audio=wav)
    return {"dir": d, "wav": wav, "video": video, "silent_video": silent_video, "portrait": portrait,
            "other": other, "no_face": no_face, "part_face": part_face}


@pytest.fixture
def drawn_landmarks(monkeypatch: pytest.MonkeyPatch):
    """The CLI's default face tools (dlib) with the drawn-face measurer for the landmarks (dlib still embeds)."""
    real = report.default_face_tools

    def drawn(backend=None, device=None):
        return replace(real(backend, device), frames=measured_landmarks, portrait=measured_landmarks)

    monkeypatch.setattr(report, "default_face_tools", drawn)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


def test_evaluate_measures_sync_identity_and_motion(files) -> None:
    same = evaluate(files["video"], files["wav"], files["portrait"], landmarks_provider=measured_landmarks)
    other = evaluate(files["video"], files["wav"], files["other"], landmarks_provider=measured_landmarks)
    assert same.frames == N and same.fps == 25 and (same.width, same.height) == (160, 160)
    assert same.frames_with_face == N and same.warnings == []
    assert same.sync.lag == 0 and same.sync.score > 0.9
    assert same.identity.mean < other.identity.mean  # dlib distances on drawn faces: only their order means much
    assert same.identity_reference == "portrait" and len(same.identity.per_frame) == 16
    assert same.face_backend == "custom" and same.identity.embedder.startswith("dlib ResNet")
    assert same.dynamics.background < 0.05, "the drawn head does not move"
    assert same.dynamics.subject > same.dynamics.background, "the mouth does"
    assert len(same.mouth) == len(same.envelope) == N


def test_audio_defaults_to_the_videos_track_and_reference_to_its_first_face(files) -> None:
    result = evaluate(files["video"], landmarks_provider=measured_landmarks)
    assert result.audio == str(files["video"])
    assert result.sync.lag == 0 and result.sync.score > 0.9
    assert result.identity_reference == "frame 0 (no portrait given)"
    assert all(i != 0 for i, _ in result.identity.per_frame)


def test_eval_command_prints_a_table_and_writes_json_and_plot(files, drawn_landmarks, capsys) -> None:
    out_json, out_png = files["dir"] / "m.json", files["dir"] / "m.png"
    args = _args(str(files["video"]), "--audio", str(files["wav"]), "--image", str(files["portrait"]),
                 "--json", str(out_json), "--plot", str(out_png), "--max-lag", "3")
    assert args.run is command.run
    assert command.run(args) == 0
    printed = capsys.readouterr().out
    assert "lip sync (peak xcorr)" in printed and "searched ±3" in printed and "identity (distance)" in printed
    assert "same person (< 0.6); lower = closer" in printed and "frames with 68 landmarks (dlib)" in printed
    data = json.loads(out_json.read_text())
    assert data["sync"]["lag"] == 0 and data["sync"]["max_lag"] == 3 and len(data["sync"]["curve"]) == 7
    assert data["sync"]["at_window_edge"] is False
    assert data["frames_with_face"] == N and data["identity"]["embedder"].startswith("dlib ResNet")
    assert data["identity"]["metric"] == "euclidean" and data["identity"]["threshold"] == 0.6
    assert data["face_backend"] == "dlib"
    assert set(data["dynamics"]) >= {"subject", "background", "overall", "flicker"}
    png = np.asarray(Image.open(out_png).convert("RGB"))
    assert png.shape == (400, 960, 3)
    for colour in (MOUTH_COLOUR, SPEECH_COLOUR):
        assert (np.abs(png.astype(int) - colour).sum(axis=2) == 0).sum() > 500, "both curves are drawn"


def test_eval_command_default_output_paths(files, drawn_landmarks, tmp_path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(files["video"].read_bytes())
    assert command.run(_args(str(video), "--plot")) == 0
    assert (tmp_path / "clip.eval.json").is_file() and (tmp_path / "clip.sync.png").is_file()


def test_video_without_any_face_reports_it_instead_of_crashing(files, drawn_landmarks, capsys) -> None:
    result = evaluate(files["no_face"], files["wav"], landmarks_provider=measured_landmarks)
    assert result.frames_with_face == 0 and result.sync is None and result.identity is None
    assert "no face found in 30 of 30 frames" in result.warnings
    assert result.dynamics.subject is None and result.dynamics.overall < 0.05
    assert command.run(_args(str(files["no_face"]), "--audio", str(files["wav"]),
                             "--json", str(files["dir"] / "nf.json"))) == 0
    printed = capsys.readouterr().out
    assert "warning: no face found in 30 of 30 frames" in printed and "n/a" in printed
    assert json.loads((files["dir"] / "nf.json").read_text())["sync"] is None


def test_frames_without_a_face_are_counted_and_skipped(files) -> None:
    result = evaluate(files["part_face"], files["wav"], files["portrait"], landmarks_provider=measured_landmarks)
    assert result.frames_with_face == N - 25
    assert "no face found in 25 of 75 frames" in result.warnings
    assert result.sync.lag == 0 and result.sync.score > 0.9
    assert np.isnan(result.mouth[0]) and result.to_dict()["mouth"][0] is None


def test_portrait_without_a_face_skips_identity_with_a_warning(files, tmp_path) -> None:
    empty = tmp_path / "wall.png"
    Image.new("RGB", (200, 200), (90, 120, 160)).save(empty)
    result = evaluate(files["video"], files["wav"], empty, landmarks_provider=measured_landmarks)
    assert result.identity is None and "no face found in the portrait: identity not measured" in result.warnings
    assert "identity (distance)" in format_table(result)


@pytest.mark.parametrize(
    "which, error, message",
    [
        ("missing_video", InputFileNotFound, "Video file not found"),
        ("bad_video", UnsupportedVideo, "Could not read 'bad.mp4' as a video"),
        ("missing_audio", InputFileNotFound, "Speech file not found"),
        ("no_audio_track", UnsupportedAudio, "--audio"),
    ],
)
def test_bad_input_gives_clear_errors(files, drawn_landmarks, capsys, which, error, message) -> None:
    bad = files["dir"] / "bad.mp4"
    bad.write_text("this is not a video")
    video, audio = {
        "missing_video": (files["dir"] / "nope.mp4", files["wav"]),
        "bad_video": (bad, files["wav"]),
        "missing_audio": (files["video"], files["dir"] / "nope.wav"),
        "no_audio_track": (files["silent_video"], None),
    }[which]
    with pytest.raises(error, match=message.replace("(", r"\(")):
        evaluate(video, audio, landmarks_provider=measured_landmarks)
    argv = [str(video)] + (["--audio", str(audio)] if audio else [])
    assert command.run(_args(*argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_eval_command_rejects_a_negative_window(files, capsys) -> None:
    assert command.run(_args(str(files["video"]), "--max-lag", "-1")) == 2
    assert "--max-lag" in capsys.readouterr().err


def test_tracked_landmarks_detect_every_n_frames_and_follow_the_head() -> None:
    class FakeAnalyzer:
        def __init__(self) -> None:
            self.boxes: list[FaceBox | None] = []
            self.detect_calls = 0

        def detect(self, frame):
            self.detect_calls += 1
            return None if frame[0, 0, 0] == 0 else FaceBox(10, 10, 50, 50)

        def landmarks(self, frame, box=None):
            self.boxes.append(box)
            shift = float(frame[0, 0, 1])  # the test encodes head position in a pixel
            return template_landmarks(0.0, center=(30 + shift, 30), size=30)

    fake = FakeAnalyzer()
    tracker = TrackedLandmarks(fake, redetect_every=4)
    frames = [np.full((8, 8, 3), (1, 2 * i, 0), np.uint8) for i in range(6)]
    assert all(tracker(f) is not None for f in frames)
    assert fake.detect_calls == 2, "frames 0 and 4"
    # Between detections the box follows the landmarks (2 px a frame), one frame behind: the box
    # for frame t moved as far as the points had by frame t-1. A detection resets it.
    assert [b.x1 for b in fake.boxes] == [10, 10, 12, 14, 10, 10]
    lost = np.zeros((8, 8, 3), np.uint8)
    tracker(frames[0]), tracker(frames[1])  # calls 6 and 7
    tracker(lost)  # call 8: a detection frame, and the face is gone
    assert fake.detect_calls == 3 and tracker._box is None
    assert tracker(frames[1]) is not None and fake.detect_calls == 4, "looked for again on the next frame"


def test_a_plugged_in_clip_metric_lands_in_the_table_and_json(files) -> None:
    class FakeSyncNet:
        """Stands in for SyncNet: sees the same frames, fps and 16 kHz speech the proxy sees."""

        name = "syncnet"

        def __init__(self) -> None:
            self.seen: tuple | None = None

        def __call__(self, frames, fps, speech):
            self.seen = (frames.shape, fps, speech.dtype, speech.size)
            return {"LSE-C": 7.25, "LSE-D": 6.5}

    metric = FakeSyncNet()
    result = evaluate(files["video"], files["wav"], landmarks_provider=measured_landmarks, extra_metrics=[metric])
    assert metric.seen[0] == (N, 160, 160, 3) and metric.seen[1] == 25
    assert metric.seen[2] == np.float32 and metric.seen[3] == N / 25 * 16_000
    assert result.to_dict()["extra"] == {"syncnet": {"LSE-C": 7.25, "LSE-D": 6.5}}
    table = format_table(result)
    assert "LSE-C" in table and "7.250" in table and "syncnet" in table
