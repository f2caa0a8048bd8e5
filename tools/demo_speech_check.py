"""Does the demo speech encoder carry the lips? A ridge probe of the mouth opening on held-out clips.

    python -m tools.demo_speech_check --model /work/runs/demo/model --heldout /work/runs/demo/heldout

Fits a ridge regression from the frozen encoder's features (50 Hz) to the viseme opening on half the held-out
clips and prints its correlation on the other half (`fantasy.train.speech_trainer.opening_correlation`), for
the trained encoder in MODEL/speech.safetensors and for the same architecture with random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--heldout", required=True)
    args = parser.parse_args(argv)
    import torch

    from fantasy.train.speech_trainer import opening_correlation
    from fantasy.weights.demo import demo_components, demo_speech_encoder, load_part

    torch.set_num_threads(1)
    trained = SimpleNamespace(audio_encoder=demo_speech_encoder().eval())
    load_part(trained, "speech", Path(args.model) / "speech.safetensors")
    random = demo_components()["audio_encoder"].eval()
    print(f"opening probe correlation on {args.heldout}: trained {opening_correlation(trained.audio_encoder, args.heldout):.3f}, "
          f"random {opening_correlation(random, args.heldout):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
