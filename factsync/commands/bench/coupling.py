"""``factsync bench coupling``: the per-layer spread against one over all edit layers."""

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
    """Add ``bench coupling``."""
    coupling = sub.add_parser(
        "coupling",
        help="each fact spread layer by layer, and over all edit layers at once",
        description="Optimise the targets of the records with the method's settings, "
        "then spread each fact's target alone: with the method's own spread (each edit "
        "layer solved alone) and with a spread solving all edit layers at once over "
        "their joint key statistics, cross-layer blocks included (one row per --scales "
        "value of its lambda). Per spread: the median cost to ordinary text (d^T F d / 2 "
        "of the change d of the last edit layer's output on the end of the key "
        "statistics' corpus, nats per token to second order), the median share of the "
        "asked shift made on the bare prompt, and the cost per squared share over the "
        "method's, as a geometric mean over facts with its 95% bootstrap interval. "
        "Nothing is edited. The joint statistics are computed once and cached beside "
        "the key statistics.",
    )
    add_measured_records_options(
        coupling, records=16, measured="records to measure",
        method_help="the method whose targets and spread are measured, named as bench "
        "lifelong --methods names them (default)")
    coupling.add_argument("--scales", default="0.5,1,2,4",
                          help="multiples of the joint spread's derived lambda to measure, "
                          "comma-separated, or 'none' to measure the method's own spread "
                          "only (0.5,1,2,4)")
    coupling.add_argument("--joint-tokens", type=int, default=100_000, metavar="N",
                          help="corpus tokens behind the joint key statistics (100000)")
    coupling.add_argument("--harm-tokens", type=int, default=4096, metavar="N",
                          help="ordinary-text tokens the cost is averaged over (4096)")
    coupling.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(coupling)
    add_engine_options(coupling, POLICY_METHODS_NOTE)
    coupling.set_defaults(handler=run_coupling_bench, computes=True)

    report = sub.add_parser(
        "coupling-report",
        help="methods from separate bench coupling runs, fact by fact",
        description="Read bench coupling --json answers of the same records and compare "
        "each run's method spread (its first row) with the first run's, fact by fact: "
        "the median cost to ordinary text, the median achieved share, and the cost per "
        "squared share over the first run's as a geometric mean over facts with its 95% "
        "bootstrap interval. For methods one run cannot hold together, such as other "
        "edit layers (another probe layer and F) or other targets.",
    )
    report.add_argument("runs", nargs="+", type=Path, metavar="JSON",
                        help="bench coupling --json answers; the first is the reference")
    report.set_defaults(handler=run_coupling_report)


def run_coupling_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench coupling``."""
    from factsync.bench.fact_harm import TextProbe
    from factsync.bench.layer_coupling import (
        coupling_json,
        coupling_rows,
        format_coupling,
        spread_costs,
    )
    from factsync.editing.build import build_engine, layer_sensitivity, statistics_corpus
    from factsync.editing.joint_spread import (
        JointSpread,
        joint_lambda,
        joint_moment_for,
        shrunk_blocks,
    )
    from factsync.editing.spread import spread
    from factsync.editing.targets import optimise_targets
    from factsync.paths import data_home

    own_only = args.scales.strip() == "none"
    scales = [] if own_only else [float(x) for x in args.scales.split(",") if x.strip()]
    if (not scales and not own_only) or any(s <= 0 for s in scales):
        raise ValueError(f"--scales must be positive numbers or 'none', got {args.scales!r}")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    name, settings = one_method(args, "coupling")
    cases = measured_records(args)
    loaded = load(args)
    stats_settings = statistics_settings(args)
    engine = build_engine(loaded, settings, stats_settings)
    layers = engine.layers
    corpus = statistics_corpus(loaded, layers, stats_settings)
    # The engine already holds F when its step rule needs it.
    sensitivity = (engine.sensitivity if engine.sensitivity is not None
                   else layer_sensitivity(loaded, layers, stats_settings, corpus=corpus))
    requests = [case.request for case in cases]
    prompts = [(r.template, r.subject) for r in requests]
    targets = optimise_targets(loaded, requests, layers[-1], engine.contexts, settings.target,
                               use_neighbours=False, sensitivity=sensitivity).z
    spread_settings = settings.spread

    def per_layer(prompt: tuple[str, str], target):  # noqa: ANN001, ANN202
        update, _, _ = spread(loaded, [prompt], target.unsqueeze(0), layers, engine.contexts,
                              engine.layer_contexts, spread_settings)
        return update

    spreads = {f"{name}, layer by layer": per_layer}
    lam = None
    if scales:
        moment = joint_moment_for(loaded, layers, corpus.texts, data_home() / "stats",
                                  token_budget=args.joint_tokens)
        moment = shrunk_blocks(moment, [engine.statistics[layer].key_size for layer in layers],
                               spread_settings.second_moment_shrinkage,
                               spread_settings.second_moment_shrinkage_target)
        lam = joint_lambda({layer: engine.statistics[layer] for layer in layers}, moment,
                           spread_settings.update_fraction)
    for scale in scales:
        joint = JointSpread.build(loaded, layers, moment, lam * scale)
        spreads[f"joint, lambda x{scale:g}"] = (
            lambda prompt, target, joint=joint: joint.spread(loaded, [prompt],
                                                             target.unsqueeze(0),
                                                             engine.contexts)[0])
    # From the corpus's end: F and the statistics were measured on tokens from its start.
    probe = TextProbe(loaded, layers[-1], corpus.texts[::-1], token_budget=args.harm_tokens)
    costs = spread_costs(loaded, prompts, targets, probe, sensitivity, spreads)
    rows = coupling_rows(costs)
    joint = f"; joint lambda {lam:.4g}" if lam is not None else ""
    print(f"{args.dataset}, records {args.skip + 1}-{args.skip + len(requests)}, each fact "
          f"spread alone at layers {layers[0]}-{layers[-1]} of {loaded.name}{joint}")
    print(format_coupling(rows))
    if args.json:
        write_json(args.json, {"dataset": args.dataset, "n": len(requests), "skip": args.skip,
                               "layers": layers, "joint_lambda": lam,
                               **coupling_json(costs, rows)})
    return 0


def run_coupling_report(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench coupling-report``."""
    import json

    from factsync.bench.layer_coupling import coupling_rows, format_coupling, saved_method_costs

    labels = [str(path) for path in args.runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"a run is named twice: {labels}")
    runs = {label: json.loads(path.read_text()) for label, path in zip(labels, args.runs,
                                                                        strict=True)}
    for label, run in runs.items():
        print(f"{label}: {run['spreads'][0]['name']}, layers {run['layers']}")
    print(format_coupling(coupling_rows(saved_method_costs(runs))))
    return 0
