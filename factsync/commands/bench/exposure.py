"""``factsync bench canary-exposure``: which records of a stream reach each canary."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.commands.bench.inputs import (
    add_measured_records_options,
    measured_records,
    one_method,
)
from factsync.commands.options import (
    POLICY_METHODS_NOTE,
    add_engine_options,
    add_model_options,
    load,
    statistics_settings,
)
from factsync.durable import write_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench canary-exposure``."""
    exposure = sub.add_parser(
        "canary-exposure",
        help="the records whose edits reach each of the daemon's canaries most",
        description="Read the key of each record's subject and of each daemon canary's "
        "subject (bare prompt, last subject token) at every edit layer of the method, and "
        "print per canary the records with the largest transfer: k^T A^-1 k_c / k^T A^-1 "
        "k, the change a MEMIT spread of that record's edit makes at the canary's key as "
        "a share of the change at the record's own key, averaged over the edit layers; A "
        "is lambda C + K_p K_p^T of the method's engine before its first edit (C its key "
        "statistics, K_p the guard facts' keys when its policy holds them), so lambda "
        "cancels where nothing is held. Also the median and the sum of the absolute "
        "transfers over all records. Nothing is edited. Canaries the records rewrite are "
        "left out, as bench lifelong leaves them out.",
    )
    add_measured_records_options(
        exposure, records=1000, measured="records of the stream",
        method_help="the method whose edit layers, key statistics and guards are read, "
        "named as bench lifelong --methods names them (default)")
    exposure.add_argument("--top", type=int, default=3,
                          help="records to list per canary (3)")
    exposure.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(exposure)
    add_engine_options(exposure, POLICY_METHODS_NOTE)
    exposure.set_defaults(handler=run_canary_exposure, computes=True)


def run_canary_exposure(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench canary-exposure``."""
    from factsync.bench.canary_exposure import exposures, format_exposures, transfers
    from factsync.bench.canary_facts import daemon_canary_facts
    from factsync.editing.build import build_engine

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    name, settings = one_method(args, "canary-exposure")
    cases = measured_records(args)
    loaded = load(args)
    canaries = daemon_canary_facts(loaded, cases)
    if not canaries:
        raise ValueError(f"{loaded.name} states none of the daemon's canaries that the "
                         "records leave alone; there is nothing to expose")
    engine = build_engine(loaded, settings, statistics_settings(args))
    layers = engine.layers
    systems = {layer: engine.layer_contexts[layer].memit_system(loaded.device)
               for layer in layers}
    requests = [case.request for case in cases]
    found = transfers(loaded, [(template, subject) for template, subject, _ in canaries],
                      [(r.template, r.subject) for r in requests], systems)
    names = [f"{template.format(subject)} {obj}" for template, subject, obj in canaries]
    answer = exposures(found, names, min(args.top, len(requests)), first_number=args.skip + 1)
    subjects = {args.skip + 1 + i: r.subject for i, r in enumerate(requests)}
    print(f"{name}, layers {','.join(map(str, layers))}: the records whose edits reach "
          f"each canary most (#the record's place in the stream as --skip counts records, "
          f"from 1; subject; transfer averaged over the layers)\n"
          f"{format_exposures(answer, subjects)}", flush=True)
    if args.json:
        write_json(args.json, {"method": name, "layers": layers,
                               "canaries": [e.to_json() for e in answer]})
    return 0
