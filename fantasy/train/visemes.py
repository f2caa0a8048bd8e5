"""Phonemes -> visemes: how far the mouth opens and how the lips spread, per video frame.

Each espeak-ng mnemonic maps to a mouth shape (opening 0..1, spread -1 rounded .. +1 spread): p b m
close the lips, a A: aI open wide, u: w round them, i: I j spread them. The per-millisecond target is
smoothed with a Gaussian (σ 28 ms, coarticulation), led by 20 ms (lips move before the sound), then
averaged over the time each video frame is on screen. These curves are the ground truth that the
synthetic clips' mouths follow (`fantasy.train.face_warp`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fantasy.train.espeak import Phoneme

SMOOTHING_S = 0.028
LEAD_S = 0.020
PAUSE = (0.0, 0.0)
UNKNOWN = (0.3, 0.0)

# (opening, spread) by phoneme class; espeak-ng's English mnemonics.
_CLASSES: dict[tuple[float, float], tuple[str, ...]] = {
    (0.0, 0.0): ("p", "b", "m", "_", "_:", "_!", "_|", "_;", ""),
    (0.12, 0.1): ("f", "v"),
    (0.2, 0.1): ("T", "D"),
    (0.22, 0.4): ("s", "z", "t", "d", "n", "l", "t#", "d#", "n-", "l/", "?", "j", "l#"),
    (0.28, -0.35): ("S", "Z", "tS", "dZ"),
    (0.32, 0.0): ("k", "g", "N", "h", "x"),
    (0.25, -0.4): ("r", "r-", "3", "3:", "@r"),
    (0.12, -0.85): ("w", "W"),
    (0.95, 0.1): ("a", "a#", "A:", "A@", "aI", "aI@", "aI3", "aU", "aU@", "V"),
    (0.7, 0.3): ("e", "E", "e@", "eI", "@", "@2", "@5", "@L", "a2"),
    (0.7, -0.5): ("0", "O", "O:", "O@", "o@", "OI", "oU", "oU#", "O2"),
    (0.38, 0.75): ("i", "i:", "I", "I#", "I2", "i@", "i@3", "IR"),
    (0.35, -0.8): ("u:", "U", "U@", "u@", "u"),
}
VISEMES: dict[str, tuple[float, float]] = {name: shape for shape, names in _CLASSES.items() for name in names}


def viseme(name: str) -> tuple[float, float]:
    """(opening, spread) of one espeak mnemonic; stress marks are ignored, unknown names get a half-open mouth."""
    key = name.strip().lstrip("'\",%=")
    if key in VISEMES:
        return VISEMES[key]
    if key.startswith("_"):
        return PAUSE
    return VISEMES.get(key[:2], VISEMES.get(key[:1], UNKNOWN))


def viseme_curves(phonemes: Sequence[Phoneme], seconds: float, rate: int = 1000) -> np.ndarray:
    """[N, 2] (opening, spread) at `rate` Hz over `seconds`: each phoneme's shape until the next starts, smoothed
    and led as the module docstring says. Time before the first phoneme and after `seconds` is a closed mouth."""
    count = max(1, int(round(seconds * rate)))
    target = np.zeros((count, 2))
    starts = [min(count, max(0, int(round(p.start * rate)))) for p in phonemes]
    for i, phoneme in enumerate(phonemes):
        stop = starts[i + 1] if i + 1 < len(phonemes) else count
        target[starts[i]:stop] = viseme(phoneme.name)
    sigma = SMOOTHING_S * rate
    radius = int(np.ceil(4 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(target, ((radius, radius), (0, 0)))
    smooth = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(2)], axis=1)
    lead = int(round(LEAD_S * rate))
    return np.concatenate([smooth[lead:], np.repeat(smooth[-1:], lead, axis=0)])[:count]


def frame_visemes(phonemes: Sequence[Phoneme], seconds: float, fps: float, num_frames: int) -> np.ndarray:
    """[num_frames, 2] mean (opening, spread) while frame i is on screen, [i/fps, (i+1)/fps)."""
    rate = 1000
    curve = viseme_curves(phonemes, max(seconds, num_frames / fps), rate)
    edges = np.round(np.arange(num_frames + 1) * rate / fps).astype(int)
    return np.stack([curve[a:max(b, a + 1)].mean(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)])
