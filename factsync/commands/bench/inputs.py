"""What the benchmarks read: records, fluency texts and lists of sizes, and their options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factsync.commands.options import engine_settings
from factsync.editing.engine import EngineSettings
from factsync.evaluation.counterfact import default_data_dir
from factsync.evaluation.datasets import DATASETS, dataset_spec, default_dataset_path

FLUENCY_FILE = Path("fluency") / "me-ppl-50.json"


def add_record_options(parser: argparse.ArgumentParser, *, records: int) -> None:
    """Which records a bench edits, in jobs of how many, and its fluency texts."""
    parser.add_argument("--dataset", choices=DATASETS, default="counterfact",
                        help="record format of --data (counterfact)")
    add_data_options(parser)
    add_fluency_option(parser)
    parser.add_argument("--n", type=int, default=records, help=f"records to edit ({records})")
    parser.add_argument("--batch", type=int, default=10, help="facts per edit job (10)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="records json (default: the dataset's file under ../shared/data beside the "
        "checkout: counterfact/counterfact-dev-1000.json or zsre/zsre-dev-1000.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")


def add_skip_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip", type=int, default=0, metavar="N",
                        help="leave out the first N records of --data, so the records used "
                        "are N+1 to N+--n: the same facts at the start of a stream as they "
                        "had later in another, to tell harder records from a longer "
                        "history (0)")


def records_after_skip(records: list, skip: int, n: int, data: Path) -> list:
    """``records`` from the ``skip``-th on, refused when that leaves fewer than ``n``."""
    if skip < 0:
        raise ValueError(f"--skip must not be negative, got {skip}")
    if len(records) < skip + n:
        raise ValueError(f"{data} holds {len(records)} records; --skip {skip} and "
                         f"--n {n} ask for {skip + n}")
    return records[skip:]


def add_measured_records_options(parser: argparse.ArgumentParser, *, records: int,
                                 measured: str, method_help: str) -> None:
    """``--dataset``, ``--data``, ``--seed``, ``--n`` (default ``records``, help
    ``measured``), ``--skip`` and ``--method`` of a bench that measures a method on
    records without editing them in a stream."""
    parser.add_argument("--dataset", choices=DATASETS, default="counterfact",
                        help="record format of --data (counterfact)")
    add_data_options(parser)
    parser.add_argument("--n", type=int, default=records, help=f"{measured} ({records})")
    add_skip_option(parser)
    parser.add_argument("--method", default="default", help=method_help)


def measured_records(args: argparse.Namespace) -> list:
    """The ``--n`` records of ``--data`` after ``--skip``, as evaluation cases."""
    from factsync.evaluation.suites import load_cases

    data = records_path(args, args.dataset)
    return records_after_skip(load_cases(args.dataset, data), args.skip, args.n, data)[: args.n]


def one_method(args: argparse.Namespace, command: str) -> tuple[str, EngineSettings]:
    """``--method``'s (name, engine settings), refused unless it names exactly one."""
    from factsync.bench.lifelong import chosen_methods

    methods = chosen_methods(args.method, engine_settings(args, neighbours=False),
                             args.max_iterations)
    if len(methods) != 1:
        raise ValueError(f"bench {command} measures one method, got {args.method!r}")
    ((name, settings),) = methods.items()
    return name, settings


def add_fluency_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fluency",
        type=Path,
        help=f"texts to measure perplexity on, a json list of {{\"Text\": ...}} rows "
        f"(default: ../shared/data/{FLUENCY_FILE} beside the checkout)",
    )


def records_path(args: argparse.Namespace, dataset: str = "counterfact") -> Path:
    """``--data``, or else the shared copy of ``dataset``."""
    if args.data:
        return args.data
    shared = default_dataset_path(dataset)
    if shared is None:
        spec = dataset_spec(dataset)
        raise ValueError(
            f"no {spec.title} data: pass --data FILE, or place "
            f"../shared/data/{spec.shared_file} beside the checkout"
        )
    return shared


def fluency_texts(path: Path | None) -> list[str]:
    """The texts of ``--fluency``, or else of the shared fluency file."""
    if path is None:
        shared = default_data_dir(FLUENCY_FILE)
        if shared is None:
            raise ValueError(
                f"no fluency texts: pass --fluency FILE, or place ../shared/data/{FLUENCY_FILE} "
                "beside the checkout; perplexity needs them"
            )
        path = shared / FLUENCY_FILE
    with open(path, encoding="utf-8") as handle:
        rows = json.load(handle)
    if not isinstance(rows, list) or not all(
            isinstance(row, dict) and isinstance(row.get("Text"), str) for row in rows):
        raise ValueError(f"{path}: fluency texts must be a JSON list of objects with a "
                         "\"Text\" string each")
    return [row["Text"] for row in rows]


def positive_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{option} must list numbers of at least 1, got {text!r}")
    return values
