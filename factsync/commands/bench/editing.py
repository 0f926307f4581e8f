"""``factsync bench`` for the engine: edit quality and speed of its stages."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

from factsync.commands.bench.inputs import (
    add_data_options,
    add_fluency_option,
    add_measured_records_options,
    add_record_options,
    fluency_texts,
    measured_records,
    positive_list,
    records_path,
)
from factsync.commands.options import (
    POLICY_METHODS_NOTE,
    add_corpus_options,
    add_engine_options,
    add_executor_options,
    add_model_options,
    engine_settings,
    executor_from_args,
    load,
    statistics_settings,
)
from factsync.durable import write_json
from factsync.evaluation.datasets import dataset_spec


def register(sub: argparse._SubParsersAction) -> None:
    """Add the engine benchmarks: counterfact, zopt, budget, solve, damage, fluency and
    shifts."""
    _register_counterfact(sub)
    _register_zopt(sub)
    _register_budget(sub)
    _register_solve(sub)
    _register_damage(sub)
    _register_fluency(sub)
    _register_shifts(sub)


def _register_counterfact(sub: argparse._SubParsersAction) -> None:
    counterfact = sub.add_parser(
        "counterfact",
        help="editing methods side by side on COUNTERFACT or ZsRE records",
        description="Edit the same COUNTERFACT or ZsRE records with memit, memit+ime, "
        "memit+ime+nme and alphaedit+ime+nme (sequential batches on one model) and print "
        "efficacy, paraphrase and neighbourhood (success and accuracy) with their 95% "
        "bootstrap intervals over records, perplexity ratio, mean IME passes and seconds, "
        "with the unedited model as a reference row.",
    )
    add_record_options(counterfact, records=100)
    counterfact.add_argument(
        "--neighbours", type=int, default=1, help="NME neighbours per fact (1)"
    )
    counterfact.add_argument("--methods", help="comma-separated subset of the methods")
    counterfact.add_argument("--json", type=Path, help="also write the numbers to this file")
    counterfact.add_argument("--against-dtype", choices=["float32", "bfloat16", "float16"],
                             help="first run the same records in this dtype, then print "
                             "how far each method's means in --dtype are from it")
    counterfact.add_argument("--paired-against", metavar="METHOD",
                             help="also print every other method's difference from METHOD "
                             "on each metric: the mean of per-record differences with its "
                             "paired 95%% bootstrap interval (e.g. memit+ime, to see what "
                             "NME changes)")
    add_model_options(counterfact)
    add_engine_options(counterfact)
    add_executor_options(counterfact)
    counterfact.set_defaults(handler=run_counterfact_bench, computes=True)


def run_counterfact_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench counterfact``."""
    import torch

    from factsync.bench.counterfact import (
        against_baseline,
        against_method,
        differences_json,
        format_differences,
        format_table,
        run_counterfact,
        standard_methods,
        to_json,
    )
    from factsync.editing.build import build_engine, methods_joint_moment, methods_sensitivity
    from factsync.evaluation.datasets import load_cases
    from factsync.models.scoring import scoring_progress

    base = engine_settings(args, neighbours=False)
    methods = standard_methods(base, args.max_iterations)
    if args.methods:
        unknown = set(args.methods.split(",")) - set(methods)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {sorted(methods)}")
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    if args.paired_against and args.paired_against not in methods:
        raise ValueError(f"--paired-against {args.paired_against!r} is not among the methods "
                         f"run: {', '.join(methods)}")
    # Records past the first n are read as spares that may lend editing neighbours.
    records = load_cases(args.dataset, records_path(args, args.dataset))
    cases = records[: args.n]
    texts = fluency_texts(args.fluency)
    tables = {}
    for dtype in filter(None, (args.against_dtype, args.dtype)):
        torch.manual_seed(args.seed)
        run_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
        loaded = load(run_args)
        engine = build_engine(loaded, base, statistics_settings(args))
        sensitivity = methods_sensitivity(loaded, methods.values(), engine.layers,
                                          statistics_settings(args))
        joint_moment = methods_joint_moment(loaded, methods.values(), engine.layers,
                                            statistics_settings(args))
        executor = executor_from_args(run_args)
        try:
            with scoring_progress("scoring"):
                tables[dtype] = run_counterfact(
                    loaded, cases, methods, statistics=engine.statistics,
                    contexts=engine.contexts, fluency_texts=texts, batch_size=args.batch,
                    neighbours_per_fact=args.neighbours, dataset=args.dataset,
                    spare=records[args.n :], executor=executor, sensitivity=sensitivity,
                    joint_moment=joint_moment)
        finally:
            executor.close()
        print(f"{dataset_spec(args.dataset).title}, {len(cases)} records, batches of "
              f"{args.batch}, model {loaded.name} in {dtype}, layers "
              f"{','.join(map(str, engine.layers))}, lambdas "
              f"{', '.join(f'{v:.0f}' for v in engine.lambdas().values())}")
        print(format_table(tables[dtype]))
        del loaded, engine
    pairs = {}
    if args.against_dtype:
        pairs["against_dtype"] = against_baseline(tables[args.against_dtype], tables[args.dtype])
        print(f"\n{args.dtype} against {args.against_dtype}, the same records paired: mean "
              "difference [95% interval], and the largest difference of a mean")
        print(format_differences(pairs["against_dtype"]))
    if args.paired_against:
        pairs["paired_against"] = against_method(tables[args.dtype], args.paired_against)
        print(f"\nagainst {args.paired_against} in {args.dtype}, the same records paired: "
              "mean difference [95% interval], and the largest difference of a mean")
        print(format_differences(pairs["paired_against"]))
    if args.json:
        report = to_json(tables[args.dtype], len(cases), dataset=args.dataset) | {
            "dtype": args.dtype}
        if args.against_dtype:
            report["against"] = {"dtype": args.against_dtype, **to_json(
                tables[args.against_dtype], len(cases), dataset=args.dataset),
                "differences": differences_json(pairs["against_dtype"])}
        if args.paired_against:
            report["paired_against"] = {"method": args.paired_against,
                                        "differences": differences_json(pairs["paired_against"])}
        write_json(args.json, report)
    return 0


