"""The project's own metrics on synthetic clips: do lip sync and identity see the generator's ground truth?

    python -m tools.demo_clip_metrics --seeds 0-7 [--size 128] [--frames 81]

Renders `draw_recipe(seed)` for each seed, writes it to a temporary folder and runs `fantasy.metrics.report.evaluate`
(dlib landmarks on the decoded mp4, not the generator's points); prints one row per clip and a contact sheet
path (`--sheet PNG`: frames 4, 6, ... of the first clips).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-7", help="A-B (inclusive) or a comma list")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--sheet", default=None, help="write a contact sheet PNG/JPEG of the clips here")
    args = parser.parse_args(argv)
    import numpy as np
    from PIL import Image

    from fantasy.metrics.report import evaluate
    from fantasy.train.synthetic import draw_recipe, render_clip, write_clip

    if "-" in args.seeds:
        a, b = (int(v) for v in args.seeds.split("-"))
        seeds = list(range(a, b + 1))
    else:
        seeds = [int(v) for v in args.seeds.split(",")]
    rows = []
    print("| seed | face | flip | voice | lip sync | lag | identity | faces found |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            recipe = draw_recipe(seed, args.size)
            clip = render_clip(recipe, args.frames)
            video = write_clip(clip, folder, f"clip-{seed}")
            report = evaluate(video, Path(folder) / f"clip-{seed}.wav")
            face = "~".join(recipe.photos) + (f"@{recipe.alpha:.2f}" if len(recipe.photos) > 1 else "")
            sync = report.sync
            print(f"| {seed} | {face} | {recipe.flip} | {recipe.voice} | {sync.score:.3f} | {sync.lag} | "
                  f"{report.identity.mean:.3f} | {report.frames_with_face}/{report.frames} |", flush=True)
            rows.append(np.concatenate([clip.frames[i] for i in range(4, 4 + 2 * 10, 2)], axis=1))
    if args.sheet:
        Image.fromarray(np.concatenate(rows[:4], axis=0)).save(args.sheet, quality=85)
        print(f"sheet: {args.sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
