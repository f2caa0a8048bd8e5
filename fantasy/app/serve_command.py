"""`fantasy serve`: the command's flags (its work is `fantasy.app.serve.run`, imported when it runs, so that
`--help` and argument errors answer before Ray, torch or diffusers load)."""

from __future__ import annotations

from fantasy.app.flags import PRESET_NAMES, add_speed_flags

DEFAULT_MAX_QUEUED = 8  # fantasy.app.serve.DEFAULT_MAX_QUEUED (tests/test_cli.py keeps them equal)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve generations with Ray Serve: one replica per GPU, a bounded queue, streamed events",
        description="Start a Ray Serve application (pip install -r requirements-serve.txt): --replicas copies of "
                    "the pipeline (one GPU each on a GPU machine), each running one generation at a time; "
                    "requests past --max-queued waiting ones get HTTP 503. GET /info; POST /generate with "
                    "multipart image, audio and controls (JSON) streams NDJSON events (progress, mp4 chunks, "
                    "the finished mp4). `python app.py --serve URL` puts the web page in front of it.",
    )
    p.add_argument("--preset", default="tiny", choices=PRESET_NAMES, help="which models the replicas load")
    p.add_argument("--adapter", default=None, help="adapter or training checkpoint (default: the preset's)")
    p.add_argument("--replicas", type=int, default=None, help="pipelines to load (default: one per GPU, else 1)")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="default 1 on a GPU machine, else 0")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPU cores Ray reserves for each replica")
    p.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED,
                   help=f"waiting requests before new ones get 503 (default {DEFAULT_MAX_QUEUED})")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start one on this machine)")
    p.add_argument("--face-check", action="store_true", help="run the face check on the replicas too")
    p.add_argument("--context-parallel", type=int, default=1, metavar="N",
                   help="one replica per N GPUs, each video split over them (see generate --context-parallel)")
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where replicas keep requests' uploads and videos while they run (default: the temp folder)")
    add_speed_flags(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from fantasy.app import serve

    return serve.run(args)
