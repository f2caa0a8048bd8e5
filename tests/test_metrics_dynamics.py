"""Subject/background dynamics and flicker on drawn clips: static, head moving, background moving, pumping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fantasy.face import FaceBox
from fantasy.metrics.dynamics import motion_dynamics, subject_box
from fantasy.metrics.frames import read_video
from tests.synthetic_clips import talking_frames, write_mp4
from tests.synthetic_faces import draw_face, measured_landmarks

W = H = 256
FACE = 50.0


def _boxes(frames) -> list[FaceBox | None]:
    out = []
    for f in frames:
        lm = measured_landmarks(f)
        out.append(None if lm is None else FaceBox.from_landmarks(lm))
    return out


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 2.0)


def _face_on(background: np.ndarray, dx: float = 0.0) -> np.ndarray:
    """Paste a drawn face (its skin/hair/features, not its flat backdrop) onto a background."""
    face, _ = draw_face(H, W, 0.3, center=(W / 2 + dx, H / 2), size=FACE)
    backdrop = np.all(face == face[0, 0], axis=2)
    out = background.copy()
    out[~backdrop] = face[~backdrop]
    return out


@pytest.mark.slow
def test_static_clip_has_near_zero_dynamics_and_flicker(tmp_path) -> None:
    frames = talking_frames(np.zeros(20), size=W)
    decoded = read_video(write_mp4(tmp_path / "static.mp4", frames)).frames
    result = motion_dynamics(decoded, _boxes(decoded))
    assert result.pairs == 19 and result.pairs_with_subject == 19
    assert result.subject < 0.05 and result.background < 0.05 and result.overall < 0.05
    assert result.flicker < 0.5


@pytest.mark.slow
def test_moving_head_shows_as_subject_not_background() -> None:
    frames = talking_frames(np.zeros(20), size=W, head_motion=8.0, face_size=FACE)
    result = motion_dynamics(frames, _boxes(frames))
    assert result.subject > 0.5
    assert result.background < result.subject / 3


@pytest.mark.slow
def test_moving_background_shows_as_background() -> None:
    wide = _texture(H, W + 60)
    frames = [_face_on(np.ascontiguousarray(wide[:, 3 * i : 3 * i + W])) for i in range(15)]
    _, lm = draw_face(H, W, 0.3, size=FACE)  # the face stays put: its drawn landmarks give the box
    result = motion_dynamics(frames, [FaceBox.from_landmarks(lm)] * len(frames))
    assert result.background > 3.0  # 3 px/frame at 256 px = 6 px/frame at the 512 px reference
    assert result.background > result.subject


def test_flicker_counts_brightness_pumping_not_motion() -> None:
    base = _texture(H, W, seed=1)
    pumping = [np.clip(base.astype(np.int16) + (15 if i % 2 else -15), 0, 255).astype(np.uint8) for i in range(10)]
    pumped = motion_dynamics(pumping, [None] * 10)
    assert pumped.flicker == 30.0  # measured exact: every pixel steps by 30 grey levels
    assert pumped.overall < 0.5, "a brightness change is not motion"
    wide = _texture(H, W + 40, seed=2)
    panning = [np.ascontiguousarray(wide[:, 2 * i : 2 * i + W]) for i in range(10)]
    panned = motion_dynamics(panning, [None] * 10)
    assert panned.overall > 3.0
    assert panned.flicker < 3.0, "motion the flow explains is not flicker"
    assert panned.subject is None and panned.background is None, "no face, no subject split"


@pytest.mark.slow
def test_dynamics_are_on_a_512_px_scale_whatever_the_size() -> None:
    big = _texture(512, 600, seed=3)
    small = cv2.resize(big, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    full = motion_dynamics([np.ascontiguousarray(big[:, 4 * i : 4 * i + 512]) for i in range(6)], [None] * 6)
    half = motion_dynamics([np.ascontiguousarray(small[:, 2 * i : 2 * i + 256]) for i in range(6)], [None] * 6)
    assert full.overall == pytest.approx(half.overall, rel=1.4e-5)  # measured 6.8e-6 apart
    assert full.overall == pytest.approx(4.0, rel=0.025)  # 4 px a frame at 512 px: measured 1.2 % off


def test_subject_box_grows_from_the_face_and_stays_in_frame() -> None:
    assert subject_box(FaceBox(100, 100, 140, 150), 300, 240) == (60, 70, 180, 240)
    assert subject_box(FaceBox(5, 10, 60, 60), 100, 80) == (0, 0, 100, 80)


def test_a_single_frame_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^Motion needs at least two frames\.$"):
        motion_dynamics([np.zeros((8, 8, 3), np.uint8)], [None])
