"""The demo model's go/no-go: does the DiT read the speech? One line per DiT checkpoint, and a plot.

    python -m tools.demo_go_no_go --model /work/runs/demo/model --heldout /work/runs/demo/heldout

For every `MODEL/dit-run/step-N.safetensors` not yet in `MODEL/dit-run/go_no_go.jsonl`: load it into the
demo pipeline, run `fantasy.train.audio_check` on the held-out clips (cached once with the model's VAE and
speech encoder into `MODEL/dit-run/heldout-cache`), append own / other / no-speech lip and all-token errors,
and redraw `go_no_go.png` (lip error with own vs other speech against steps). Go: own is clearly lower than
other (docs/demo-model.md). Run it with OMP_NUM_THREADS=1 nice -n 19 next to the training.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the demo model folder (vae, speech, dit-run/)")
    parser.add_argument("--heldout", required=True, help="held-out clips (make-clips --held-out-voice)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--every", type=int, default=1, help="evaluate every Nth checkpoint")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from fantasy.train.audio_check import audio_check
    from fantasy.train.cache import cache_dataset
    from fantasy.train.clips import SampleSpec
    from fantasy.train.dataset import TrainingSet
    from fantasy.train.loss_plot import write_loss_plot
    from fantasy.weights.demo import SIZE, load_demo_pipeline, load_part

    model = Path(args.model)
    run = model / "dit-run"
    results = run / "go_no_go.jsonl"
    done = {json.loads(line)["step"] for line in results.read_text().splitlines()} if results.is_file() else set()
    pipe = load_demo_pipeline(model, need=("vae", "speech"))
    spec = SampleSpec(num_frames=args.frames, fps=23.0, width=SIZE, height=SIZE)
    summary = cache_dataset(pipe, args.heldout, spec, run / "heldout-cache")
    heldout = TrainingSet.from_cache_dir(summary.cache_dir)
    checkpoints = sorted(run.glob("step-*.safetensors"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    for path in checkpoints[args.every - 1::args.every]:
        step = int(re.findall(r"\d+", path.name)[0])
        if step in done:
            continue
        started = time.process_time()
        load_part(pipe, "dit", path)
        check = audio_check(pipe, heldout)
        row = {"step": step, **{f"lips_{k}": round(v, 6) for k, v in check.lips.items()},
               **{f"all_{k}": round(v, 6) for k, v in check.all.items()}, "lip_gap": round(check.lip_gap, 4),
               "clips": check.clips, "cpu_s": round(time.process_time() - started, 1)}
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr)
    rows = sorted((json.loads(line) for line in results.read_text().splitlines()), key=lambda r: r["step"]) \
        if results.is_file() else []
    write_loss_plot(rows, run / "go_no_go.png", ("lips_own", "lips_other", "lips_none"),
                    "held-out lip error: own vs other speech")
    return 0


if __name__ == "__main__":
    sys.exit(main())
