"""``factsync bench lifelong``: a long stream of edit jobs on one model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from factsync.commands.bench.inputs import (
    add_record_options,
    add_skip_option,
    fluency_texts,
    records_after_skip,
    records_path,
)
from factsync.commands.options import (
    POLICY_METHODS_NOTE,
    add_engine_options,
    add_executor_options,
    add_model_options,
    engine_settings,
    executor_from_args,
    load,
    statistics_settings,
)
from factsync.durable import write_json

if TYPE_CHECKING:
    from factsync.bench.lifelong import LifelongRun
    from factsync.bench.lifelong_scoring import Yardstick
    from factsync.editing.requests import EditRequest
    from factsync.evaluation.cases import EvalCase
    from factsync.models.loading import LoadedModel


def register(sub: argparse._SubParsersAction) -> None:
    """Add the lifelong benchmark and its report of saved runs."""
    _register_lifelong(sub)
    _register_report(sub)
    _register_canaries(sub)


def _register_lifelong(sub: argparse._SubParsersAction) -> None:
    lifelong = sub.add_parser(
        "lifelong",
        help="thousands of facts in sequential jobs on one model: what stays kept as they "
        "pile up",
        description="Feed --n records to each method in sequential jobs of --batch facts on "
        "one model, as the daemon applies them (edit, apply, remember), and every "
        "--checkpoint-every facts (and at the end) score every fact applied so far: "
        "efficacy and paraphrase (retention), held-out neighbours, perplexity ratio on the "
        "fluency texts (and on --held-out-fluency), canary facts (records after the edited "
        "ones that the unedited model knows, and the daemon's built-in canaries it states), "
        "the norm growth of each edited weight and editing seconds per fact. "
        "Prints the final metrics with 95% bootstrap intervals beside the unedited model; "
        "--json is rewritten after every checkpoint. The records prepared on the unedited "
        "model and its measurement are kept in $FACTSYNC_HOME/bench/prepared, so a later "
        "run of the same records and texts (other methods, or one continued) starts at its "
        "first job.",
    )
    add_record_options(lifelong, records=1000)
    add_skip_option(lifelong)
    lifelong.add_argument("--checkpoint-every", type=int, default=100,
                          help="facts applied between checkpoints (100)")
    lifelong.add_argument("--methods", default="default,memit",
                          help="comma-separated methods: default (the daemon's default "
                          "policy), default+alphaedit (the same, spread by AlphaEdit), "
                          "default+hold-superseded (holding a subject's earlier keys when "
                          "it is written again), memit, memit+ime, memit+ime+nme, "
                          "alphaedit+ime+nme, or the path of a policy file (.yaml) whose "
                          "editing settings to use (default,memit)")
    lifelong.add_argument("--held-out-fluency", type=Path, metavar="FILE",
                          help="also measure the perplexity ratio, with its 95%% interval, "
                          "on these texts (--fluency's format) at every checkpoint: a set "
                          "far larger than the fluency texts, such as the one "
                          "scripts/fortunes-corpus --held-out writes, resolves differences "
                          "of about 1%%; costs one pass over it per checkpoint (default: "
                          "not measured)")
    lifelong.add_argument("--neighbours", type=int, default=3,
                          help="NME neighbours per fact (3)")
    lifelong.add_argument("--contrast", type=int, default=0, metavar="N",
                          help="also hold N contrast neighbours per fact: facts of its "
                          "relation with another object, lent by other records' "
                          "neighbourhoods (spare records first) and then not scored (0)")
    lifelong.add_argument("--canaries", type=int, default=50,
                          help="records after the edited ones tried as canary facts (50)")
    lifelong.add_argument("--refuse-canary-loss", action="store_true",
                          help="refuse the facts whose edit loses a canary, as a policy gate "
                          "on canaries would: a job that loses one that the model held "
                          "before it is undone and its facts tried again in halves, down to "
                          "single facts; a refused fact stays unedited, counts against "
                          "efficacy and paraphrase, and is listed under the tables "
                          "(default: every job is applied)")
    lifelong.add_argument("--repair-canaries", action="store_true",
                          help="gate jobs on canaries as --refuse-canary-loss does, but "
                          "first try a job that loses canaries once more with their facts "
                          "in it, stated again with the objects the model held: kept when "
                          "it then loses none, halved otherwise. The canaries repaired are "
                          "listed under the tables; bench lifelong-canaries --well-known "
                          "reads facts no repair touches")
    lifelong.add_argument("--refresh-worn", type=int, default=0, metavar="N",
                          help="before each job, check N applied facts (a window that moves "
                          "on by N each job) by the took rule their edit passed, and state "
                          "those that no longer pass it again in the job, with the standing "
                          "facts of every subject the job writes (it lets go of their keys); "
                          "a fact whose latest edit did not take is not checked. How many "
                          "were stated again is printed under the tables (default 0: none "
                          "checked)")
    lifelong.add_argument("--json", type=Path,
                          help="write the numbers to this file after every checkpoint")
    lifelong.add_argument("--plot", type=Path, help="draw the metrics against facts (PNG), "
                          "redrawn after every checkpoint")
    lifelong.add_argument("--change-back", type=int, default=0, metavar="N",
                          help="after the stream, change the facts of the first N records "
                          "back to their old objects, in jobs of --batch, as a feed reverting "
                          "them would, and measure those records against their old objects "
                          "and the rest as a checkpoint does; default+hold-superseded sets "
                          "the engine before it let go of a subject's earlier keys beside it "
                          "(0: none; not with --state)")
    lifelong.add_argument("--state", type=Path, metavar="DIR",
                          help="keep what the run needs to continue in DIR after every "
                          "job (the checkpoints so far, and each method's applied deltas and "
                          "engine state); a run stopped midway and started again with the "
                          "same arguments and DIR goes on from the last job it saved")
    lifelong.add_argument("--keep-every", type=int, metavar="FACTS",
                          help="with --state, also keep each method's composed delta, engine "
                          "state and progress every FACTS facts in DIR/kept, for bench damage "
                          "--since and --branch-from (default: only the latest)")
    lifelong.add_argument("--branch-from", type=Path, metavar="RUN",
                          help="with --state and --branch-at, start the run where the run "
                          "saved in directory RUN stood after --branch-at facts (it must have "
                          "kept that point, --keep-every), and go on with --methods from "
                          "there: the same history, other editing after it. The arguments "
                          "must be RUN's but for --methods (one per method of RUN) and "
                          "--checkpoint-every")
    lifelong.add_argument("--branch-at", type=int, metavar="FACTS",
                          help="the facts applied at the point --branch-from starts from")
    add_model_options(lifelong)
    add_engine_options(lifelong, POLICY_METHODS_NOTE)
    add_executor_options(lifelong)
    lifelong.set_defaults(handler=run_lifelong_bench, computes=True)


def run_lifelong_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench lifelong``."""
    from dataclasses import replace

    import torch

    from factsync.bench.canary_facts import daemon_canaries, pick_canaries
    from factsync.bench.lifelong import (
        checkpoint_facts,
        chosen_methods,
        edit_layers,
        measure_unedited,
        run_lifelong,
    )
    from factsync.bench.lifelong_report import format_changed_back
    from factsync.bench.lifelong_resume import RunDirectory
    from factsync.bench.lifelong_scoring import Yardstick
    from factsync.bench.prepared_runs import Preparation, PreparationInputs, PreparedRuns
    from factsync.editing.build import build_engine, per_method_inputs
    from factsync.evaluation.suites import load_cases, prepare_suite
    from factsync.models.scoring import scoring_progress

    checkpoint_facts(args.n, args.batch, args.checkpoint_every)  # bad sizes fail before loading
    for option, value in (("--canaries", args.canaries), ("--refresh-worn", args.refresh_worn)):
        if value < 0:
            raise ValueError(f"{option} must not be negative, got {value}")
    if not 0 <= args.change_back <= args.n:
        raise ValueError(f"--change-back must be between 0 and --n ({args.n}), "
                         f"got {args.change_back}")
    if args.change_back and args.state:
        raise ValueError("--change-back cannot be combined with --state: a saved run does "
                         "not keep the measurement after changing facts back")
    # A saved run with other arguments is refused before the long preparation.
    if args.keep_every is not None and (args.keep_every < 1 or not args.state):
        raise ValueError("--keep-every needs --state and a positive number of facts")
    if (args.branch_from is None) != (args.branch_at is None) or (
            args.branch_from is not None and not args.state):
        raise ValueError("--branch-from and --branch-at go together, with --state")
    base = engine_settings(args, neighbours=False)
    methods = chosen_methods(args.methods, base, args.max_iterations)
    store = (RunDirectory(args.state, _run_arguments(args), keep_every=args.keep_every)
             if args.state else None)
    if args.branch_from is not None:
        store.branch(args.branch_from, args.branch_at, list(methods))
    saved = store.load() if store is not None else None
    if saved is not None:
        print(f"continuing the run saved in {args.state}", flush=True)
    torch.manual_seed(args.seed)
    data = records_path(args, args.dataset)
    texts = fluency_texts(args.fluency)
    held_out = fluency_texts(args.held_out_fluency) if args.held_out_fluency else []
    cases = records_after_skip(load_cases(args.dataset, data), args.skip, args.n, data)
    loaded = load(args)
    layers = edit_layers(loaded, methods)
    engine = build_engine(loaded, replace(base, layers=layers), statistics_settings(args))
    sensitivities, joint_moments = per_method_inputs(loaded, methods, statistics_settings(args))
    inputs = PreparationInputs(
        fingerprint=loaded.fingerprint, device=loaded.device.type, dtype=args.dtype,
        dataset=args.dataset, cases=cases[: args.n], neighbours=args.neighbours,
        contrast=args.contrast,
        canary_candidates=[case.request for case in cases[args.n : args.n + args.canaries]],
        fluency_texts=texts, held_out_texts=held_out, seed=args.seed)
    preparations = PreparedRuns()
    preparation = preparations.load(inputs)
    if preparation is None:
        with scoring_progress("preparing the records"):
            suite = prepare_suite(loaded, args.dataset, inputs.cases,
                                  neighbours_per_fact=args.neighbours,
                                  contrast_per_fact=args.contrast, spare=cases[args.n :])
            yardstick = Yardstick.prepare(
                loaded, suite, pick_canaries(loaded, inputs.canary_candidates), texts,
                seed=args.seed, stated_canaries=daemon_canaries(loaded, inputs.cases),
                held_out_texts=held_out)
        if saved is not None:
            unedited = saved.unedited
        else:
            with scoring_progress("measuring the unedited model"):
                unedited = measure_unedited(loaded, yardstick, methods)
        preparation = Preparation(yardstick, unedited)
        preparations.save(inputs, preparation)
    yardstick = preparation.yardstick

    def save(run: LifelongRun) -> None:
        """Keep the report and plot of every checkpoint so far, so a stopped run has them."""
        _write_report(run, args.json, args.plot)

    print(f"{args.dataset}, {args.n} records in jobs of {args.batch}, model {loaded.name}, "
          f"layers {','.join(map(str, layers))}, {len(yardstick.canaries)} canaries from the "
          f"{len(inputs.canary_candidates)} records after the edited ones and "
          f"{len(yardstick.stated_canaries)} of the daemon's built-in canaries", flush=True)
    executor = executor_from_args(args)
    try:
        with scoring_progress("scoring"):
            run = run_lifelong(loaded, yardstick, methods, statistics=engine.statistics,
                               contexts=engine.contexts, batch_size=args.batch,
                               checkpoint_every=args.checkpoint_every,
                               on_checkpoint=save, executor=executor,
                               store=store, change_back=args.change_back,
                               sensitivities=sensitivities, joint_moments=joint_moments,
                               unedited=preparation.unedited,
                               refuse_canary_loss=args.refuse_canary_loss,
                               canary_repairs=(_canary_repairs(loaded, yardstick, inputs.cases)
                                               if args.repair_canaries else ()),
                               refresh_worn=args.refresh_worn)
    finally:
        executor.close()
    _print_tables(run)
    if args.change_back:
        print()
        print(format_changed_back(run))
    return 0


