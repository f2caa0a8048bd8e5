"""A PNG of a training run's loss (and any other logged curve) against steps, drawn with Pillow.

Every trainer calls `write_loss_plot` when it saves, so `RUN/loss.png` always shows the run so far. Raw
values are drawn faintly, a running mean (window of 2 % of the steps) strongly; the y axis is logarithmic
when the values span more than a factor of 20.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 900, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 40
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < 2:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def write_loss_plot(rows: Sequence[dict], path: str | Path, keys: Sequence[str] = ("loss",), title: str = "") -> Path | None:
    """Draw `keys` of the log `rows` (dicts with "step") into `path`; None when there is nothing to draw."""
    curves = []
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
        if points:
            curves.append((key, np.array(points, dtype=np.float64)))
    if not curves:
        return None
    values = np.concatenate([c[:, 1] for _, c in curves])
    positive = values[values > 0]
    log = positive.size == values.size and positive.max() / positive.min() > 20
    scale = np.log10 if log else (lambda v: v)
    low, high = float(scale(values).min()), float(scale(values).max())
    if high - low < 1e-12:
        low, high = low - 1, high + 1
    steps = np.concatenate([c[:, 0] for _, c in curves])
    first, last = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(step, value):
        return (LEFT + (step - first) / (last - first) * plot_w, TOP + (high - scale(value)) / (high - low) * plot_h)

    draw.rectangle([LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM], outline=(120, 120, 120))
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + fraction * plot_h
        value = high - fraction * (high - low)
        draw.text((4, y - 6), f"{10 ** value:.3g}" if log else f"{value:.3g}", fill="black")
    draw.text((LEFT, HEIGHT - BOTTOM + 8), f"step {first:g}", fill="black")
    draw.text((WIDTH - RIGHT - 90, HEIGHT - BOTTOM + 8), f"step {last:g}", fill="black")
    for i, (key, points) in enumerate(curves):
        colour = COLOURS[i % len(COLOURS)]
        faint = tuple(int(c + (255 - c) * 0.7) for c in colour)
        draw.line([xy(s, v) for s, v in points], fill=faint, width=1)
        smooth = running_mean(points[:, 1], max(1, len(points) // 50))
        draw.line([xy(s, v) for s, v in zip(points[:, 0], smooth, strict=True)], fill=colour, width=2)
        draw.text((LEFT + 10 + 160 * i, 12), f"{key} (last {smooth[-1]:.4g})", fill=colour)
    if title:
        draw.text((WIDTH - RIGHT - 8 * len(title) - 10, 12), title, fill="black")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")
    image.save(tmp)
    tmp.replace(path)
    return path
