"""``factsync edit``: edit one or a few facts and show the model before and after."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from factsync.commands.options import (
    add_engine_options,
    add_executor_options,
    add_model_options,
    engine_settings,
    executor_from_args,
    load,
    statistics_settings,
)
from factsync.editing.requests import EditRequest, Neighbour
from factsync.models.generation import greedy
from factsync.models.loading import LoadedModel
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``edit`` command."""
    parser = commands.add_parser(
        "edit",
        help="edit facts in a model and print before/after probabilities",
        description="Edit one or a few facts with IME (+NME when neighbours are given) and "
        "print, for each fact, the probability of the new and old object and the greedy "
        "completion before and after. Example: factsync edit --subject 'Eiffel Tower' "
        "--template '{} is located in the city of' --new Rome --old Paris",
    )
    parser.add_argument("--subject", help="subject of a single fact")
    parser.add_argument("--template", help="prompt with {} for the subject")
    parser.add_argument("--new", dest="new_object", help="the object the model must learn")
    parser.add_argument("--old", dest="old_object", help="the object it answers now (optional)")
    parser.add_argument(
        "--neighbour",
        action="append",
        default=[],
        metavar="SUBJECT|TEMPLATE|OBJECT",
        help="a fact that must not change (repeatable); turns on NME",
    )
    parser.add_argument(
        "--facts",
        type=Path,
        help="JSONL file, one fact per line: subject, template, new_object, optional "
        "old_object and neighbours [{subject, template, object}]",
    )
    parser.add_argument("--save", type=Path, help="write the edited model to this directory")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="greedy completion length")
    add_model_options(parser)
    add_engine_options(parser)
    add_executor_options(parser)
    parser.set_defaults(handler=run, computes=True)


def parse_requests(args: argparse.Namespace) -> list[EditRequest]:
    """Requests from ``--facts`` or from the single-fact options."""
    if args.facts:
        return read_facts_file(args.facts)
    if not (args.subject and args.template and args.new_object):
        raise ValueError("give --subject, --template and --new, or --facts FILE")
    neighbours = []
    for raw in args.neighbour:
        parts = raw.split("|")
        if len(parts) != 3:
            raise ValueError(f"--neighbour {raw!r} must be SUBJECT|TEMPLATE|OBJECT")
        neighbours.append(Neighbour(*parts))
    return [
        EditRequest(
            args.subject, args.template, args.new_object, args.old_object, tuple(neighbours)
        )
    ]


def read_facts_file(path: Path) -> list[EditRequest]:
    """Edit requests from a JSONL file; errors name the line."""
    requests = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                neighbours = tuple(
                    Neighbour(n["subject"], n["template"], n["object"])
                    for n in row.get("neighbours", [])
                )
                requests.append(
                    EditRequest(
                        row["subject"],
                        row["template"],
                        row["new_object"],
                        row.get("old_object"),
                        neighbours,
                    )
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc!r}") from exc
    if not requests:
        raise ValueError(f"{path} holds no facts")
    return requests


def snapshot(loaded: LoadedModel, requests: list[EditRequest], tokens: int) -> list[dict]:
    """Per request: new/old object probability and the greedy completion."""
    rows, owners = [], []
    for index, request in enumerate(requests):
        for obj in (request.new_object, request.old_object):
            if obj:
                rows.append(PromptSpec(request.template, request.subject, object_ids(loaded, obj)))
                owners.append((index, "p_new" if obj == request.new_object else "p_old"))
    scores = score_targets(loaded, rows)
    out = [{"completion": greedy(loaded, r.prompt, tokens)} for r in requests]
    for (index, key), score in zip(owners, scores, strict=True):
        out[index][key] = score.probability
    return out


def run(args: argparse.Namespace) -> int:
    """Handler of ``factsync edit``."""
    from factsync.editing.build import build_engine

    requests = parse_requests(args)
    loaded = load(args)
    neighbours = any(r.neighbours for r in requests)
    executor = executor_from_args(args)
    engine = build_engine(
        loaded, engine_settings(args, neighbours=neighbours), statistics_settings(args),
        optimiser=executor.optimise,
    )
    before = snapshot(loaded, requests, args.max_new_tokens)
    try:
        result = engine.edit(requests)
    finally:
        executor.close()
    result.delta.apply(loaded)
    after = snapshot(loaded, requests, args.max_new_tokens)
    for request, was, now, records in zip(requests, before, after, result.records, strict=True):
        print(f"{request.prompt!r} -> {request.new_object!r}  ({len(records)} IME passes)")
        for label, state in (("before", was), ("after ", now)):
            old = f"  P(old)={state['p_old']:.3f}" if "p_old" in state else ""
            print(f"  {label}  P(new)={state['p_new']:.3f}{old}  greedy: {state['completion']!r}")
    print(
        f"edited in {result.seconds:.1f}s, {result.iterations} pass(es), layers "
        f"{','.join(map(str, engine.layers))}"
    )
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)
        loaded.model.save_pretrained(args.save, safe_serialization=True)
        loaded.tokenizer.save_pretrained(args.save)
        result.delta.save(args.save / "factsync-delta.safetensors")
        print(f"saved the edited model and its delta to {args.save}")
    return 0
