"""`fantasy ...` (or `python -m fantasy ...`): generate, batch, download, convert, eval, train, make-clips, serve, bench.

Each command lives with its layer (`COMMANDS` names its module) and is mounted here only when it is the one asked
for: `--help`, `--version`, a mistyped command and argument errors answer before torch, diffusers or Gradio are
imported, and each command imports its libraries when it runs. User errors (`FantasyError`) and argument errors
print one line and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from fantasy import __version__
from fantasy.errors import FantasyError

# name -> (module, the function that adds its parser, the one-line help `fantasy --help` lists).
# tests/test_cli_parser.py checks that each module registers exactly this help.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("fantasy.app.generate_command", "add_parser", "portrait + speech -> talking-video mp4"),
    "batch": ("fantasy.app.batch_command", "add_parser",
              "a jobs file (CSV or JSON Lines: portrait, speech, prompt, seed, settings per row) -> one mp4 per row, "
              "one model load"),
    "download": ("fantasy.weights.command", "add_download_parser",
                 "fetch the real preset's weights from the Hugging Face Hub"),
    "convert": ("fantasy.weights.command", "add_convert_parser",
                "released fantasytalking_model.ckpt -> safetensors (bf16), or a preset -> a diffusers folder "
                "(--diffusers)"),
    "eval": ("fantasy.metrics.command", "add_parser",
             "lip-sync proxy, identity, motion and flicker metrics for a generated video (offline)"),
    "train": ("fantasy.train.command", "add_parser",
              "train the audio adapter, motion-intensity and identity modules on talking clips"),
    "make-clips": ("fantasy.train.command", "add_clips_parser",
                   "render synthetic talking clips (espeak-ng speech + warped public-domain photos) for `train`"),
    "serve": ("fantasy.app.serve_command", "add_parser",
              "serve generations with Ray Serve: one replica per GPU, a bounded queue, streamed events"),
    "bench": ("fantasy.bench.command", "add_parser",
              "time the pipeline: --gpu the full 14B DiT + encoders + VAE (random weights), --cpu the tiny run"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in `--help`, except where the help already says its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if not shown or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class CommandParser(argparse.ArgumentParser):
    """A parser whose errors are one line (`fantasy generate: error: ...`), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def program_name() -> str:
    """'python -m fantasy' when started that way, else 'fantasy' (the console script)."""
    started_as_module = sys.argv and Path(sys.argv[0]).parts[-2:] == ("fantasy", "__main__.py")
    return "python -m fantasy" if started_as_module else "fantasy"


def command_in(argv: list[str]) -> str | None:
    """The sub-command `argv` names (its first word that is not an option), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def build_parser(command: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with `command`'s parser mounted in full (its module imported); the other
    commands are only listed with their help."""
    parser = CommandParser(prog=prog or program_name(), description="FantasyTalking Studio: one portrait + one "
                           "speech clip -> a talking-portrait video. `COMMAND --help` shows a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    mounted = set()
    if command is not None:
        module, function, _ = COMMANDS[command]
        getattr(importlib.import_module(module), function)(sub)
        mounted = set(sub.choices)
    for name, (_, _, text) in COMMANDS.items():
        if name not in mounted:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error prints `error: ...` (status 2); SIGINT, SIGTERM or SIGHUP stop the command,
    remove its temporary files and print one line (status 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM)."""
    from fantasy.stop import StopRequested, stop_on_signals

    argv = sys.argv[1:] if argv is None else list(argv)
    args = None
    try:
        with stop_on_signals():
            try:
                args = build_parser(command_in(argv)).parse_args(argv)
            except SystemExit as done:  # --help, --version, or an argument error (already printed)
                return done.code if isinstance(done.code, int) else 2
            return args.run(args)
    except FantasyError as exc:
        _say_error(exc)
        return 2
    except StopRequested as stop:
        group = sys.modules.get("fantasy.speed.group")
        if not _leads() or (group is not None and group.failure_reported()):
            return stop.exit_status  # the group stops alike: rank 0 says it, unless a failure (the reason) was said
        if stop.written:
            print(f"stopped ({stop}), {stop.written} was already complete", file=sys.stderr)
        elif args is None or args.command == "generate":  # generate writes its video only once it is complete
            print(f"stopped ({stop}), nothing written", file=sys.stderr)
        else:
            print(f"stopped ({stop})", file=sys.stderr)
        return stop.exit_status
    except Exception as exc:
        group = sys.modules.get("fantasy.speed.group")
        if group is None or not group.in_group():
            raise
        group.print_failure(exc)  # a device fault on one rank, a peer that left, a timeout: one line, said once
        return 1
    finally:
        if "fantasy.speed.group" in sys.modules:
            sys.modules["fantasy.speed.group"].leave_processes()


def _say_error(exc: FantasyError) -> None:
    """`error: ...`; in a process group once for the group (`fantasy.speed.group.print_failure`), before one by
    the launch's rank 0 (every process finds the same bad flag)."""
    group = sys.modules.get("fantasy.speed.group")  # imported only when a command uses processes
    if group is not None:
        group.print_failure(exc)
    elif _leads():
        print(f"error: {exc}", file=sys.stderr)


def _leads() -> bool:
    """Whether this process speaks for its group: rank 0 of the process group once joined (the module is imported
    only when a command uses processes), else of the launch (torchrun's RANK); a plain run leads."""
    group = sys.modules.get("fantasy.speed.group")
    return group.is_leader() if group is not None else os.environ.get("RANK", "0") == "0"
