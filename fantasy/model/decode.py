"""Progressive decoding with Wan's causal VAE: frames come out as each latent frame is decoded.

`AutoencoderKLWan._decode` already decodes one latent frame at a time through a causal feature cache
(latent frame 0 -> 1 video frame, each later one -> 4). We run that same loop and yield as we go, so
the writer and the browser can start on the first second of video while the rest is still decoding.
The loop uses the VAE's cache attributes (`clear_cache`, `_feat_map`, `_conv_idx`); a test checks the
result equals `vae.decode` so a diffusers change cannot silently break it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

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


# ---- the release's decode (`--release`) ------------------------------------------------------------
# DiffSynth's `WanVideoVAE.tiled_decode`, as `infer.py` calls it (`tiled=True`, tile 30x52, stride 15x26
# latents), re-derived from reading it: every tile decoded on its own, weighted by linear ramps over
# the overlap on its inner sides, summed, divided by the summed weights, clamped; then uint8 by
# truncation (`((x + 1) * 127.5).clip(0, 255).astype(uint8)`).
RELEASE_TILE = (30, 52)  # latent rows x columns (240 x 416 px)
RELEASE_STRIDE = (15, 26)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every multiple of `stride`, except where the previous tile already
    reaches the end. The last tile may be cut short by the edge."""
    return [start for start in range(0, size, stride) if not (start >= stride and start - stride + tile >= size)]


def blend_ramp(length: int, inner_start: bool, inner_end: bool, width: int) -> torch.Tensor:
    """1-D weights over one side of a tile: `(1..width)/width` rising from an inner start, falling to an
    inner end, 1 elsewhere (edges of the frame get no ramp)."""
    weights = torch.ones(length)
    ramp = torch.arange(1, width + 1, dtype=torch.float32) / width
    if inner_start:
        weights[:width] = ramp
    if inner_end:
        weights[-width:] = ramp.flip(0)
    return weights


def blend_tiles(
    height: int, width: int, decode_tile: Callable[[int, int, int, int], torch.Tensor],
    tile: tuple[int, int] = RELEASE_TILE, stride: tuple[int, int] = RELEASE_STRIDE, scale: int = 8,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Assemble `decode_tile(h0, h1, w0, w1)` ([1, C, F, px, px] for latent rows h0:h1, columns w0:w1) into
    the whole [1, C, F, height*scale, width*scale] video, blended and clamped as the release does."""
    values = weight = None
    border = ((tile[0] - stride[0]) * scale, (tile[1] - stride[1]) * scale)
    for h0 in tile_starts(height, tile[0], stride[0]):
        for w0 in tile_starts(width, tile[1], stride[1]):
            h1, w1 = min(h0 + tile[0], height), min(w0 + tile[1], width)
            pixels = decode_tile(h0, h1, w0, w1).to(dtype)
            if values is None:
                values = pixels.new_zeros(*pixels.shape[:3], height * scale, width * scale)
                weight = pixels.new_zeros(1, 1, pixels.shape[2], height * scale, width * scale)
            rows = blend_ramp(pixels.shape[3], h0 > 0, h0 + tile[0] < height, border[0])
            cols = blend_ramp(pixels.shape[4], w0 > 0, w0 + tile[1] < width, border[1])
            mask = torch.minimum(rows[:, None], cols[None, :]).to(pixels)
            region = (slice(None), slice(None), slice(None), slice(h0 * scale, h0 * scale + pixels.shape[3]),
                      slice(w0 * scale, w0 * scale + pixels.shape[4]))
            values[region] += pixels * mask
            weight[region] += mask
    return (values / weight).float().clamp_(-1, 1)


def to_uint8_truncated(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8, truncating as the release does (we round otherwise)."""
    frames = ((video[0].float() + 1) * 127.5).clip(0, 255).permute(1, 2, 3, 0).cpu().numpy()
    return frames.astype(np.uint8)


@torch.no_grad()
def decode_release_tiles(
    vae, latents: torch.Tensor, tile: tuple[int, int] = RELEASE_TILE, stride: tuple[int, int] = RELEASE_STRIDE,
) -> Iterator[np.ndarray]:
    """The release's decode of normalised latents [1, C, T, h, w]; yields uint8 frames 1, then 4 at a time.

    Each tile runs the causal decoder frame by frame from its own (unclamped) latents; the frames are
    handed out once every tile is done, since each frame needs all of its tiles.
    """
    if latents.shape[0] != 1:
        raise ValueError("the release's decode takes one video at a time")
    hook = getattr(vae, "_hf_hook", None)
    if hook is not None:  # model offloading: move the VAE to its execution device first
        hook.pre_forward(vae)
    param = next(vae.parameters())
    z = latents.to(device=param.device, dtype=param.dtype)
    # The release's de-normalisation: z / (1 / std) + mean (diffusers' pipeline does the same).
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(z)
    z = z / inverse_std + torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(z)
    x = vae.post_quant_conv(z)  # pointwise: the same on the whole grid as per tile
    vae.clear_cache()
    convs = vae._conv_num

    def decode_tile(h0: int, h1: int, w0: int, w1: int) -> torch.Tensor:
        cache: list = [None] * convs
        frames = [vae.decoder(x[:, :, i : i + 1, h0:h1, w0:w1], feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))
                  for i in range(x.shape[2])]
        return torch.cat(frames, dim=2)

    try:
        frames = to_uint8_truncated(blend_tiles(x.shape[3], x.shape[4], decode_tile, tile, stride, dtype=latents.dtype))
    finally:
        vae.clear_cache()
    yield frames[:1]
    for start in range(1, frames.shape[0], 4):
        yield frames[start : start + 4]

