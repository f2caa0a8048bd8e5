"""Progressive decoding with Wan's causal VAE: frames come out as each latent frame is decoded.

`AutoencoderKLWan._decode` already decodes one latent frame at a time through a causal feature cache
(latent frame 0 -> 1 video frame, each later one -> 4). We run that same loop and yield as we go, so
the writer and the browser can start on the first second of video while the rest is still decoding.
The loop uses the VAE's cache attributes (`clear_cache`, `_feat_map`, `_conv_idx`); a test checks the
result equals `vae.decode` so a diffusers change cannot silently break it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def denormalize_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Undo the pipeline's latent normalisation (`(x - mean) / std`), as diffusers does before decode."""
    param = next(vae.parameters())
    latents = latents.to(device=param.device, dtype=param.dtype)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return latents * std + mean


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    frames = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).cpu().numpy()


def _uses_tiling(vae, latents: torch.Tensor) -> bool:
    if not getattr(vae, "use_tiling", False):
        return False
    ratio = vae.spatial_compression_ratio
    return latents.shape[-1] > vae.tile_sample_min_width // ratio or latents.shape[-2] > vae.tile_sample_min_height // ratio


@torch.no_grad()
def decode_progressively(vae, latents: torch.Tensor) -> Iterator[np.ndarray]:
    """Yield uint8 frames [n, H, W, 3] per latent frame (n = 1, then 4 each) from normalised latents [1, C, T, h, w]."""
    if latents.shape[0] != 1:
        raise ValueError("progressive decoding takes one video at a time")
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None:  # model offloading: move the VAE to its execution device first
        hook.pre_forward(vae)
    z = denormalize_latents(vae, latents)
    if _uses_tiling(vae, z) or vae.config.patch_size is not None:
        # Spatial tiling decodes every frame of a tile at once; hand out the result in the same steps.
        video = vae.decode(z, return_dict=False)[0]
        frames = to_uint8_frames(video)
        yield frames[:1]
        for start in range(1, frames.shape[0], 4):
            yield frames[start : start + 4]
        return
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(z)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            out = vae.decoder(x[:, :, i : i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0))
            yield to_uint8_frames(torch.clamp(out, -1.0, 1.0))
    finally:
        vae.clear_cache()
