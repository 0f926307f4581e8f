"""``factsync model``: fetch and inspect models."""

from __future__ import annotations

import argparse

from factsync.commands.options import add_model_options, load


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``model`` command group."""
    parser = commands.add_parser("model", help="fetch and inspect models")
    sub = parser.add_subparsers(title="model commands", metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="load a model (fetching the default on first use) and describe it",
        description="Load a model, fetching and converting the embedded default on first "
        "use, and print its family, size, default edit layers and fingerprint.",
    )
    add_model_options(info)
    info.set_defaults(handler=run_info)


def run_info(args: argparse.Namespace) -> int:
    """Handler of ``factsync model info``."""
    loaded = load(args)
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"name: {loaded.name}")
    print(f"family: {loaded.spec.family} ({loaded.model.config.model_type})")
    print(f"parameters: {params / 1e6:.1f}M, layers: {loaded.num_layers}")
    print(f"default edit layers: {loaded.default_layers}")
    print(f"prompt prefix ids: {loaded.prefix_ids}")
    print(f"fingerprint: {loaded.fingerprint}")
    return 0
