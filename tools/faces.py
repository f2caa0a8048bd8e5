"""`python -m tools.faces`: CPU time of each face-analysis stage on the example portrait (512²), per frame.

docs/face-analysis.md's "per-frame CPU cost" figures. Each stage runs `repeats` times after one warm-up call; the
median CPU time of the process (`time.process_time`: all its threads, unaffected by other processes on a
busy machine) and the median wall time are reported. dlib runs on one core.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fantasy.bench.report import table

ROOT = Path(__file__).resolve().parent.parent


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(CPU ms, wall ms), medians over `repeats` calls after a warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1000, statistics.median(wall) * 1000


def measure(repeats: int = 20, image: Path = ROOT / "examples" / "portrait.png") -> list[tuple[str, float, float]]:
    """(stage, CPU ms, wall ms) for the dlib backend's stages and what `eval` and the face check do per frame."""
    from fantasy.face import FaceAnalyzer
    from fantasy.face.dlib_backend import DlibBackend
    from fantasy.face.yunet import YuNetDetector
    from fantasy.metrics.landmarks import TrackedLandmarks

    frame = np.asarray(Image.open(image).convert("RGB"))
    backend = DlibBackend()
    analyzer = FaceAnalyzer(backend)
    yunet = YuNetDetector()
    box = analyzer.detect(frame)
    points = analyzer.landmarks(frame, box)
    tracker = TrackedLandmarks(analyzer)
    stages = {
        "dlib HOG detection": lambda: backend.detect(frame),
        "YuNet detection (fallback)": lambda: yunet.detect(frame),
        "68 landmarks (one face)": lambda: backend.landmarks(frame, box),
        "ResNet embedding (one face)": lambda: backend.embed(frame, points),
        "eval landmarks per frame (detect + 68 points)": lambda: tracker(frame),
        "app face check (detect, count)": lambda: analyzer.find(frame),
    }
    return [(name, *_median_ms(fn, repeats)) for name, fn in stages.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    import torch

    rows = [list(row) for row in measure(args.repeats)]
    print(f"512x512 portrait, median of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(table(["stage", "CPU ms per frame", "wall ms per frame"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