def _register_zopt(sub: argparse._SubParsersAction) -> None:
    zopt = sub.add_parser(
        "zopt",
        help="time batched z optimisation against one fact at a time",
        description="Optimise the target vectors of the same facts batched (padded batch, "
        "per-fact early stopping, frozen layers replayed) and one at a time, and print "
        "both times and the ratio.",
    )
    add_data_options(zopt)
    zopt.add_argument("--n", type=int, default=10, help="facts to optimise (10)")
    add_model_options(zopt)
    add_engine_options(zopt)
    zopt.set_defaults(handler=run_zopt_bench, computes=True)


def run_zopt_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench zopt``."""
    import torch

    from factsync.bench.zopt import format_timing, time_zopt
    from factsync.editing.build import engine_contexts
    from factsync.evaluation.counterfact import load_counterfact

    torch.manual_seed(args.seed)
    cases = load_counterfact(records_path(args), limit=args.n)
    loaded = load(args)
    settings = engine_settings(args, neighbours=False)
    layers = settings.edit_layers(loaded)
    timing = time_zopt(
        loaded, [c.request for c in cases], layers[-1], engine_contexts(loaded), settings.target
    )
    print(format_timing(timing))
    print(json.dumps(asdict(timing) | {"speedup": timing.speedup}))
    return 0


def _register_budget(sub: argparse._SubParsersAction) -> None:
    budget = sub.add_parser(
        "budget",
        help="edit quality against the token budget of the key statistics",
        description="Compute key statistics over the first N tokens of the model-sampled "
        "corpus for each budget, report their distance to the largest budget's and the "
        "derived lambda, and make the same single-pass MEMIT edits with each.",
    )
    add_data_options(budget)
    add_fluency_option(budget)
    budget.add_argument("--n", type=int, default=10, help="records to edit (10)")
    budget.add_argument("--batch", type=int, default=10, help="facts per edit job (10)")
    budget.add_argument(
        "--budgets",
        default="2500,5000,10000,20000",
        help="comma-separated token budgets; the largest is the reference and the corpus "
        "size (2500,5000,10000,20000)",
    )
    add_model_options(budget)
    add_engine_options(budget)
    budget.set_defaults(handler=run_budget_bench, computes=True)


def run_budget_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench budget``."""
    import torch

    from factsync.bench.budget import format_budget_table, run_budget_study
    from factsync.editing.build import engine_contexts
    from factsync.editing.corpus import model_corpus
    from factsync.evaluation.counterfact import load_counterfact
    from factsync.paths import data_home

    torch.manual_seed(args.seed)
    budgets = positive_list(args.budgets, "--budgets")
    data = records_path(args)
    cases = load_counterfact(data, limit=args.n)
    fluency = fluency_texts(args.fluency)
    loaded = load(args)
    texts = model_corpus(loaded, num_tokens=max(budgets), cache_dir=data_home() / "corpus")
    rows = run_budget_study(
        loaded,
        cases,
        budgets,
        texts=texts,
        settings=engine_settings(args, neighbours=False),
        contexts=engine_contexts(loaded),
        fluency_texts=fluency,
        batch_size=args.batch,
    )
    print(f"single-pass MEMIT on {len(cases)} COUNTERFACT records, model {loaded.name}")
    print(format_budget_table(rows))
    return 0


