"""Train the demo's `AutoencoderKLWan` from scratch on the frames of training clips (no pretrained VAE ships offline).

Three steps of four are four single frames (the spatial layers), every fourth is one 5-frame piece of a clip
(the causal temporal layers: Wan's VAE turns 1 + 4k frames into 1 + k latent frames). Loss: L1 + MSE on
pixels, the mouth region weighted `MOUTH_WEIGHT` times (it is what the demo is about; landmarks come with
the clips), plus a small KL term on the sampled posterior. The per-channel mean and std of the latents
(running averages) go into the VAE config, which `encode_video` uses to normalise latents for the DiT.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fantasy.train.clips import TrainingClip, discover_clips
from fantasy.train.loss_plot import write_loss_plot
from fantasy.train.resumable import RunFolder, read_log

MOUTH_WEIGHT = 4.0
KL_WEIGHT = 1e-6
CLIP_EVERY = 4  # every 4th step trains on a 5-frame piece
IMAGE_BATCH = 4
CACHE_CLIPS = 96


@dataclass
class VaeConfig:
    data: Path
    out: Path
    steps: int = 20_000
    lr: float = 5e-4
    seed: int = 0
    save_minutes: float = 5.0


class ClipFrames:
    """Decoded clips (uint8 frames and landmarks), a bounded number kept in memory."""

    def __init__(self, clips: list[TrainingClip]):
        self.clips = clips
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clips)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from fantasy.train.tracks import read_landmark_file

        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        clip = self.clips[index]
        frames = _read_frames(clip.video)
        points = (read_landmark_file(clip.landmarks_file, len(frames)) if clip.landmarks_file is not None
                  else np.full((len(frames), 68, 2), np.nan))
        self.cache[index] = (frames, points[: len(frames)])
        if len(self.cache) > CACHE_CLIPS:
            self.cache.popitem(last=False)
        return self.cache[index]


def _read_frames(path: Path, tries: int = 3) -> np.ndarray:
    """A clip's frames. A run lasts hours: a decode that fails once (ffmpeg starved of CPU by other jobs timed
    out while starting, seen on a loaded machine) is tried again before the run stops on it."""
    from fantasy.errors import UnsupportedVideo
    from fantasy.metrics.frames import read_video

    for attempt in range(tries):
        try:
            return read_video(path).frames
        except UnsupportedVideo:
            if attempt == tries - 1:
                raise
            time.sleep(2.0 * (attempt + 1))
    raise AssertionError("unreachable")


def mouth_weights(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """[F, H, W] pixel weights: 1, and 1 + MOUTH_WEIGHT inside each frame's mouth box (points 48-67, padded)."""
    out = np.ones((len(points), height, width), np.float32)
    for i, p in enumerate(points):
        mouth = p[48:68]
        if not np.isfinite(mouth).all():
            continue
        (x0, y0), (x1, y1) = mouth.min(axis=0), mouth.max(axis=0)
        pad = 0.35 * (x1 - x0)
        ys, xs = slice(max(0, int(y0 - pad)), int(y1 + pad) + 1), slice(max(0, int(x0 - pad)), int(x1 + pad) + 1)
        out[i, ys, xs] += MOUTH_WEIGHT
    return out


def draw_batch(frames: ClipFrames, generator: torch.Generator, temporal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(video [B, 3, T, H, W] in [-1, 1], weights [B, 1, T, H, W]): 4 frames of random clips, or one 5-frame piece."""
    pieces, weights = [], []
    for _ in range(1 if temporal else IMAGE_BATCH):
        video, points = frames.get(int(torch.randint(len(frames), (1,), generator=generator)))
        length = 5 if temporal else 1
        start = int(torch.randint(len(video) - length + 1, (1,), generator=generator))
        piece = video[start:start + length]
        pieces.append(torch.from_numpy(piece).permute(3, 0, 1, 2).float() / 127.5 - 1.0)
        weights.append(torch.from_numpy(mouth_weights(points[start:start + length], *piece.shape[1:3]))[None])
    return torch.stack(pieces), torch.stack(weights)


def architecture(config) -> dict:
    """The VAE config keys that fix its shape (diffusers' bookkeeping such as `_use_default_values` is a set whose
    order changes from process to process, and the latent statistics are what training updates)."""
    return {k: v for k, v in sorted(config.items()) if not k.startswith("_") and k not in ("latents_mean", "latents_std")}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two videos in [-1, 1]."""
    mse = float(((a.clamp(-1, 1) - b) / 2).pow(2).mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def train_vae(pipe, config: VaeConfig, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train `pipe.vae` for `config.steps` steps in all (resuming from `config.out/vae-run`); returns vae.safetensors."""
    from fantasy.weights.demo import save_part

    vae = pipe.vae
    frames = ClipFrames(discover_clips(config.data))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr, weight_decay=0.0)
    stats = torch.nn.Module()
    stats.register_buffer("mean", torch.zeros(vae.config.z_dim))
    stats.register_buffer("var", torch.ones(vae.config.z_dim))
    modules = {"vae": vae, "optimizer": optimizer, "latent_stats": stats}
    run = RunFolder(config.out / "vae-run")
    run.start(modules, {"part": "vae", "lr": config.lr, "seed": config.seed, "data": str(config.data),
                        "config": architecture(vae.config)}, generator)
    target = config.out / "vae.safetensors"
    vae.train()
    last_save = time.perf_counter()

    def save() -> None:
        vae.register_to_config(latents_mean=stats.mean.tolist(), latents_std=stats.var.sqrt().clamp_min(1e-3).tolist())
        run.save(modules, generator)
        save_part(pipe, "vae", target)
        rows = read_log(run.log_file)
        write_loss_plot(rows, run.path / "loss.png", ("loss",), "demo VAE")
        write_loss_plot(rows, run.path / "psnr.png", ("psnr",), "demo VAE: PSNR of the batch (dB)")

    try:
        while run.step < config.steps:
            temporal = (run.step + 1) % CLIP_EVERY == 0
            video, weights = draw_batch(frames, generator, temporal)
            posterior = vae.encode(video).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
            recon = vae.decode(z).sample
            error = (recon - video).abs() + (recon - video).pow(2)
            pixel = (error * weights).sum() / (weights.sum() * 3)
            kl = posterior.kl().mean() / np.prod(video.shape[1:])
            loss = pixel + KL_WEIGHT * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                mu = posterior.mean.transpose(0, 1).flatten(1)
                stats.mean.lerp_(mu.mean(dim=1), 0.01)
                stats.var.lerp_(mu.var(dim=1), 0.01)
            run.step += 1
            values = {"loss": round(float(loss.detach()), 5), "psnr": round(psnr(recon.detach(), video), 2),
                      "kind": "clip" if temporal else "images"}
            run.log(**values)
            if progress is not None:
                progress(run.step, config.steps, values)
            if time.perf_counter() - last_save > 60 * config.save_minutes:
                save()
                last_save = time.perf_counter()
    finally:
        if run.step > 0:
            save()  # a stop (Ctrl+C, SIGTERM) keeps every finished step
        vae.eval()
    return target
