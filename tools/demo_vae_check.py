"""How well the demo VAE reconstructs held-out clips: PSNR, and a contact sheet to look at.

    python -m tools.demo_vae_check --model /work/runs/demo/model --heldout /work/runs/demo/heldout --sheet vae.png

Encodes the first 17 frames of up to `--clips` held-out clips as one video (Wan's causal VAE: 17 frames ->
5 latent frames), decodes the latent mean, and prints the PSNR per clip and over all; the sheet shows, per
clip, input frames 0, 4, 8, 12, 16 above their reconstructions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--sheet", default=None)
    args = parser.parse_args(argv)
    import numpy as np
    import torch
    from PIL import Image

    from fantasy.metrics.frames import read_video
    from fantasy.train.clips import discover_clips
    from fantasy.train.vae_trainer import psnr
    from fantasy.weights.demo import demo_vae

    torch.set_num_threads(1)
    from types import SimpleNamespace

    from fantasy.weights.demo import load_part

    holder = SimpleNamespace(vae=demo_vae().eval())
    load_part(holder, "vae", Path(args.model) / "vae.safetensors")
    rows, scores = [], []
    for clip in discover_clips(args.heldout)[: args.clips]:
        frames = read_video(clip.video, max_frames=17).frames[:17]
        video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            recon = holder.vae.decode(holder.vae.encode(video).latent_dist.mean).sample.clamp(-1, 1)
        scores.append(psnr(recon, video))
        print(f"{clip.name}: {scores[-1]:.2f} dB")
        out = ((recon[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        picks = [0, 4, 8, 12, 16]
        rows.append(np.concatenate([np.concatenate([frames[i] for i in picks], 1),
                                    np.concatenate([out[i] for i in picks], 1)], 0))
    print(f"mean PSNR over {len(scores)} held-out clips: {np.mean(scores):.2f} dB")
    if args.sheet:
        Image.fromarray(np.concatenate(rows, 0)).save(args.sheet)
        print(f"sheet: {args.sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
