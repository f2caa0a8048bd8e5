"""`python -m fantasy ...`: generate, batch, convert adapter weights, download weights, eval, train, serve, bench.

Each command lives with its layer and is mounted here (`fantasy.app.generate_command`, `fantasy.weights.command`,
`fantasy.metrics.command`, `fantasy.train.command`, `fantasy.app.serve`, `fantasy.bench.command`).
User errors (`FantasyError`) print one clear line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from fantasy.errors import FantasyError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fantasy", description="FantasyTalking Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    from fantasy.app.batch_command import add_parser as add_batch
    from fantasy.app.generate_command import add_parser as add_generate
    from fantasy.app.serve import add_parser as add_serve
    from fantasy.bench.command import add_parser as add_bench
    from fantasy.metrics.command import add_parser as add_eval
    from fantasy.train.command import add_clips_parser as add_make_clips
    from fantasy.train.command import add_parser as add_train
    from fantasy.weights.command import add_parsers as add_weights

    add_generate(sub)
    add_batch(sub)
    add_weights(sub)
    add_bench(sub)
    add_eval(sub)
    add_train(sub)
    add_make_clips(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error prints `error: ...` (status 2); SIGINT, SIGTERM or SIGHUP stop the command,
    remove its temporary files and print one line (status 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM)."""
    from fantasy import quiet  # noqa: F401  (drops known third-party import noise before those imports run)
    from fantasy.app import generate_command
    from fantasy.stop import StopRequested, stop_on_signals

    args = None
    try:
        with stop_on_signals():
            args = build_parser().parse_args(argv)  # builds the generate parser: imports torch and diffusers
            return args.run(args)
    except FantasyError as exc:
        parallel = sys.modules.get("fantasy.speed.parallel")  # imported only when a command uses processes
        if parallel is None or parallel.is_leader():  # a group's processes fail alike: one message
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except StopRequested as stop:
        parallel = sys.modules.get("fantasy.speed.parallel")
        if parallel is not None and not parallel.is_leader():  # the group stops alike: rank 0 says it
            return stop.exit_status
        if stop.written:
            print(f"stopped ({stop}), {stop.written} was already complete", file=sys.stderr)
        elif args is None or args.run is generate_command.run:  # generate writes its video only once it is complete
            print(f"stopped ({stop}), nothing written", file=sys.stderr)
        else:
            print(f"stopped ({stop})", file=sys.stderr)
        return stop.exit_status
    finally:
        if "fantasy.speed.parallel" in sys.modules:
            sys.modules["fantasy.speed.parallel"].leave_processes()
