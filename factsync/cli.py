"""The ``factsync`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from factsync import __version__
from factsync.editing.spread import SpreadSettings
from factsync.logs import configure_logging

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

    from factsync.commands import bench, control, edit, model, policy, run, state

    run.register(commands)
    state.register(commands)
    control.register(commands)
    policy.register(commands)
    edit.register(commands)
    bench.register(commands)
    model.register(commands)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="default",
        help="local HuggingFace model directory, or 'default' for the embedded "
        "SmolLM2-135M-Instruct (fetched and converted on first use)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (auto)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Options that shape the edit engine."""
    group = parser.add_argument_group("engine")
    group.add_argument("--algorithm", choices=["memit", "alphaedit"], default="memit")
    group.add_argument("--layers", help="comma-separated edit layers (default: by family)")
    group.add_argument(
        "--max-iterations",
        type=int,
        default=3,
        help="IME passes at most; 1 is single-pass editing (3)",
    )
    group.add_argument(
        "--update-fraction",
        type=float,
        default=SpreadSettings.update_fraction,
        help="share of its requested change a typical key gets per layer; sets the "
        f"update strength of MEMIT and AlphaEdit ({SpreadSettings.update_fraction})",
    )
    group.add_argument(
        "--chunk-size",
        type=int,
        default=10,
        help="facts per padded batch in the z optimisation (10)",
    )
    group.add_argument(
        "--corpus-tokens",
        type=int,
        default=None,
        help="tokens of model-sampled text behind the key statistics",
    )


def engine_settings(args: argparse.Namespace, *, neighbours: bool):  # noqa: ANN201
    """``EngineSettings`` from parsed engine options."""
    from factsync.editing.engine import EngineSettings
    from factsync.editing.targets import TargetSettings

    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    return EngineSettings(
        layers=layers,
        max_iterations=args.max_iterations,
        neighbours=neighbours,
        target=TargetSettings(chunk_size=args.chunk_size),
        spread=SpreadSettings(algorithm=args.algorithm, update_fraction=args.update_fraction),
    )


def statistics_settings(args: argparse.Namespace):  # noqa: ANN201
    """``StatisticsSettings`` from parsed options."""
    from factsync.editing.build import StatisticsSettings

    settings = StatisticsSettings()
    if args.corpus_tokens:
        settings = replace(settings, corpus_tokens=args.corpus_tokens)
    return settings


def load(args: argparse.Namespace):  # noqa: ANN201
    """Load the model named by the model options."""
    from factsync.models.loading import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def write_json(path: Path, payload: object) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(payload, indent=2) + "\n")
    staging.replace(path)


if __name__ == "__main__":
    sys.exit(main())
