"""Pre-train the demo's speech encoder (a small wav2vec2) on espeak-ng's own phoneme timings, then freeze it.

The real preset freezes wav2vec2-base-960h, trained on hours of speech; nothing like it ships offline,
and a random small wav2vec2 carries the mouth shape only weakly. The synthetic clips come with free
labels: every phoneme's start (NAME.truth.json). Each 20 ms token learns the mouth shape at its time
(opening and spread, regression) and its viseme class (classification), through a linear head that is
thrown away afterwards: the DiT's audio adapter reads the encoder's last hidden state, as in the release.
Speech is augmented (gain, noise, a random 2 s crop) so the features do not depend on loudness alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fantasy.train.clips import discover_clips
from fantasy.train.espeak import Phoneme
from fantasy.train.loss_plot import write_loss_plot
from fantasy.train.resumable import RunFolder, read_log
from fantasy.train.visemes import _CLASSES, viseme, viseme_curves

TOKEN_RATE = 50  # wav2vec2 tokens per second (320 samples at 16 kHz)
CROP_SECONDS = 2.0
BATCH = 4
SHAPES = list(_CLASSES)  # viseme classes, in order; one more class for unknown phonemes


@dataclass
class SpeechConfig:
    data: Path
    out: Path
    steps: int = 2000
    lr: float = 1e-3
    seed: int = 0
    save_minutes: float = 5.0


def token_labels(phonemes: list[tuple[str, float]], seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Per 20 ms token: (opening, spread) [N, 2] at its centre, and the viseme class [N] of the phoneme sounding."""
    count = int(seconds * TOKEN_RATE)
    curve = viseme_curves([Phoneme(n, s) for n, s in phonemes], seconds, 1000)
    centres = np.minimum(((np.arange(count) + 0.5) * 1000 / TOKEN_RATE).astype(int), len(curve) - 1)
    classes = np.zeros(count, np.int64)
    starts = np.array([s for _, s in phonemes])
    times = (np.arange(count) + 0.5) / TOKEN_RATE
    for i, t in enumerate(times):
        k = int(np.searchsorted(starts, t, side="right")) - 1
        shape = viseme(phonemes[k][0]) if k >= 0 else (0.0, 0.0)
        classes[i] = SHAPES.index(shape) if shape in SHAPES else len(SHAPES)
    return curve[centres].astype(np.float32), classes


class SpeechSet:
    """The clips' speech and token labels, loaded once (a few MB)."""

    def __init__(self, data: Path):
        import soundfile

        self.items = []
        for clip in discover_clips(data):
            truth_file = clip.video.with_name(f"{clip.name}.truth.json")
            if clip.speech is None or not truth_file.is_file():
                continue
            samples, rate = soundfile.read(str(clip.speech), dtype="float32")
            truth = json.loads(truth_file.read_text())
            shapes, classes = token_labels([tuple(p) for p in truth["phonemes"]], samples.size / rate)
            self.items.append((samples, shapes, classes))
        if not self.items:
            from fantasy.errors import TrainingDataError

            raise TrainingDataError(f"No synthetic clips with NAME.truth.json in {data}: make them with "
                                    "`python -m fantasy make-clips`.")

    def batch(self, generator: torch.Generator):
        crop = int(CROP_SECONDS * TOKEN_RATE)
        audio, shapes, classes = [], [], []
        for _ in range(BATCH):
            samples, s, c = self.items[int(torch.randint(len(self.items), (1,), generator=generator))]
            start = int(torch.randint(max(1, len(c) - crop), (1,), generator=generator)) if len(c) > crop else 0
            piece = samples[start * 320:(start + crop) * 320]
            piece = np.pad(piece, (0, crop * 320 - piece.size))
            gain = float(torch.empty(()).uniform_(0.3, 1.5, generator=generator))
            noise = float(torch.empty(()).uniform_(0.0, 0.02, generator=generator))
            piece = piece * gain + noise * torch.randn(piece.size, generator=generator).numpy()
            audio.append(piece.astype(np.float32))
            sc, cc = s[start:start + crop], c[start:start + crop]
            shapes.append(np.pad(sc, ((0, crop - len(sc)), (0, 0))))
            classes.append(np.pad(cc, (0, crop - len(cc)), constant_values=-100))  # -100: ignored
        return torch.from_numpy(np.stack(audio)), torch.from_numpy(np.stack(shapes)), torch.from_numpy(np.stack(classes))


