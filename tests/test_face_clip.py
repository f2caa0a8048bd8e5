"""A real face that talks: the example portrait's mouth warped open by the speech's loudness, made offline.

On it: `eval`'s lip sync (in sync scores high; a delayed speech track is found at its lag; another speech
scores low) and identity, training's landmark tracks and lip masks, and the whole of it on a fresh
machine: a subprocess with an empty torch hub cache, HF_HUB_OFFLINE=1, every socket refused and
face-alignment hidden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
from PIL import Image

from fantasy.face import eye_distance, shared_analyzer
from fantasy.media.audio import SAMPLE_RATE, load_audio
from fantasy.metrics.report import evaluate
from fantasy.metrics.sync import SyncResult, mouth_track, speech_envelope, sync_score
from fantasy.train.clips import SampleSpec, discover_clips, load_sample
from fantasy.train.labels import lip_token_mask
from tests.conftest import ROOT
from tests.real_faces import (
    CLIP_FPS,
    non_face_photos,
    openings_from_speech,
    portrait,
    speech_segment,
    talking_portrait,
    write_clip,
)

pytestmark = pytest.mark.slow  # the whole module: see the marker in pyproject.toml

N = 81  # the release's clip: 81 frames at 23 fps, 3.52 s
SECONDS = N / CLIP_FPS
LAG = 3  # frames the speech is delayed by in the shifted track
STILL_POINTS = slice(17, 48)  # brows, nose, eyes: the warp leaves them where they are


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("talking-face")
    speech = speech_segment(0.0, SECONDS)
    openings = openings_from_speech(speech, N)
    points = shared_analyzer("dlib").landmarks(portrait())
    frames = talking_portrait(openings, points)
    video = write_clip(folder / "talk.mp4", frames, speech)
    shifted = folder / "shifted.wav"
    delay = int(round(LAG / CLIP_FPS * 16_000))
    soundfile.write(str(shifted), np.concatenate([np.zeros(delay, np.float32), speech])[: speech.size], 16_000)
    other = folder / "other.wav"
    soundfile.write(str(other), speech_segment(2.9, SECONDS), 16_000)  # later words of the same recording
    return {"folder": folder, "video": video, "speech": video.with_suffix(".wav"), "shifted": shifted,
            "other": other, "openings": openings}


@pytest.fixture(scope="module")
def in_sync(clip):
    """`eval` of the clip against its own speech track and the portrait (default face backend: dlib)."""
    return evaluate(clip["video"], image=ROOT / "examples" / "portrait.png")


def _sync_with(report, speech_file) -> SyncResult:
    """The lip-sync metric of `report`'s mouth track against another speech file, as `evaluate` computes it."""
    envelope = speech_envelope(load_audio(speech_file), SAMPLE_RATE, report.fps, report.frames)
    return sync_score(np.array(report.mouth), envelope)


@pytest.mark.slow
def test_eval_on_a_real_face_in_sync_scores_high_and_keeps_the_identity(clip, in_sync) -> None:
    report = in_sync
    assert report.face_backend == "dlib" and report.frames_with_face == N and report.warnings == []
    assert report.sync.lag == 0 and report.sync.score > 0.9  # measured 0.96
    i = report.identity
    assert i.metric == "euclidean" and i.same_person == 16 and i.worst < 0.45  # measured 0.25-0.35: open mouths, H.264
    mouth = np.array(report.mouth)
    assert np.corrcoef(mouth, clip["openings"])[0, 1] > 0.95, "dlib's lips follow the warped mouth"


def test_a_delayed_speech_track_is_found_at_its_lag(clip, in_sync) -> None:
    shifted = _sync_with(in_sync, clip["shifted"])
    assert shifted.lag == -LAG, "the mouth moves before the (delayed) sound: negative lag"
    assert shifted.score > 0.9 and shifted.correlation_at_zero < 0.3


def test_another_speech_scores_low(clip, in_sync) -> None:
    other = _sync_with(in_sync, clip["other"])
    assert abs(other.score) < 0.35  # measured 0.06; in sync 0.96


