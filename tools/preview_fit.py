"""How well the live preview's latent->RGB map matches a VAE's decoded frames: `python -m tools.preview_fit`.

A clip of the example portrait (a slow pan) is encoded with the VAE, normalised as the pipeline does, and
decoded again. Per colour channel it reports Pearson r between the decoded frames' mean colour over each
latent cell and: the published map (`fantasy.model.preview`, ComfyUI's Wan21 factors); a map fitted to this clip by
least squares; and that fit learned on the left half of the cells and tried on the right half (held out).

With the real Wan 2.1 VAE (`--vae weights/Wan2.1-I2V-14B-720P-Diffusers/vae`, any diffusers VAE folder) this
is the check of the published map, and the fitted factors can replace it for a fine-tuned VAE. Without it, a
full-size VAE with random weights is used: random weights carry no colour code, so its figures are noise level.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fantasy.model.decode import denormalize_latents
from fantasy.model.preview import (
    WAN21_LATENT_RGB_BIAS,
    WAN21_LATENT_RGB_FACTORS,
    channel_correlation,
    fit_latent_rgb,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "portrait.png"


def portrait_clip(frames: int, size: int, image: Path = EXAMPLE_IMAGE) -> torch.Tensor:
    """The portrait as a clip panning 2 px right and 1 px down a frame: [1, 3, F, size, size] in [-1, 1]."""
    with Image.open(image) as opened:
        big = opened.convert("RGB").resize((size + 2 * frames, size + 2 * frames), Image.LANCZOS)
    crops = [np.asarray(big.crop((2 * f, f, 2 * f + size, f + size))) for f in range(frames)]
    return torch.from_numpy(np.stack(crops)).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]


@torch.no_grad()
def check_map(vae, video: torch.Tensor) -> dict:
    """Encode, normalise, decode `video` [1, 3, F, H, W]; the three correlations (one r per channel each)."""
    param = next(vae.parameters())
    raw = vae.encode(video.to(param.device, param.dtype)).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(raw.device)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(raw.device)
    latents = ((raw.float() - mean) / std).cpu()
    decoded = vae.decode(denormalize_latents(vae, latents), return_dict=False)[0].float().clamp(-1, 1).cpu()
    factors, bias = fit_latent_rgb(latents, decoded)
    half = latents.shape[-1] // 2
    left = fit_latent_rgb(latents[..., :half], decoded[..., : half * 8])
    return {
        "latents": latents,
        "cells": latents.shape[2] * latents.shape[3] * latents.shape[4],
        "published_r": channel_correlation(latents, decoded, WAN21_LATENT_RGB_FACTORS, WAN21_LATENT_RGB_BIAS),
        "fitted_r": channel_correlation(latents, decoded, factors, bias),
        "fitted_heldout_r": channel_correlation(latents[..., half:], decoded[..., half * 8:], *left),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.preview_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--vae", default=None, help="a diffusers AutoencoderKLWan folder (default: random weights)")
    parser.add_argument("--frames", type=int, default=17, help="clip length, 4k+1 (default 17)")
    parser.add_argument("--size", type=int, default=256, help="clip side in px, a multiple of 8 (default 256)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from diffusers import AutoencoderKLWan

    if args.vae:
        vae, what = AutoencoderKLWan.from_pretrained(args.vae, torch_dtype=torch.float32), args.vae
    else:
        torch.manual_seed(0)
        vae, what = AutoencoderKLWan(), "Wan 2.1 VAE shape, random weights (figures are noise level)"
    report = check_map(vae.to(args.device).eval(), portrait_clip(args.frames, args.size))
    print(f"{what}: {args.frames} frames {args.size}x{args.size}, {report['cells']} latent cells; r per R, G, B")
    for key in ("published_r", "fitted_r", "fitted_heldout_r"):
        print(f"  {key:17s} " + "  ".join(f"{r:+.3f}" for r in report[key]))


if __name__ == "__main__":
    main()
