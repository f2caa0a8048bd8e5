"""`python -m fantasy eval VIDEO [--audio A] [--image I] [--json J] [--plot [P]]`: the metrics from a shell.

`fantasy/cli.py` mounts this with `add_parser(subparsers)`; `run(args)` returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fantasy.errors import FantasyError

# The names `--help` shows, spelled out so that building the parser imports nothing (tests/test_cli.py keeps them
# equal to fantasy.face.analyzer.BACKENDS, DEFAULT_BACKEND and fantasy.metrics.sync.DEFAULT_MAX_LAG).
BACKENDS = ("dlib", "face-alignment")
DEFAULT_BACKEND = "dlib"
DEFAULT_MAX_LAG = 5


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` sub-command; its `run` is stored in the parsed args (`args.run(args)`)."""
    p = subparsers.add_parser(
        "eval",
        help="lip-sync proxy, identity, motion and flicker metrics for a generated video (offline)",
        description="Measure a talking-portrait video: mouth/speech sync, identity vs. the portrait, "
        "subject and background motion, flicker. Prints a table and writes JSON.",
    )
    p.add_argument("video", help="the video to measure (mp4/mov/webm/mkv)")
    p.add_argument("--audio", default=None, help="speech the video should follow (default: the video's own audio track)")
    p.add_argument("--image", default=None, help="the portrait it was made from (default: the first frame with a face)")
    p.add_argument("--json", default=None, metavar="PATH", help="where to write the JSON (default: VIDEO.eval.json)")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="save mouth opening vs. speech envelope as a PNG (default path: VIDEO.sync.png)")
    p.add_argument("--max-lag", type=int, default=DEFAULT_MAX_LAG,
                   help=f"lip-sync lag window in frames, both ways (default {DEFAULT_MAX_LAG})")
    p.add_argument("--identity-samples", type=int, default=16, help="frames compared with the portrait (default 16)")
    p.add_argument("--face-backend", default=None, choices=BACKENDS,
                   help=f"landmarks from this face backend (default {DEFAULT_BACKEND}, or $FANTASY_FACE_BACKEND); "
                        "identity always from dlib's face embedding")
    p.add_argument("--device", default=None,
                   help="face-alignment's device (default: cuda if available, else cpu); dlib runs on the CPU")
    p.set_defaults(run=run)
    return p


def _default_path(video: str, suffix: str) -> Path:
    v = Path(video)
    return v.with_name(v.stem + suffix)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write JSON (and the plot). 0 on success, 2 on a user error."""
    from fantasy.metrics.plot import save_sync_plot
    from fantasy.metrics.report import evaluate, format_table, lag_text

    try:
        if args.max_lag < 0:
            raise FantasyError(f"--max-lag must be 0 or more, got {args.max_lag}")
        if args.identity_samples < 1:
            raise FantasyError(f"--identity-samples must be 1 or more, got {args.identity_samples}")
        report = evaluate(
            args.video, args.audio, args.image, max_lag=args.max_lag, identity_samples=args.identity_samples,
            face_backend=args.face_backend, device=args.device, progress=lambda message: print(f"  {message}...", file=sys.stderr),
        )
    except FantasyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    json_path = Path(args.json) if args.json else _default_path(args.video, ".eval.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"wrote {json_path}")
    if args.plot is not None:
        plot_path = Path(args.plot) if args.plot else _default_path(args.video, ".sync.png")
        s = report.sync
        title = "mouth opening vs. speech envelope"
        if s is not None and s.lag is not None:
            title += f"  (peak xcorr {s.score:.3f} at lag {lag_text(s.lag)})"
        save_sync_plot(plot_path, report.mouth, report.envelope, report.fps, title)
        print(f"wrote {plot_path}")
    return 0