def test_training_tracks_and_lip_masks_on_a_real_face(clip) -> None:
    data = clip["folder"] / "data"
    data.mkdir()
    (data / "talk.mp4").write_bytes(clip["video"].read_bytes())
    spec = SampleSpec(num_frames=N, fps=CLIP_FPS, width=512, height=512)
    sample = load_sample(discover_clips(data)[0], spec)  # the default landmark provider: dlib
    assert sample.filled_frames == 0 and sample.landmarks.shape == (N, 68, 2)
    assert np.corrcoef(mouth_track(sample.landmarks), clip["openings"])[0, 1] > 0.95
    eyes = eye_distance(sample.landmarks[0])
    jitter = sample.landmarks[:, STILL_POINTS].std(axis=0).mean() / eyes
    assert jitter < 0.015, f"brows/nose/eyes move {jitter:.2%} of the eye distance while only the mouth does"
    tokens = lip_token_mask(sample.landmarks, 512, 512)
    assert tuple(tokens.shape) == (21, 32, 32)
    mouth = sample.landmarks[:, 48:68].reshape(-1, 2)
    rows, cols = np.nonzero(tokens.amax(dim=0).numpy())
    assert rows.min() * 16 <= mouth[:, 1].min() and (rows.max() + 1) * 16 >= mouth[:, 1].max()
    assert cols.min() * 16 <= mouth[:, 0].min() and (cols.max() + 1) * 16 >= mouth[:, 0].max()
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) <= 40, "the mouth, not the face"


