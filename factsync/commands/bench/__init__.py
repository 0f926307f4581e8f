"""``factsync bench``: side-by-side benchmarks that print comparison tables."""

from __future__ import annotations

import argparse

from factsync.commands.bench import (
    coupling,
    daemon,
    editing,
    exposure,
    lifelong,
    runtime,
    statistics,
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command group."""
    parser = commands.add_parser("bench", help="benchmarks that print comparison tables")
    sub = parser.add_subparsers(title="benchmarks", metavar="BENCHMARK")
    for group in (editing, statistics, coupling, exposure, lifelong, daemon, runtime):
        group.register(sub)
