"""Landmarks for every frame of a clip, running the face detector as often as the backend can afford.

dlib's HOG detector is cheap (~15 ms a 512² frame), so it runs on every frame. face-alignment's S3FD
costs more than FAN itself on CPU (~0.7 s vs ~0.45 s a frame at 512 px); in a talking-portrait clip the
face barely moves between frames, so it runs every `redetect_every` frames (the backend's choice) and
in between the last detector box follows the landmarks' centre (the landmark model re-fits each frame).
"""

from __future__ import annotations

import numpy as np

from fantasy.face import FaceAnalyzer, FaceBox


class TrackedLandmarks:
    """A `LandmarkProvider` for consecutive frames of one clip (stateful: one instance per clip).

    Landmark models return 68 points for any box, face or not, so a face that leaves the picture between
    two detections is only noticed at the next detection (at most `redetect_every - 1` frames late).
    `redetect_every` defaults to the backend's (dlib: 1, face-alignment: 8).
    """

    def __init__(self, analyzer: FaceAnalyzer, redetect_every: int | None = None) -> None:
        redetect_every = analyzer.redetect_every if redetect_every is None else redetect_every
        if redetect_every < 1:
            raise ValueError("redetect_every must be >= 1")
        self.analyzer = analyzer
        self.redetect_every = redetect_every
        self._calls = 0
        self._box: FaceBox | None = None
        self._anchor: np.ndarray | None = None  # landmark centre when the box was detected
        self.detections = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        due = self._calls % self.redetect_every == 0
        self._calls += 1
        if due or self._box is None:
            self._box = self.analyzer.detect(frame)
            self._anchor = None
            self.detections += 1
            if self._box is None:
                return None
        points = self.analyzer.landmarks(frame, box=self._box)
        if points is None:
            self._box = None
            return None
        centre = points.mean(axis=0)
        if self._anchor is None:
            self._anchor = centre
        else:  # follow the head: shift the detector box by how far the landmarks moved since detection
            dx, dy = centre - self._anchor
            b = self._box
            self._box = FaceBox(b.x1 + dx, b.y1 + dy, b.x2 + dx, b.y2 + dy, b.score, b.detector)
            self._anchor = centre
        return points