@pytest.mark.slow
def test_a_fresh_machine_offline_runs_eval_the_face_check_identity_crops_and_lip_masks(clip, tmp_path) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "talk.mp4").write_bytes(clip["video"].read_bytes())
    (work / "data" / "talk.mp4").write_bytes(clip["video"].read_bytes())
    Image.fromarray(portrait()).save(work / "portrait.png")
    Image.fromarray(non_face_photos()["coffee"]).save(work / "coffee.png")
    blocker = tmp_path / "no-network"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, socket, sys
        def _refuse(self, address, *args):
            with open(os.environ["NETWORK_LOG"], "a") as log:
                log.write(repr(address) + "\\n")
            raise OSError("network disabled for this test")
        socket.socket.connect = _refuse
        socket.socket.connect_ex = _refuse

        class _NoFaceAlignment:  # the optional backend is hidden: the default must not need it
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "face_alignment":
                    raise ImportError("face_alignment is hidden in this test")
        sys.meta_path.insert(0, _NoFaceAlignment())
    """))
    (work / "check.py").write_text(textwrap.dedent("""
        import json
        from pathlib import Path
        from PIL import Image

        out = {}
        import sitecustomize
        out["guard"] = sitecustomize.__file__
        try:
            import face_alignment  # noqa: F401
            out["face_alignment"] = "importable"
        except ImportError:
            out["face_alignment"] = "hidden"
        from fantasy.cli import main
        out["eval_status"] = main(["eval", "talk.mp4", "--image", "portrait.png", "--json", "talk.json",
                                   "--identity-samples", "4"])
        report = json.loads(Path("talk.json").read_text())
        out["sync"] = [report["sync"]["score"], report["sync"]["lag"]]
        out["identity"] = [report["identity"]["metric"], report["identity"]["same_person"], report["face_backend"]]

        from fantasy.errors import NoFaceFound
        from fantasy.generation import Settings
        from fantasy.weights.presets import get_preset
        from fantasy.app.validation import check_inputs, default_face_check
        checker = default_face_check()
        speech = "talk.wav"
        out["face_note"] = check_inputs("portrait.png", speech, Settings(), get_preset("tiny"),
                                        face_checker=checker).face_note
        try:
            check_inputs("coffee.png", speech, Settings(), get_preset("tiny"), face_checker=checker)
        except NoFaceFound as exc:
            out["no_face"] = str(exc)

        from fantasy.model.identity import portrait_face_crop
        out["crop"] = list(portrait_face_crop(Image.open("portrait.png")).size)

        from fantasy.train.clips import SampleSpec, discover_clips, load_sample
        from fantasy.train.labels import lip_token_mask
        from fantasy.train.tracks import BackendLandmarks
        sample = load_sample(discover_clips("data")[0], SampleSpec(num_frames=21, fps=23, width=512, height=512))
        out["lip_tokens"] = int(lip_token_mask(sample.landmarks, 512, 512).sum())
        out["filled"] = sample.filled_frames
        out["fingerprint"] = BackendLandmarks().fingerprint()
        print("RESULT " + json.dumps(out))
    """))
    (work / "talk.wav").write_bytes(clip["speech"].read_bytes())
    torch_home, log = tmp_path / "empty-torch-home", tmp_path / "network.log"
    torch_home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TORCH_HOME": str(torch_home),
           "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "NETWORK_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    env.pop("FANTASY_FACE_BACKEND", None)
    done = subprocess.run([sys.executable, "check.py"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["guard"] == str(blocker / "sitecustomize.py") and result["face_alignment"] == "hidden"
    assert result["eval_status"] == 0 and result["sync"][0] > 0.9 and result["sync"][1] == 0
    assert result["identity"] == ["euclidean", 4, "dlib"]
    assert result["face_note"] == "face check: 1 face (dlib HOG)"
    assert result["no_face"].startswith("No face found in the portrait")
    assert result["crop"][0] == result["crop"][1] and 100 <= result["crop"][0] <= 160
    assert result["lip_tokens"] > 0 and result["filled"] == 0
    assert result["fingerprint"]["backend"] == "dlib" and set(result["fingerprint"]["files"]) == {
        "shape_predictor_68_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat",
        "face_detection_yunet_2023mar_int8bq.onnx"}
    assert list(torch_home.iterdir()) == [], "nothing was downloaded into the torch hub cache"
    assert not log.exists(), f"network attempted: {log.read_text() if log.exists() else ''}"


def test_the_feature_cache_fingerprint_names_the_face_backend_and_its_model_files(clip, tiny_pipe, tmp_path) -> None:
    import torch

    from fantasy.face.model_files import DLIB_LANDMARKS, DLIB_RESNET, YUNET
    from fantasy.metrics.frames import read_video
    from fantasy.train.cache import CachedClip, cache_dataset
    from fantasy.train.fingerprint import cache_fingerprint
    from fantasy.train.tracks import BackendLandmarks

    data = tmp_path / "data"
    data.mkdir()
    frames = read_video(clip["video"], max_frames=20).frames[:, 40:232, 128:320]  # 192² around the face
    write_clip(data / "talk.mp4", np.ascontiguousarray(frames), speech_segment(0.0, 20 / CLIP_FPS))
    spec = SampleSpec(num_frames=9, fps=CLIP_FPS, width=192, height=192)
    summary = cache_dataset(tiny_pipe, data, spec)  # landmarks measured by the default backend
    dlib = BackendLandmarks().fingerprint()
    assert dlib["backend"] == "dlib" and dlib["files"] == {
        DLIB_LANDMARKS.name: DLIB_LANDMARKS.sha256, DLIB_RESNET.name: DLIB_RESNET.sha256, YUNET.name: YUNET.sha256}
    assert summary.fingerprint == cache_fingerprint(tiny_pipe, spec, torch.float32, dlib)
    fan = BackendLandmarks("face-alignment").fingerprint()  # describing it needs no weights
    assert fan["backend"] == "face-alignment" and fan["redetect_every"] == 8
    assert cache_fingerprint(tiny_pipe, spec, torch.float32, fan) != summary.fingerprint
    cached = CachedClip.load(summary.clips[0])
    assert cached.filled_frames == 0 and cached.lip_mask.sum() > 0

    analyzer = shared_analyzer("dlib")  # landmarks given in a file: the backend no longer decides anything
    np.save(data / "talk.landmarks.npy", np.stack([analyzer.landmarks(f) for f in read_video(data / "talk.mp4").frames]))
    with_file = cache_dataset(tiny_pipe, data, spec)
    assert with_file.encoded == ["talk"] and with_file.fingerprint == cache_fingerprint(tiny_pipe, spec, torch.float32)
