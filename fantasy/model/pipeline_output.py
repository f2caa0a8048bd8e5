"""What `FantasyTalkingPipeline.__call__` returns: the frames (diffusers' formats) and the speech they animate."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import soundfile
import torch
from diffusers.utils import BaseOutput

OUTPUT_TYPES = ("np", "pt", "pil", "latent", None)


@dataclass
class FantasyTalkingPipelineOutput(BaseOutput):
    """The video and its speech.

    frames: as diffusers' Wan pipelines give them, one video in a batch of one. "np": float32 [1, F, H, W, 3] in
        [0, 1]; "pt": float32 [1, F, 3, H, W] in [0, 1]; "pil": [[F PIL images]]; "latent": the normalised
        latents [1, 16, T, H/8, W/8], or for speech longer than one window a list of them, one per window
        (`FantasyTalkingPipeline.decode_latents` turns either into frames); None with `output_type=None`
        (the frames went to `on_frames` only).
    audio: the 16 kHz mono speech the video animates, `[0, F / fps)` of it (shorter when the speech is).
    output_type: the format of `frames`.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]] | list[torch.Tensor] | None
    audio: np.ndarray
    sampling_rate: int
    fps: float
    output_type: str | None = "np"

    def save(self, path: str | Path) -> Path:
        """Write the video with its speech as an H.264/AAC mp4 (verified, then moved into place); returns the path."""
        from fantasy.media.video import Mp4Writer

        frames = uint8_frames(self.frames, self.output_type)
        with tempfile.TemporaryDirectory(prefix="fantasy-speech-") as tmp:
            speech = Path(tmp) / "speech.wav"
            soundfile.write(speech, self.audio, self.sampling_rate, subtype="FLOAT")
            with Mp4Writer(path, self.fps, frames.shape[2], frames.shape[1], audio_path=speech) as writer:
                writer.write(frames)
        return Path(path)


def format_frames(frames: np.ndarray, output_type: str) -> np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]:
    """uint8 [F, H, W, 3] -> diffusers' video formats (see `FantasyTalkingPipelineOutput.frames`). Exact: the
    float formats hold `k / 255`, which `* 255` turns back into `k` for every level (no rounding loss)."""
    if output_type == "pil":
        return [[PIL.Image.fromarray(frame) for frame in frames]]
    video = (frames.astype(np.float32) / np.float32(255))[None]
    if output_type == "np":
        return video
    if output_type == "pt":
        return torch.from_numpy(video).permute(0, 1, 4, 2, 3)
    raise ValueError(f"output_type must be one of {', '.join(map(repr, OUTPUT_TYPES))}, got {output_type!r}")


def uint8_frames(frames, output_type: str | None) -> np.ndarray:
    """The inverse of `format_frames`: uint8 [F, H, W, 3] from frames in `output_type`."""
    if output_type not in ("np", "pt", "pil"):
        raise ValueError(f"this output holds no frames (output_type {output_type!r}); decode it first "
                         "(pipe.decode_latents)")
    if output_type == "pil":
        return np.stack([np.asarray(image.convert("RGB")) for image in frames[0]])
    if output_type == "pt":
        frames = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
    return (np.asarray(frames[0], dtype=np.float32) * 255).round().clip(0, 255).astype(np.uint8)
