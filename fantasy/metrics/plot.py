"""PNG of mouth opening against the speech envelope, drawn with Pillow.

Pillow is already a dependency; matplotlib would add ~40 MB and a font cache for two lines on a chart.
Both curves are standardised (zero mean, unit variance) so their shapes, not their units, are compared;
frames without a face leave a gap in the mouth curve.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MOUTH_COLOUR = (214, 39, 40)
SPEECH_COLOUR = (31, 119, 180)
WIDTH, HEIGHT = 960, 400
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 20, 50, 50


def _standardise(values: np.ndarray) -> np.ndarray:
    valid = np.isfinite(values)
    out = np.full(values.shape, np.nan)
    if valid.sum() >= 2 and np.std(values[valid]) > 0:
        out[valid] = (values[valid] - values[valid].mean()) / values[valid].std()
    elif valid.any():
        out[valid] = 0.0
    return out


def save_sync_plot(path: str | Path, mouth: list[float], envelope: list[float], fps: float, title: str) -> Path:
    """Write the chart to `path` (PNG) and return it."""
    path = Path(path)
    mouth_z = _standardise(np.asarray(mouth, dtype=np.float64))
    speech_z = _standardise(np.asarray(envelope, dtype=np.float64))
    n = max(len(mouth_z), 2)
    both = np.concatenate([mouth_z[np.isfinite(mouth_z)], speech_z[np.isfinite(speech_z)], [-1.0, 1.0]])
    lo, hi = float(both.min()), float(both.max())
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1, y0, y1 = MARGIN_L, WIDTH - MARGIN_R, MARGIN_T, HEIGHT - MARGIN_B

    def px(i: float, v: float) -> tuple[float, float]:
        return x0 + (x1 - x0) * i / (n - 1), y1 - (y1 - y0) * (v - lo) / (hi - lo)

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    draw.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    draw.line([px(0, 0.0), px(n - 1, 0.0)], fill=(220, 220, 220))
    seconds = (n - 1) / fps
    step = max(1, int(np.ceil(seconds / 10)))
    for sec in range(0, int(seconds) + 1, step):
        x, _ = px(sec * fps, lo)
        draw.line([(x, y1), (x, y1 + 5)], fill=(120, 120, 120))
        draw.text((x - 8, y1 + 8), f"{sec}s", fill=(60, 60, 60), font=font)
    for series, colour in ((speech_z, SPEECH_COLOUR), (mouth_z, MOUTH_COLOUR)):
        segment: list[tuple[float, float]] = []
        for i, v in enumerate(series):
            if np.isfinite(v):
                segment.append(px(i, float(v)))
                continue
            if len(segment) > 1:
                draw.line(segment, fill=colour, width=2)
            segment = []
        if len(segment) > 1:
            draw.line(segment, fill=colour, width=2)
    draw.text((x0, 12), title, fill=(0, 0, 0), font=font)
    for k, (label, colour) in enumerate((("mouth opening", MOUTH_COLOUR), ("speech envelope", SPEECH_COLOUR))):
        lx = x1 - 300 + 150 * k
        draw.line([(lx, 32), (lx + 24, 32)], fill=colour, width=3)
        draw.text((lx + 30, 24), label, fill=(0, 0, 0), font=font)
    draw.text((4, y0), "z-score", fill=(60, 60, 60), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
