"""ComfyUI's data types <-> ours: IMAGE is a float tensor [B, H, W, C] in 0..1, AUDIO a dict
{"waveform": float tensor [B, C, S], "sample_rate": int} (ComfyUI's `comfy_api` input types)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fantasy.errors import InvalidSetting, MissingInput


def image_to_pil(image: torch.Tensor) -> Image.Image:
    """The first image of an IMAGE batch as an RGB PIL image (alpha dropped, as LoadImage gives it separately)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[0] == 0:
        raise MissingInput("the portrait must be a ComfyUI IMAGE (a [batch, height, width, channels] tensor)")
    pixels = image[0, :, :, :3].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


def frames_to_image(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames [F, H, W, 3] -> IMAGE [F, H, W, 3] float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(frames)).float().div(255.0)


def audio_samples(audio: dict) -> tuple[np.ndarray, int]:
    """An AUDIO dict -> (mono float32 samples, sample rate)."""
    try:
        waveform, rate = audio["waveform"], int(audio["sample_rate"])
    except (TypeError, KeyError, ValueError):
        raise InvalidSetting("the speech must be a ComfyUI AUDIO ({'waveform': tensor, 'sample_rate': int})") from None
    waveform = torch.as_tensor(waveform).detach().float().cpu()
    if waveform.dim() == 3:
        waveform = waveform[0]
    if waveform.dim() == 1:
        waveform = waveform[None]
    return waveform.mean(dim=0).numpy().astype(np.float32), rate


def samples_to_audio(samples: np.ndarray, rate: int) -> dict:
    """Mono samples -> AUDIO with one batch item and one channel."""
    return {"waveform": torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None, None], "sample_rate": rate}
