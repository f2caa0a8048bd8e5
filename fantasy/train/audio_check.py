"""Does the DiT use the speech? Held-out flow-matching error with a clip's own speech vs another clip's.

The demo's go/no-go (docs/demo-model.md): on held-out clips, at fixed noise levels and fixed noise, the
error on the lip tokens (the lip-tracing mask) must be clearly lower with the clip's own speech than with
another clip's speech. Equal errors mean the adapter has not learned to read the audio, however low the
loss. No audio (the adapter switched off) is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fantasy.train.objective import conditioned, velocity_error
from fantasy.train.trainer import make_batch

SIGMAS = (0.3, 0.5, 0.7)
CONDITIONS = ("own", "other", "none")


@dataclass(frozen=True)
class AudioCheck:
    """Mean squared velocity error per condition, on lip tokens and on all tokens."""

    lips: dict[str, float]
    all: dict[str, float]
    clips: int

    @property
    def lip_gap(self) -> float:
        """(other - own) / other on the lips: 0.05 means own speech gives a 5 % lower lip error."""
        return (self.lips["other"] - self.lips["own"]) / self.lips["other"]


@torch.no_grad()
def audio_check(pipe, dataset, stage: int = 2, sigmas: tuple[float, ...] = SIGMAS, seed: int = 0) -> AudioCheck:
    """Run every clip of `dataset` (a `TrainingSet`) with its own speech, the next clip's speech and none."""
    from fantasy.train.trainer import TrainConfig

    if len(dataset) < 2:
        raise ValueError("the audio check needs at least 2 held-out clips (one's speech is played to the other)")
    no_dropout = TrainConfig(data=".", out=".", drop_audio=0.0, drop_text=0.0)
    sums = {name: {c: 0.0 for c in CONDITIONS} for name in ("lips", "all")}
    count = 0
    for index in range(len(dataset)):
        item, other = dataset[index], dataset[(index + 1) % len(dataset)]
        generator = torch.Generator().manual_seed(seed + index)
        batch = make_batch(item, dataset, "cpu", generator, no_dropout)
        mask = batch.lip_mask
        for sigma in sigmas:
            noise = torch.randn(batch.latents.shape, generator=generator)
            for condition in CONDITIONS:
                features = other["audio_features"][None] if condition == "other" else batch.audio_features
                run = type(batch)(**{**batch.__dict__, "audio_features": features, "drop_audio": condition == "none"})
                with conditioned(pipe, run, stage):
                    error = velocity_error(pipe, run, sigma, noise)
                weights = F.interpolate(mask[None].float(), size=error.shape[1:], mode="nearest")[0]
                sums["lips"][condition] += float((error * weights).sum() / weights.sum().clamp_min(1))
                sums["all"][condition] += float(error.mean())
            count += 1
    return AudioCheck({c: v / count for c, v in sums["lips"].items()}, {c: v / count for c, v in sums["all"].items()},
                      len(dataset))
