"""The ``factsync`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from factsync import __version__
from factsync.commands import bench, control, edit, export, model, policy, run, state
from factsync.logs import configure_logging
from factsync.paths import data_home
from factsync.threads import share_cores

log = logging.getLogger("factsync")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``factsync`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, json_lines=args.log_json)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        if getattr(args, "computes", False):  # commands that run the model in this process
            share_cores(data_home() / "cpu-users")
        return args.handler(args)
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="factsync",
        description="Keep a deployed language model's facts current with iterative, "
        "neighbour-assisted model editing (IME+NME over MEMIT/AlphaEdit).",
    )
    parser.add_argument("--version", action="version", version=f"factsync {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING... (INFO)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    run.register(commands)
    state.register(commands)
    control.register(commands)
    policy.register(commands)
    edit.register(commands)
    bench.register(commands)
    model.register(commands)
    export.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
