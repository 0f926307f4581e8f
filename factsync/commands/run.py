"""``factsync run``: the daemon."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from factsync.daemon.config import load_config
from factsync.logs import configure_logging


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``run`` command."""
    parser = commands.add_parser(
        "run",
        help="run the daemon: watch the fact feed, edit, gate, promote, serve metrics and API",
        description="Run factsync until SIGTERM or SIGINT. Without --config it runs on the "
        "embedded default: the SmolLM2-135M-Instruct model, state and a watched facts/ "
        "directory under $FACTSYNC_HOME (~/.cache/factsync), the shipped default policy, "
        "metrics on 127.0.0.1:9108 and the API on 127.0.0.1:8080. The API token can be "
        "given in FACTSYNC_API_TOKEN.",
    )
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.set_defaults(handler=run, computes=True)


def run(args: argparse.Namespace) -> int:
    """Handler of ``factsync run``."""
    from factsync.daemon.service import Daemon

    config = load_config(args.config)
    if config.log.json or args.log_json or config.log.level != "INFO":
        level = args.log_level if args.log_level != "INFO" else config.log.level
        configure_logging(level, json_lines=config.log.json or args.log_json)
    logging.getLogger(__name__).info(
        "data directory %s, caches %s", config.state_dir, config.caches
    )
    Daemon.open(config).run_until_signalled()
    return 0
