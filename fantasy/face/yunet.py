"""YuNet (OpenCV Zoo, run by OpenCV's `FaceDetectorYN`): the detector the dlib backend falls back on.

dlib's HOG detector misses faces under ~80 px (without upsampling), tilted more than ~25°, heavily
compressed or very dark; YuNet finds most of those (measured in docs/face-analysis.md). It runs only
where dlib finds nothing, so dlib's boxes, and the landmarks fitted from them, stay the default.

Its boxes are taller than dlib's and sit higher on the face, so each is mapped to the square box
dlib's 68-point predictor was trained with: centre moved down by 0.06 box widths, side 1.10 widths.
That mapping minimised the landmark difference to dlib's own boxes on 191 faces both detectors find
(skimage's LFW faces and the example portrait, augmented): mean 1.8 % of the eye distance, against
3.3 % for the raw box.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from fantasy.face.model_files import YUNET
from fantasy.face.types import FaceBox

SCORE_THRESHOLD = 0.8  # skimage's 100 LFW non-faces: 3 false faces at 0.6, 2 at 0.7, none at 0.8
NMS_THRESHOLD = 0.3
TOP_K = 50
BOX_SHIFT_Y = 0.06  # YuNet box -> dlib-style box: centre down by this many box widths
BOX_SCALE = 1.10  # and a square side of this many box widths
NAME = "YuNet"


class YuNetDetector:
    """Faces as dlib-style square boxes, the most confident first; thread-safe (one input size at a time)."""

    def __init__(self) -> None:
        self.path = YUNET.path()
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns about DNN targets
        try:
            self._net = cv2.FaceDetectorYN.create(str(self.path), "", (320, 320), SCORE_THRESHOLD, NMS_THRESHOLD, TOP_K)
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._lock = threading.Lock()

    def detect(self, image_rgb: np.ndarray) -> list[FaceBox]:
        height, width = image_rgb.shape[:2]
        bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
        with self._lock:
            self._net.setInputSize((width, height))
            _, found = self._net.detect(bgr)
        boxes = [dlib_style_box(row) for row in ([] if found is None else found)]
        return sorted(boxes, key=lambda b: b.score, reverse=True)


def dlib_style_box(row: np.ndarray) -> FaceBox:
    """One YuNet result row (x, y, w, h, 5 landmarks, score) as the square box dlib's predictor expects."""
    x, y, w, h = (float(v) for v in row[:4])
    cx, cy = x + w / 2.0, y + h / 2.0 + BOX_SHIFT_Y * w
    half = BOX_SCALE * w / 2.0
    return FaceBox(cx - half, cy - half, cx + half, cy + half, float(row[-1]), NAME)
