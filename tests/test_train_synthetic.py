"""Synthetic talking clips (fantasy.train.synthetic and its parts): ground truth the project's own metrics agree with."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fantasy.errors import InvalidSetting
from fantasy.metrics.sync import mouth_opening
from fantasy.train.espeak import Phoneme, synthesise
from fantasy.train.face_warp import MAX_GAP, FaceGeometry, Pose, backward_map, forward_points, render
from fantasy.train.portraits import frame_face, photo
from fantasy.train.synthetic import LEAD_SILENCE_S, draw_recipe, make_clips, render_clip, write_clip
from fantasy.train.visemes import UNKNOWN, frame_visemes, viseme

COLLINS_SEED = 5  # draw_recipe(5): Eileen Collins, not mirrored, no morph


# ---------------------------------------------------------------- phonemes -> visemes

def _round_trip(face, pose):
    import cv2

    geometry = FaceGeometry(face.landmarks)
    moved = forward_points(geometry, pose)
    map_x, map_y, _ = backward_map(geometry, pose, 256, 256)
    at = (moved[:, 0:1].astype(np.float32), moved[:, 1:2].astype(np.float32))
    back = np.hstack([cv2.remap(map_x, *at, cv2.INTER_LINEAR), cv2.remap(map_y, *at, cv2.INTER_LINEAR)])
    return moved, np.abs(back - face.landmarks).max(axis=1)


@pytest.mark.parametrize("closed", ["p", "b", "m", "_", "_:"])
def test_closed_lips_and_pauses_have_zero_opening(closed):
    assert viseme(closed) == (0.0, 0.0)


def test_viseme_classes_open_round_and_spread_as_speech_does():
    assert viseme("aI")[0] > 0.9 and viseme("A:")[0] > 0.9  # wide open
    assert viseme("u:")[1] < -0.5 and viseme("w")[1] < -0.5  # rounded
    assert viseme("i:")[1] > 0.5 and viseme("I")[1] > 0.5  # spread
    assert viseme("'aI") == viseme("aI")  # stress marks do not matter
    assert viseme("Q!") == UNKNOWN


def test_frame_visemes_follow_the_phonemes_with_a_lead():
    phonemes = [Phoneme("_", 0.0), Phoneme("A:", 0.2), Phoneme("m", 0.6), Phoneme("_", 0.8)]
    curve = frame_visemes(phonemes, 1.0, fps=25, num_frames=25)
    assert curve.shape == (25, 2)
    assert curve[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert curve[10, 0] == pytest.approx(viseme("A:")[0], abs=1e-3)  # 0.40-0.44 s: mid vowel
    assert curve[17, 0] < 0.05  # 0.68-0.72 s: the m closes the lips
    # the 20 ms lead: frame 4 (0.16-0.20 s) already opens before the vowel starts at 0.2 s
    assert 0.0 < curve[4, 0] < curve[6, 0]


# ---------------------------------------------------------------- speech

def test_espeak_speech_and_phoneme_times_are_deterministic():
    a = synthesise("Bob picked a pear.", "en-us", 160, 50)
    b = synthesise("Bob picked a pear.", "en-us", 160, 50)
    assert np.array_equal(a.samples, b.samples) and a.phonemes == b.phonemes
    names = [p.name for p in a.phonemes]
    assert "b" in names and "p" in names
    starts = [p.start for p in a.phonemes]
    assert starts == sorted(starts) and starts[-1] <= a.seconds
    assert 0.5 < a.seconds < 2.5 and np.abs(a.samples).max() > 0.1
    c = synthesise("Bob picked a pear.", "en+f2", 160, 50)
    assert not np.array_equal(a.samples[: c.samples.size], c.samples[: a.samples.size])


def test_an_unknown_voice_is_a_clear_error():
    with pytest.raises(InvalidSetting, match="espeak-ng has no voice 'xx-nowhere'"):
        synthesise("hello", "xx-nowhere")
    with pytest.raises(InvalidSetting, match="the text to speak is empty"):
        synthesise("  ")


# ---------------------------------------------------------------- the warp

def _framed(size=256):
    return frame_face(photo("collins"), size, 0.55)


def test_landmarks_move_exactly_with_the_warp():
    """forward_points inverts backward_map: sampling the backward map at a moved point gives the neutral point."""
    face = _framed()
    pose = Pose(opening=0.9, spread=-0.6, blink=0.0, angle=2.5, scale=1.02, shift=(3.0, -2.0))
    moved, error = _round_trip(face, pose)
    seam = [60, 61, 62, 63, 64]  # the inner upper lip: the map jumps by the gap there, bilinear sampling mixes
    assert np.delete(error, seam).max() < 0.5, np.nonzero(error >= 0.5)
    gap = 0.9 * MAX_GAP  # mouth_opening is a ratio: head rotation and scale leave it alone
    assert mouth_opening(moved) - mouth_opening(face.landmarks) == pytest.approx(gap, rel=0.15)
    # closed eyes: the upper lids sit on the lower lids, everything else still round-trips
    moved, error = _round_trip(face, replace(pose, blink=1.0))
    assert error[list(range(36)) + list(range(48, 60)) + list(range(65, 68))].max() < 0.5
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        assert abs(moved[upper, 1] - moved[lower, 1]) < 0.35 * abs(face.landmarks[upper, 1] - face.landmarks[lower, 1])


def test_a_neutral_pose_leaves_the_photo_as_it_is():
    face = _framed(128)
    frame, points = render(face.image, FaceGeometry(face.landmarks), Pose())
    assert np.abs(frame.astype(int) - face.image.astype(int)).max() <= 1
    assert np.allclose(points, face.landmarks)


def test_dlib_finds_the_warped_landmarks_where_the_generator_put_them():
    from fantasy.face import shared_analyzer

    analyzer = shared_analyzer()
    clip = render_clip(replace(draw_recipe(COLLINS_SEED), size=256), 33)
    errors, mouth_errors = [], []
    for i in range(0, 33, 4):
        frame, ours = clip.frames[i], clip.landmarks[i]
        found = analyzer.landmarks(frame, analyzer.detect(frame))
        eye = np.linalg.norm(ours[36:42].mean(0) - ours[42:48].mean(0))
        errors.append(np.linalg.norm(found - ours, axis=1).mean() / eye)
        mouth_errors.append(np.linalg.norm(found[48:68] - ours[48:68], axis=1).mean() / eye)
    assert np.mean(errors) < 0.04 and np.mean(mouth_errors) < 0.06, (errors, mouth_errors)


# ---------------------------------------------------------------- clips

def test_a_clip_is_deterministic_by_seed_and_starts_neutral():
    recipe = draw_recipe(COLLINS_SEED)
    a, b = render_clip(recipe, 33), render_clip(recipe, 33)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.speech, b.speech)
    assert np.array_equal(a.landmarks, b.landmarks)
    assert a.frames.shape[1:] == (128, 128, 3) and a.frames.shape[0] >= 33
    lead = int(LEAD_SILENCE_S * 16_000)
    assert not a.speech[:lead].any() and np.abs(a.speech[lead:]).max() > 0.1
    assert a.truth["opening"][0] == pytest.approx(0.0, abs=1e-3)  # frame 0 is the neutral portrait
    assert a.truth["opening"].max() > 0.5
    assert draw_recipe(COLLINS_SEED + 1) != recipe
    other = render_clip(draw_recipe(COLLINS_SEED + 1), 33)
    assert other.recipe.text != recipe.text


def test_recipes_spread_over_faces_voices_and_levels():
    recipes = [draw_recipe(seed) for seed in range(60)]
    assert {len(r.photos) for r in recipes} == {1, 2}
    assert {r.flip for r in recipes} == {False, True}
    assert len({r.voice for r in recipes}) >= 5 and all(r.voice != "en-gb-scotland" for r in recipes)
    gains = np.array([r.colour for r in recipes])
    assert gains.min() >= 0.93 and gains.max() <= 1.07
    assert min(r.expression for r in recipes) < 0.7 and max(r.expression for r in recipes) > 1.2


def test_written_clips_are_what_the_trainer_loads(tmp_path):
    from fantasy.train.clips import SampleSpec, discover_clips, load_sample

    paths = make_clips(tmp_path, 2, seed=COLLINS_SEED, min_frames=33)
    assert [p.name for p in paths] == [f"clip-{COLLINS_SEED:06d}.mp4", f"clip-{COLLINS_SEED + 1:06d}.mp4"]
    clips = discover_clips(tmp_path)
    assert [c.name for c in clips] == [p.stem for p in paths]
    assert clips[0].landmarks_file is not None and clips[0].speech is not None
    sample = load_sample(clips[0], SampleSpec(num_frames=33, fps=23.0, width=128, height=128))
    rendered = render_clip(draw_recipe(COLLINS_SEED), 33)
    assert np.allclose(sample.landmarks, rendered.landmarks[:33], atol=1e-4)
    assert np.abs(sample.frames.astype(int) - rendered.frames[:33].astype(int)).mean() < 4  # H.264
    # a second run keeps the clips it finds
    before = paths[0].stat().st_mtime_ns
    make_clips(tmp_path, 3, seed=COLLINS_SEED)
    assert paths[0].stat().st_mtime_ns == before and len(discover_clips(tmp_path)) == 3


@pytest.mark.slow
def test_the_projects_metrics_score_a_clip_in_sync_and_a_shifted_copy_at_its_lag(tmp_path):
    from fantasy.metrics.report import evaluate

    clip = render_clip(draw_recipe(COLLINS_SEED), 81)
    video = write_clip(clip, tmp_path, "talk")
    report = evaluate(video, video.with_suffix(".wav"))
    assert report.frames_with_face == report.frames == 81
    assert report.sync.score > 0.5 and report.sync.lag == 0
    assert report.identity.mean < 0.3
    late = replace(clip, frames=np.concatenate([np.repeat(clip.frames[:1], 3, 0), clip.frames[:-3]]))
    shifted = evaluate(write_clip(late, tmp_path, "late"), video.with_suffix(".wav"))
    assert shifted.sync.lag == 3 and shifted.sync.score > 0.5


def test_make_clips_command_checks_its_arguments(tmp_path, capsys):
    from fantasy.cli import main

    assert main(["make-clips", "--out", str(tmp_path), "--count", "1", "--size", "100"]) == 2
    assert "--size must be a multiple of 16 and at least 32, got 100" in capsys.readouterr().err
    assert main(["make-clips", "--out", str(tmp_path), "--count", "1", "--photos", "einstein"]) == 2
    assert "--photos must name some of collins, hopper, got 'einstein'" in capsys.readouterr().err
    assert main(["make-clips", "--out", str(tmp_path), "--count", "0"]) == 2
    assert "the number of clips must be at least 1, got 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