def _register_solve(sub: argparse._SubParsersAction) -> None:
    solve = sub.add_parser(
        "solve",
        help="MEMIT's per-layer solve: cached factor and Woodbury against a fresh solve",
        description="On a random positive definite system of each key size, time one "
        "layer's MEMIT solve done afresh (as every IME pass did before the factor was "
        "cached), the factorisation of lambda C + K_p K_p^T (once per layer and job) and "
        "one pass through it with the Woodbury identity; print both paths' seconds for a "
        "job and the largest difference between their deltas. No model is loaded.",
    )
    solve.add_argument("--key-sizes", default="1536,14336",
                       help="comma-separated key sizes: SmolLM2-135M's and an 8B "
                       "model's (1536,14336)")
    solve.add_argument("--keys", default="10,64",
                       help="comma-separated keys per job (10,64)")
    solve.add_argument("--passes", type=int, default=3, help="IME passes per job (3)")
    solve.add_argument("--layers", type=int, default=5, help="edit layers per job (5)")
    solve.add_argument("--device", default="cpu", help="torch device (cpu)")
    solve.set_defaults(handler=run_solve_bench, computes=True)


def run_solve_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench solve``."""
    import torch
    from tqdm import tqdm

    from factsync.bench.spread_solve import format_solve_table, time_solves

    sizes = positive_list(args.key_sizes, "--key-sizes")
    counts = positive_list(args.keys, "--keys")
    if args.passes < 1 or args.layers < 1:
        raise ValueError("--passes and --layers must be at least 1")
    cases = [(size, count) for size in sizes for count in counts]
    timings = [time_solves(size, count, device=args.device)
               for size, count in tqdm(cases, desc="solves", unit="case")]
    print(f"device {args.device}, {torch.get_num_threads()} torch threads, float64")
    print(format_solve_table(timings, args.passes, args.layers))
    return 0


def _register_damage(sub: argparse._SubParsersAction) -> None:
    damage = sub.add_parser(
        "damage",
        help="where a saved delta's harm to fluency comes from, layer by layer",
        description="Apply a saved delta (a bench lifelong --state method delta, or any "
        "delta file) to the unedited model and print per edited layer: its norm growth, "
        "the energy it adds to the layer's output on the key-statistics corpus (on the "
        "unedited model's keys, which MEMIT weighs, and on the keys the edited model "
        "makes), and the perplexity ratio with that layer's delta alone and with every "
        "other layer's; then the ratio of the whole delta against the product of the "
        "layers alone, and with --against, against another delta.",
    )
    damage.add_argument("delta", type=Path, help="the delta file (.safetensors)")
    damage.add_argument("--against", type=Path, metavar="DELTA",
                        help="also print the perplexity with the delta over that with this "
                        "other delta file, paired over the fluency texts (two runs compared)")
    damage.add_argument("--since", type=Path, metavar="EARLIER",
                        help="also split the delta at this earlier delta of the same stream "
                        "(its --state delta at an earlier job) and print the perplexity "
                        "ratio of each part alone, of the whole, and the whole over the "
                        "product of the parts, paired over the fluency texts: 1 when the "
                        "harms of the earlier and the later jobs add, above 1 when they "
                        "compound")
    damage.add_argument("--tokens", type=int, default=0, metavar="K",
                        help="also print the K fluency-text tokens whose NLL the delta raised "
                        "most, and the share of the net NLL change the top 5, 10, 20 and 50 "
                        "carry: whether a few tokens make the perplexity ratio (0: no)")
    add_fluency_option(damage)
    damage.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(damage)
    add_corpus_options(damage)
    damage.set_defaults(handler=run_damage_bench, computes=True)


TOKEN_SHARES = (5, 10, 20, 50)


def run_damage_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench damage``."""
    from factsync.bench.damage import (
        edited_layers,
        format_damage,
        interaction_since,
        measure_damage,
        perplexity_against,
    )
    from factsync.bench.token_damage import (
        format_token_damage,
        token_changes,
        token_damage_json,
    )
    from factsync.editing.build import layer_statistics, statistics_corpus
    from factsync.editing.delta import ModelDelta
    from factsync.evaluation.fluency import summed_nlls
    from factsync.evaluation.intervals import format_interval

    if args.tokens < 0:
        raise ValueError(f"--tokens must not be negative, got {args.tokens}")
    delta = ModelDelta.load(args.delta)
    other = ModelDelta.load(args.against) if args.against else None
    earlier = ModelDelta.load(args.since) if args.since else None
    texts = fluency_texts(args.fluency)
    loaded = load(args)
    layers = list(edited_layers(loaded, delta).values())
    settings = statistics_settings(args)
    corpus = statistics_corpus(loaded, layers, settings)
    statistics = layer_statistics(loaded, layers, settings, corpus=corpus)
    report = measure_damage(loaded, delta, statistics, corpus.texts, texts,
                            token_budget=corpus.token_budget)
    print(f"{args.delta} on {loaded.name}: {len(texts)} fluency texts, output changes over "
          f"{corpus.token_budget} tokens of the key-statistics corpus")
    print(format_damage(report))
    numbers = report.to_json()
    unedited, edited = summed_nlls(report.unedited_tokens), summed_nlls(report.edited_tokens)
    if other is not None:
        against = perplexity_against(loaded, edited, other, texts)
        print(f"against {args.against}: perplexity ratio {format_interval(against)} "
              "(paired over the fluency texts)")
        numbers["against"] = {"delta": str(args.against),
                              "perplexity_ratio": against.as_list()}
    if earlier is not None:
        split = interaction_since(loaded, delta, earlier, texts, base=unedited, whole=edited)
        print(f"since {args.since}: perplexity ratio of the earlier delta "
              f"{format_interval(split.earlier)}, of the part since "
              f"{format_interval(split.later)}, of the whole {format_interval(split.whole)}; "
              f"the whole over the product of the parts {format_interval(split.interaction)} "
              "(paired over the fluency texts; 1 when their harms add)")
        numbers["since"] = {"delta": str(args.since)} | split.to_json()
    if args.tokens:
        changes = token_changes(loaded, report.unedited_tokens, report.edited_tokens)
        print(format_token_damage(changes, TOKEN_SHARES, args.tokens))
        numbers["tokens"] = token_damage_json(changes, TOKEN_SHARES, args.tokens)
    if args.json:
        write_json(args.json, numbers)
    return 0