def _register_report(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "lifelong-report",
        help="the tables, JSON and plot of runs saved by bench lifelong --state",
        description="Print the report bench lifelong prints at its end from one or more "
        "run directories it saved (--state), stopped or finished, or reports it wrote "
        "(--json): every method that reached a checkpoint. Several runs are one report "
        "when they are runs of the same records (the same dataset, --n and --batch, and "
        "an equal unedited measurement), such as a later run of a new method beside an "
        "earlier run's; anything else is refused. A --json report keeps the intervals of "
        "its final checkpoint only. Runs no model.",
    )
    report.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                        help="a directory bench lifelong --state saved a run in, or a "
                        "report file bench lifelong --json wrote")
    report.add_argument("--json", type=Path, help="write the numbers to this file, in "
                        "bench lifelong --json's shape")
    report.add_argument("--plot", type=Path, help="draw the metrics against facts (PNG)")
    report.set_defaults(handler=run_lifelong_report)


def run_lifelong_report(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench lifelong-report``."""
    from factsync.bench.lifelong_merge import merge_runs
    from factsync.bench.lifelong_resume import read_run

    run = merge_runs({str(path): read_run(path) if path.is_dir() else _read_report(path)
                      for path in args.runs})
    if not run.methods:
        raise ValueError("no method in these runs has reached a checkpoint yet")
    _print_tables(run)
    _write_report(run, args.json, args.plot)
    return 0


def _register_canaries(sub: argparse._SubParsersAction) -> None:
    canaries = sub.add_parser(
        "lifelong-canaries",
        help="the daemon's canaries after each delta a bench lifelong run kept",
        description="Apply each composed delta a bench lifelong --state run saved (those "
        "--keep-every kept and the latest), one at a time, and print per daemon canary "
        "(the built-in facts the unedited model states, those the stream rewrites included, "
        "which bench lifelong leaves out of its canary row) the mean NLL of its object, "
        "starred where the model no longer states it: which canary a stream lost, when, "
        "and whether at once or by a slow drift. Load the model the run edited.",
    )
    canaries.add_argument("run", type=Path, metavar="DIR",
                          help="a directory bench lifelong --state saved a run in")
    canaries.add_argument("--method", help="the method to read (default: every method "
                          "of the run, one table each)")
    canaries.add_argument("--json", type=Path, help="also write the readings to this file")
    canaries.add_argument("--well-known", action="store_true",
                          help="read the built-in guard facts the unedited model states "
                          "instead, leaving out those the run's records rewrite: "
                          "well-known facts that no canary gate reads or repairs, so "
                          "they show the harm a --repair-canaries run hides from its "
                          "canary row (a policy that holds guard facts holds them)")
    add_model_options(canaries)
    canaries.set_defaults(handler=run_lifelong_canaries, computes=True)


def run_lifelong_canaries(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench lifelong-canaries``."""
    from factsync.bench.canary_facts import daemon_canaries, well_known_facts
    from factsync.bench.canary_trajectory import canary_trajectory, format_trajectory
    from factsync.bench.lifelong_resume import saved_arguments, saved_deltas

    deltas = saved_deltas(args.run)
    if args.method is not None:
        if args.method not in deltas:
            raise ValueError(f"{args.run} has no method {args.method!r}; it has "
                             f"{', '.join(deltas) or 'none'}")
        deltas = {args.method: deltas[args.method]}
    loaded = load(args)
    if args.well_known:
        canaries = well_known_facts(loaded, _edited_cases(saved_arguments(args.run)))
    else:
        canaries = daemon_canaries(loaded)
    numbers = {"canaries": [list(pair) for pair in canaries], "methods": {}}
    for name, files in deltas.items():
        readings = canary_trajectory(loaded, canaries, files)
        print(f"{name}, mean NLL of each canary's object by facts applied (* no longer "
              f"stated):\n{format_trajectory(canaries, readings)}\n", flush=True)
        numbers["methods"][name] = [reading.to_json() for reading in readings]
    if args.json:
        write_json(args.json, numbers)
    return 0


def _canary_repairs(loaded: LoadedModel, yardstick: Yardstick,
                    cases: list[EvalCase]) -> list[EditRequest]:
    """Per canary of ``yardstick``, in ``Yardstick.canary_names`` order, the edit that
    states it again (``canary_facts.canary_repairs``)."""
    from factsync.bench.canary_facts import canary_repairs, daemon_canary_facts

    stated = daemon_canary_facts(loaded, cases)
    if [(t.format(s), o) for t, s, o in stated] != [tuple(p) for p in yardstick.stated_canaries]:
        raise ValueError("the daemon canaries this model states are not those the prepared "
                         "records hold; prepare them again (remove the cached preparation)")
    return canary_repairs(yardstick.canaries, stated)


def _edited_cases(arguments: dict) -> list[EvalCase]:
    """The records a ``bench lifelong`` run saved with ``arguments`` edits."""
    from factsync.evaluation.datasets import default_dataset_path
    from factsync.evaluation.suites import load_cases

    dataset = arguments["dataset"]
    data = Path(arguments["data"]) if arguments.get("data") else default_dataset_path(dataset)
    if data is None:
        raise ValueError(f"the run edited the shared {dataset} records, which are not here")
    skip = arguments.get("skip", 0)
    return records_after_skip(load_cases(dataset, data), skip, arguments["n"], data)[
        : arguments["n"]]


def _print_tables(run: LifelongRun) -> None:
    """The final metrics, each method's checkpoints, what the canary gate and the
    refreshing of worn facts did, if anything, and the fluency texts read job by job."""
    from factsync.bench.lifelong_report import (
        format_checkpoints,
        format_fluency_by_job,
        format_interventions,
        format_table,
    )

    print(format_table(run))
    print()
    print(format_checkpoints(run))
    for extra in (format_interventions(run), format_fluency_by_job(run)):
        if extra:
            print()
            print(extra)


def _read_report(path: Path) -> LifelongRun:
    """The run in a ``bench lifelong --json`` report file."""
    import json

    from factsync.bench.lifelong_report import from_json

    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the report {path}: {exc}") from exc


def _write_report(run: LifelongRun, json_path: Path | None, plot_path: Path | None) -> None:
    """Write ``run``'s JSON report and its plot where asked."""
    from factsync.bench.lifelong_plot import draw_plot
    from factsync.bench.lifelong_report import to_json

    if json_path:
        write_json(json_path, to_json(run))
    if plot_path:
        draw_plot(run, plot_path)


# Options that change where a run's results go or where its work runs, not the results.
_NOT_THE_RUN = {"handler", "computes", "json", "plot", "state", "keep_every", "branch_from",
                "branch_at", "log_level",
                "log_json", "executor", "ray_workers", "ray_address", "ray_cpus_per_worker",
                "ray_gpus_per_worker"}


# Options added after runs were saved, with the value those runs had: left out at that
# value, so a run saved before the option existed can still be continued.
_ADDED_LATER = {"skip": 0, "contrast": 0, "refuse_canary_loss": False,
                "repair_canaries": False, "refresh_worn": 0, "corpus_top_k": 50,
                "corpus_sampled_share": 0.0}


def _run_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The arguments that make two ``bench lifelong`` runs the same run."""
    return {name: _plain(value) for name, value in sorted(vars(args).items())
            if name not in _NOT_THE_RUN
            and not (name in _ADDED_LATER and value == _ADDED_LATER[name])}


def _plain(value: object) -> object:
    """``value`` as JSON can hold it: paths, alone or in a list, as strings."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
