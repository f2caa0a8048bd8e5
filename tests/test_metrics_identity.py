"""Identity metric: dlib's face embedding on real faces, frames without a face, another recogniser plugged in."""

from __future__ import annotations

import numpy as np
import pytest

from fantasy.face import shared_analyzer
from fantasy.metrics.identity import (
    COSINE,
    EUCLIDEAN,
    BackendEmbedder,
    compare,
    identity_similarity,
    same_person,
    sample_indices,
)
from tests.real_faces import AUGMENTATIONS, lfw_faces, portrait


@pytest.fixture(scope="module")
def embedder() -> BackendEmbedder:
    return BackendEmbedder(shared_analyzer("dlib"))


def _with_landmarks(images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    analyzer = shared_analyzer("dlib")
    return images, [analyzer.landmarks(image) for image in images]


@pytest.mark.slow
def test_the_portrait_stays_itself_and_other_people_do_not(embedder) -> None:
    ref = portrait()
    ref_points = shared_analyzer("dlib").landmarks(ref)
    same, same_points = _with_landmarks([AUGMENTATIONS[name](ref)[0] for name in ("JPEG q20", "darken 0.35", "flip")])
    other, other_points = _with_landmarks(lfw_faces()[:3])
    kept = identity_similarity(ref, ref_points, same, same_points, [0, 1, 2], embedder)
    lost = identity_similarity(ref, ref_points, other, other_points, [0, 1, 2], embedder)
    assert kept.metric == EUCLIDEAN and kept.threshold == 0.6 and kept.lower_is_better
    assert kept.embedder == "dlib ResNet face embedding (128-d, euclidean distance)"
    assert kept.worst < 0.25 and kept.same_person == 3  # measured 0.19 at worst (the flip)
    assert lost.mean > 0.6 and lost.same_person == 0
    assert kept.worst == max(d for _, d in kept.per_frame) and kept.mean == pytest.approx(
        np.mean([d for _, d in kept.per_frame]))


def test_frames_without_a_face_are_skipped_and_none_means_no_result(embedder) -> None:
    ref = portrait()
    points = shared_analyzer("dlib").landmarks(ref)
    frames = [ref, np.zeros_like(ref), ref]
    result = identity_similarity(ref, points, frames, [points, None, points], [0, 1, 2], embedder)
    assert [i for i, _ in result.per_frame] == [0, 2] and result.frames_sampled == 3
    assert result.mean == 0.0 and result.same_person == 2, "the same picture is at distance 0"
    assert identity_similarity(ref, points, frames, [None, None, None], [0, 1, 2], embedder) is None


def test_plugging_in_another_embedder() -> None:
    class MeanColour:
        name, metric, threshold = "mean colour", COSINE, None

        def __call__(self, image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
            return image_rgb.reshape(-1, 3).mean(axis=0)

    image = np.full((8, 8, 3), (200, 100, 50), np.uint8)
    points = np.zeros((68, 2))
    result = identity_similarity(image, points, [image, image // 2], [points, points], [0, 1], MeanColour())
    assert result.embedder == "mean colour" and result.mean == pytest.approx(1.0, abs=1e-6)
    assert result.same_person is None and not result.lower_is_better and result.worst == result.mean


def test_comparisons_and_thresholds() -> None:
    a, b = np.array([3.0, 0.0]), np.array([0.0, 4.0])
    assert compare(a, b, EUCLIDEAN) == 5.0 and compare(a, b, COSINE) == 0.0
    assert same_person(0.59, EUCLIDEAN, 0.6) and not same_person(0.61, EUCLIDEAN, 0.6)
    assert same_person(0.5, COSINE, 0.363) and same_person(0.5, COSINE, None) is None
    with pytest.raises(ValueError, match="metric must be euclidean or cosine, got manhattan"):
        compare(a, b, "manhattan")


def test_sample_indices_spread_over_the_clip() -> None:
    assert sample_indices(81, 5) == [0, 20, 40, 60, 80]
    assert sample_indices(3, 16) == [0, 1, 2]
    assert sample_indices(0, 4) == []