def _register_fluency(sub: argparse._SubParsersAction) -> None:
    fluency = sub.add_parser(
        "fluency",
        help="saved deltas' perplexity ratios side by side, paired against the first",
        description="Apply each saved delta alone to the unedited model and print its "
        "perplexity on the fluency texts over the unedited model's and, paired text by "
        "text, over the first delta's, each with its 95% bootstrap interval over the "
        "texts. With many texts (scripts/fortunes-corpus --held-out writes 50,000 tokens "
        "of them), this tells two runs apart early in a stream.",
    )
    fluency.add_argument("deltas", type=Path, nargs="+", metavar="DELTA",
                         help="delta files (.safetensors); the first is the reference")
    add_fluency_option(fluency)
    fluency.add_argument("--lead", action="store_true",
                         help="also read each delta at the start token that leads every "
                         "text: the NLL change of the first scored token (which only the "
                         "start positions predict) and of the later ones, and the "
                         "perplexity ratio with the edited layers' MLP outputs at the "
                         "start positions held to the unedited model's (one more pass "
                         "per delta)")
    fluency.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(fluency)
    fluency.set_defaults(handler=run_fluency_bench, computes=True)


def run_fluency_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench fluency``."""
    from factsync.bench.fluency_compare import compare_fluency, format_fluency

    missing = [str(path) for path in args.deltas if not path.is_file()]
    if missing:
        raise ValueError(f"no such delta files: {', '.join(missing)}")
    texts = fluency_texts(args.fluency)
    loaded = load(args)
    comparison = compare_fluency(loaded, args.deltas, texts, lead=args.lead)
    print(f"on {loaded.name}")
    print(format_fluency(comparison))
    if args.json:
        write_json(args.json, comparison.to_json())
    return 0


def _register_shifts(sub: argparse._SubParsersAction) -> None:
    shifts = sub.add_parser(
        "shifts",
        help="the target shifts z - h the optimisation asks for, as edits pile up",
        description="Optimise the targets of the same records on the model as loaded and "
        "with each --delta applied (a bench lifelong --state delta, say), and print per "
        "model the median |h| and |z - h| at the last edit layer, the mean cosine between "
        "two facts' shifts (with its 95% interval over facts), the share of their energy "
        "along their mean direction, and the optimisation's steps, reached "
        "probability and seconds per fact. Several methods are measured side by side, "
        "one row per method and model. Nothing is edited.",
    )
    add_measured_records_options(
        shifts, records=24, measured="records to optimise",
        method_help="whose target settings, named as bench lifelong --methods names them; "
        "several, comma-separated, are measured in turn on each model (default)")
    shifts.add_argument("--delta", type=Path, action="append", default=[], metavar="FILE",
                        help="also measure with this saved delta applied (repeatable)")
    shifts.add_argument("--sensitivity", action="store_true",
                        help="also report the median s^T F s / 2 of the shifts s, F the "
                        "unedited model's sensitivity at the layer over the key statistics' "
                        "corpus (computed once and cached): to second order, the nats per "
                        "token ordinary text would lose with a shift added at every token. "
                        "A method of the natural step rule needs it anyway")
    shifts.add_argument("--harm", action="store_true",
                        help="also spread each fact's target alone with the method's spread "
                        "and report the median and mean d^T F d / 2 of the change d it makes "
                        "to the last edit layer's output on ordinary text (the end of the key "
                        "statistics' corpus): to second order, the nats per token that fact's "
                        "edit costs ordinary text; and the same for each job of --batch "
                        "consecutive facts spread together, against the sum of its facts' "
                        "costs alone. Needs the key statistics and F")
    shifts.add_argument("--batch", type=int, default=10,
                        help="facts per job that --harm spreads together (10)")
    shifts.add_argument("--harm-tokens", type=int, default=4096, metavar="N",
                        help="ordinary-text tokens --harm averages over (4096)")
    shifts.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(shifts)
    add_engine_options(shifts, POLICY_METHODS_NOTE)
    shifts.set_defaults(handler=run_shifts_bench, computes=True)


def run_shifts_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench shifts``."""
    import torch

    from factsync.bench.fact_harm import TextProbe, edit_harms
    from factsync.bench.lifelong import chosen_methods
    from factsync.bench.target_shifts import ShiftReport, format_shifts, measure_shifts
    from factsync.editing.build import (
        build_engine,
        engine_contexts,
        layer_sensitivity,
        statistics_corpus,
    )
    from factsync.editing.delta import ModelDelta, applied
    from factsync.editing.engine import EditEngine
    from factsync.editing.requests import EditRequest

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.n < 2:
        raise ValueError(f"--n must be at least 2 (shifts are compared between facts), "
                         f"got {args.n}")
    methods = chosen_methods(args.method, engine_settings(args, neighbours=False),
                             args.max_iterations)
    deltas = [(str(path), ModelDelta.load(path)) for path in args.delta]
    torch.manual_seed(args.seed)
    cases = measured_records(args)
    loaded = load(args)
    edited = {tuple(settings.edit_layers(loaded)) for settings in methods.values()}
    if len(edited) > 1:
        raise ValueError(f"the methods {args.method!r} edit different layers; compare "
                         "them apart")
    (layers,) = edited
    layer = layers[-1]
    contexts = engine_contexts(loaded)
    requests = [case.request for case in cases]
    wanted = (args.sensitivity or args.harm
              or any(s.target.needs_sensitivity for s in methods.values()))
    sensitivity = (layer_sensitivity(loaded, list(layers), statistics_settings(args))
                   if wanted else None)
    harm_of = {name: None for name in methods}
    if args.harm:
        corpus = statistics_corpus(loaded, list(layers), statistics_settings(args))
        # From the corpus's end: F was measured on tokens from its start.
        probe = TextProbe(loaded, layer, corpus.texts[::-1], token_budget=args.harm_tokens)

        def harms(engine: EditEngine, requests: list[EditRequest],
                  targets: torch.Tensor) -> tuple[list[float], list[float]]:
            before = probe.hidden()  # one read of the model serves both groupings
            return (edit_harms(engine, requests, targets, probe, sensitivity, before=before),
                    edit_harms(engine, requests, targets, probe, sensitivity, before=before,
                               together=args.batch))

        for name, settings in methods.items():
            harm_of[name] = partial(harms, build_engine(loaded, settings,
                                                        statistics_settings(args)))

    def measured(label: str) -> list[ShiftReport]:
        return [measure_shifts(loaded, requests, layer, contexts, settings.target,
                               label=label if len(methods) == 1 else f"{name}, {label}",
                               sensitivity=sensitivity, harm_of=harm_of[name])
                for name, settings in methods.items()]

    reports = measured("unedited")
    for label, delta in deltas:
        with applied(loaded, delta):
            reports += measured(label)
    print(f"{args.dataset}, records {args.skip + 1}-{args.skip + len(requests)}, "
          f"{args.method} targets at layer {layer} of {loaded.name}")
    print(format_shifts(reports))
    if args.json:
        write_json(args.json, {"dataset": args.dataset, "n": len(requests), "skip": args.skip,
                               "layer": layer, "models": [r.to_json() for r in reports]})
    return 0