def normalise(audio: torch.Tensor) -> torch.Tensor:
    """What `Wav2Vec2FeatureExtractor(do_normalize=True)` does, per row: zero mean, unit variance."""
    return (audio - audio.mean(dim=1, keepdim=True)) / torch.sqrt(audio.var(dim=1, keepdim=True) + 1e-7)


def train_speech(pipe, config: SpeechConfig, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train `pipe.audio_encoder` (+ a throw-away head) for `config.steps` steps; returns speech.safetensors."""
    from fantasy.weights.demo import save_part

    encoder = pipe.audio_encoder
    data = SpeechSet(config.data)
    torch.manual_seed(config.seed)
    head = torch.nn.Linear(encoder.config.hidden_size, 2 + len(SHAPES) + 1)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=config.lr, weight_decay=0.01)
    modules = {"encoder": encoder, "head": head, "optimizer": optimizer}
    run = RunFolder(config.out / "speech-run")
    run.start(modules, {"part": "speech", "lr": config.lr, "seed": config.seed, "data": str(config.data)}, generator)
    target = config.out / "speech.safetensors"
    encoder.train()
    last_save = time.perf_counter()
    try:
        while run.step < config.steps:
            audio, shapes, classes = data.batch(generator)
            hidden = encoder(normalise(audio)).last_hidden_state
            length = min(hidden.shape[1], shapes.shape[1])
            out = head(hidden[:, :length])
            valid = classes[:, :length] >= 0
            regression = (out[..., :2] - shapes[:, :length]).pow(2).mean(-1)[valid].mean()
            classification = F.cross_entropy(out[..., 2:].flatten(0, 1), classes[:, :length].flatten(), ignore_index=-100)
            loss = regression * 10 + classification
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            run.step += 1
            values = {"loss": round(float(loss.detach()), 5), "opening_mse": round(float(regression.detach()), 5),
                      "class_ce": round(float(classification.detach()), 4)}
            run.log(**values)
            if progress is not None:
                progress(run.step, config.steps, values)
            if time.perf_counter() - last_save > 60 * config.save_minutes:
                run.save(modules, generator)
                save_part(pipe, "speech", target)
                last_save = time.perf_counter()
    finally:
        if run.step > 0:
            run.save(modules, generator)
            save_part(pipe, "speech", target)
            write_loss_plot(read_log(run.log_file), run.path / "loss.png", ("loss",), "demo speech encoder")
        encoder.eval()
    return target


@torch.no_grad()
def opening_correlation(encoder, data: Path) -> float:
    """How well a ridge probe on the frozen encoder's features predicts the mouth opening, on `data`'s clips
    (fit on half the clips, scored on the other half): a check that the features carry the lips."""
    items = SpeechSet(data).items
    features, targets = [], []
    for samples, shapes, _ in items:
        hidden = encoder(normalise(torch.from_numpy(samples)[None])).last_hidden_state[0].numpy()
        n = min(len(hidden), len(shapes))
        features.append(hidden[:n])
        targets.append(shapes[:n, 0])
    half = max(1, len(items) // 2)
    x_fit, y_fit = np.concatenate(features[:half]), np.concatenate(targets[:half])
    x_test, y_test = np.concatenate(features[half:] or features[:half]), np.concatenate(targets[half:] or targets[:half])
    x_fit1 = np.hstack([x_fit, np.ones((len(x_fit), 1))])
    weights = np.linalg.solve(x_fit1.T @ x_fit1 + 1e-2 * np.eye(x_fit1.shape[1]), x_fit1.T @ y_fit)
    prediction = np.hstack([x_test, np.ones((len(x_test), 1))]) @ weights
    return float(np.corrcoef(prediction, y_test)[0, 1])
