"""``factsync bench statistics-fit``: how well the key statistics stand for given text."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.commands.bench.inputs import (
    add_data_options,
    add_fluency_option,
    fluency_texts,
    records_path,
)
from factsync.commands.options import (
    add_corpus_options,
    add_model_options,
    edit_layers,
    load,
    statistics_settings,
)
from factsync.durable import write_json
from factsync.evaluation.datasets import DATASETS


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench statistics-fit``."""
    fit = sub.add_parser(
        "statistics-fit",
        help="how well the key statistics, shrunk or not, stand for the fluency texts",
        description="Read each edit layer's key second moment C (over the statistics "
        "corpus: model-sampled, or --corpus-files) as a zero-mean Gaussian and print how "
        "well it fits the keys of every token of the fluency texts: the mean k^T C^-1 k "
        "per key dimension (1 when C stands for them, above 1 when they lean on "
        "directions C holds weak) and the Gaussian fit, (k^T C^-1 k + log det C) / 2 per "
        "key dimension, constants left out (lower is better; it cannot be lowered by "
        "inflating C). Each --shrinkage weight is tried toward each --targets, and "
        "compared with C as sampled, paired over the texts with 95% bootstrap "
        "intervals. Run it again with other --corpus-files to compare corpora on the "
        "same texts: text like what the model serves tells which statistics and "
        "second_moment_shrinkage a policy should use. With --n, also price real edits: "
        "for the bare-prompt key k of each of the first --n records' subjects, the harm "
        "MEMIT's update along C^-1 k does to the texts' keys, over the least harm any "
        "update making the same change at k can do (1 when C stands for the texts), "
        "as a geometric mean over the keys.",
    )
    add_fluency_option(fit)
    fit.add_argument("--layers", default=None,
                     help="comma-separated layers (default: the model's default edit window)")
    fit.add_argument("--shrinkage", default="0.05,0.1,0.25,0.5",
                     help="comma-separated shrinkage weights in (0, 1) to try (default: "
                     "0.05,0.1,0.25,0.5)")
    fit.add_argument("--targets", default="isotropic,diagonal",
                     help="comma-separated shrinkage targets: isotropic, diagonal (default: "
                     "both)")
    fit.add_argument("--dataset", choices=DATASETS, default="counterfact",
                     help="record format of --data (counterfact)")
    add_data_options(fit)
    fit.add_argument("--n", type=int, default=0,
                     help="records whose edits to price (0: none). Needs at least 10 "
                     "tokens of fluency text per key dimension, "
                     "such as the 600 held-out texts scripts/fortunes-corpus --held-out "
                     "writes; the 50 shared fluency texts are too few")
    fit.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(fit)
    add_corpus_options(fit)
    fit.set_defaults(handler=run_statistics_fit_bench, computes=True)


def run_statistics_fit_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench statistics-fit``."""
    from factsync.bench.statistics_fit import (
        Shrinkage,
        edit_excess,
        format_excess,
        format_fit,
        statistics_fit,
    )
    from factsync.editing.build import layer_statistics, statistics_corpus
    from factsync.editing.covariance import ShrinkageTarget
    from factsync.editing.keys import subject_states_by_layer
    from factsync.evaluation.suites import load_cases

    weights = [float(part) for part in args.shrinkage.split(",") if part.strip()]
    bad = [weight for weight in weights if not 0 < weight < 1]
    if bad:
        raise ValueError(f"--shrinkage weights must be in (0, 1), got {bad}")
    if args.n < 0:
        raise ValueError(f"--n must not be negative, got {args.n}")
    targets = [ShrinkageTarget.parse(part.strip(), "--targets")
               for part in args.targets.split(",") if part.strip()]
    texts = fluency_texts(args.fluency)
    cases = []
    if args.n:
        data = records_path(args, args.dataset)
        cases = load_cases(args.dataset, data, limit=args.n)
        if len(cases) < args.n:
            raise ValueError(f"{data} holds {len(cases)} records; --n asks for {args.n}")
    loaded = load(args)
    layers = list(edit_layers(args) or loaded.default_layers)
    settings = statistics_settings(args)
    corpus = statistics_corpus(loaded, layers, settings)
    statistics = layer_statistics(loaded, layers, settings, corpus=corpus)
    shrinkages = [Shrinkage(target, weight) for target in targets for weight in weights]
    fit = statistics_fit(loaded, statistics, texts, shrinkages)
    rows = fit.rows
    source = settings.source()
    print(f"{loaded.name}: key statistics over {corpus.token_budget} tokens of {source}, "
          f"fitted to the keys of {len(texts)} fluency texts")
    print(format_fit(rows))
    numbers = {"corpus": source, "token_budget": corpus.token_budget, "texts": len(texts),
               "rows": [row.to_json() for row in rows]}
    if cases:
        prompts = [(case.request.template, case.request.subject) for case in cases]
        states = subject_states_by_layer(loaded, prompts, layers, max(layers), [""])
        keys = {layer: states[layer].keys.T for layer in layers}  # (records, key)
        excess = edit_excess(statistics, fit.texts, keys, shrinkages)
        print(f"\nexcess harm of the edits of {len(cases)} {args.dataset} records' subjects "
              "on the texts (1: the least any update could do)")
        print(format_excess(excess))
        numbers["edit_records"] = len(cases)
        numbers["excess"] = [row.to_json() for row in excess]
    if args.json:
        write_json(args.json, numbers)
    return 0
