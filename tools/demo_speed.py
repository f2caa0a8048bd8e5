"""What one demo-preset video costs on a CPU: 3.4 s of speech (81 frames, one window), a 128-px face crop, 20 steps, 2 passes per step.

    OMP_NUM_THREADS=1 python -m tools.demo_speed [--model DIR] [--threads 1]

With `--model`, the trained parts in DIR; without, the demo architecture with random weights (the cost does
not depend on the weights). Prints process CPU seconds and wall seconds of `fantasy.generation.generate` on a
loaded pipeline (the issue's budget: under 30 s wall on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.4)
    args = parser.parse_args(argv)
    import soundfile
    import torch
    from PIL import Image

    from fantasy.examples import example_file
    from fantasy.generation import generate
    from fantasy.model.assemble import assemble
    from fantasy.settings import Settings
    from fantasy.train.portraits import frame_face, photo
    from fantasy.weights.demo import SIZE, demo_components, install_demo_motion, load_demo_pipeline
    from fantasy.weights.presets import Preset

    torch.set_num_threads(args.threads)
    if args.model:
        pipe = load_demo_pipeline(args.model)
    else:
        pipe = assemble(demo_components())
        install_demo_motion(pipe)
    face = Image.fromarray(frame_face(photo("collins"), SIZE, 0.55).image)
    speech, rate = soundfile.read(str(example_file("speech.wav")), dtype="float32")
    preset = Preset("demo", SIZE, 20, False, "demo", max_longest_edge=SIZE, max_video_pixels=SIZE * SIZE * 85)
    settings = Settings(steps=20, text_guidance=1.0, audio_guidance=3.0, max_duration=args.seconds,
                        longest_edge=SIZE, max_frames=81)
    with tempfile.TemporaryDirectory() as folder:
        audio = Path(folder) / "speech.wav"
        soundfile.write(str(audio), speech[: int(args.seconds * rate)], rate)
        cpu, wall = time.process_time(), time.perf_counter()
        result = generate(pipe, face, audio, Path(folder) / "out.mp4", settings, preset)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{result.num_frames} frames at {SIZE} px, {settings.steps} steps x {result.passes_per_step} passes: {cpu:.1f} CPU-s, {wall:.1f} s wall "
          f"({args.threads} thread{'s' if args.threads > 1 else ''}, {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
