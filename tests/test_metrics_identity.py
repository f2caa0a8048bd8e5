"""Identity proxy: the same face scores higher than another face, on drawn faces and on a real photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from fantasy.face import FaceBox, square_face_crop
from fantasy.metrics.identity import (
    AppearanceEmbedder,
    cosine_similarity,
    face_crop,
    identity_similarity,
    sample_indices,
)
from tests.synthetic_faces import FaceStyle, draw_face

PERSON = FaceStyle()
OTHER = FaceStyle(skin=(200, 140, 100), hair=(200, 170, 80), eye=(60, 120, 60), face_aspect=1.05, texture_seed=5)
LOOKALIKE = FaceStyle(skin=(215, 165, 135), hair=(70, 45, 35), face_aspect=1.15, texture_seed=9)
ASTRONAUT_FACE = FaceBox(182, 63, 269, 174)  # skimage's public-domain NASA portrait (box from MTCNN)


@pytest.fixture(scope="module")
def embedder() -> AppearanceEmbedder:
    return AppearanceEmbedder()


def _talking(style: FaceStyle, n: int = 6) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames of one person speaking and moving a little (mouth, position, size vary)."""
    frames, marks = [], []
    for i in range(n):
        img, lm = draw_face(192, 192, opening=(i % 3) / 2, center=(96 + 3 * i - 6, 98 + i), size=80 + 2 * i, style=style)
        frames.append(img)
        marks.append(lm)
    return frames, marks


@pytest.mark.parametrize("other", [OTHER, LOOKALIKE], ids=["different", "lookalike"])
def test_a_different_face_scores_lower_than_the_same_face(embedder, other: FaceStyle) -> None:
    portrait, portrait_lm = draw_face(192, 192, 0.0, style=PERSON)
    same_frames, same_lm = _talking(PERSON)
    other_frames, other_lm = _talking(other)
    idx = list(range(len(same_frames)))
    same = identity_similarity(portrait, portrait_lm, same_frames, same_lm, idx, embedder)
    diff = identity_similarity(portrait, portrait_lm, other_frames, other_lm, idx, embedder)
    assert same.mean > 0.93
    assert diff.mean < same.mean - 0.05
    assert diff.minimum < same.minimum  # every same-person frame beats the other person's worst
    assert max(s for _, s in diff.per_frame) < min(s for _, s in same.per_frame)


def test_real_photo_rescaled_is_closer_than_another_subject(embedder) -> None:
    photo = data.astronaut()
    face = square_face_crop(photo, ASTRONAUT_FACE)
    smaller = cv2.resize(photo, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    b = ASTRONAUT_FACE
    moved = square_face_crop(smaller, FaceBox(b.x1 * 0.8 + 3, b.y1 * 0.8 + 2, b.x2 * 0.8 + 3, b.y2 * 0.8 + 2))
    cat = square_face_crop(data.chelsea(), FaceBox(100, 30, 300, 250))
    ref = embedder(face)
    assert cosine_similarity(ref, embedder(moved)) > 0.93
    assert cosine_similarity(ref, embedder(cat)) < cosine_similarity(ref, embedder(moved)) - 0.1


def test_embedding_is_three_unit_parts_and_the_cosine_is_their_mean(embedder) -> None:
    """As documented: [colour 18x8 | HOG 7x7 blocks x 2x2 cells x 9 | LBP 4x4 cells x 10], each part of length
    1/sqrt(3), so the cosine of two embeddings is the mean of the three parts' cosines (float32 histograms:
    measured 1.0e-8 off on the lengths, 1.3e-10 on the mean)."""
    img, lm = draw_face(128, 128, 0.3)
    other, other_lm = draw_face(128, 128, 0.0, style=OTHER)
    v, w = embedder(face_crop(img, lm)), embedder(face_crop(other, other_lm))
    parts = [slice(0, 144), slice(144, 1908), slice(1908, 2068)]
    assert v.shape == w.shape == (2068,)
    for part in parts:
        assert np.linalg.norm(v[part]) == pytest.approx(1 / np.sqrt(3), abs=2e-8)
    mean = np.mean([cosine_similarity(v[part], w[part]) for part in parts])
    assert cosine_similarity(v, w) == pytest.approx(mean, abs=3e-10)
    assert 0.85 < cosine_similarity(v, w) < 0.95  # another drawn face: alike, not the same (measured 0.911)


def test_frames_without_a_face_are_skipped_and_none_means_no_result(embedder) -> None:
    portrait, lm = draw_face(128, 128, 0.0)
    frames = [portrait, np.zeros_like(portrait), portrait]
    result = identity_similarity(portrait, lm, frames, [lm, None, lm], [0, 1, 2], embedder)
    assert [i for i, _ in result.per_frame] == [0, 2] and result.frames_sampled == 3
    assert result.embedder.startswith("appearance proxy")
    assert identity_similarity(portrait, lm, frames, [None, None, None], [0, 1, 2], embedder) is None


def test_plugging_in_another_embedder() -> None:
    class MeanColour:
        name = "mean colour"

        def __call__(self, face_rgb: np.ndarray) -> np.ndarray:
            return face_rgb.reshape(-1, 3).mean(axis=0)

    portrait, lm = draw_face(128, 128, 0.0)
    result = identity_similarity(portrait, lm, [portrait], [lm], [0], MeanColour())
    assert result.embedder == "mean colour" and result.mean == pytest.approx(1.0)


def test_sample_indices_spread_over_the_clip() -> None:
    assert sample_indices(81, 5) == [0, 20, 40, 60, 80]
    assert sample_indices(3, 16) == [0, 1, 2]
    assert sample_indices(0, 4) == []
