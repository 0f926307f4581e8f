"""``factsync bench``: side-by-side benchmarks that print comparison tables."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
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
from factsync.daemon.config import ExportConfig
from factsync.durable import write_json
from factsync.evaluation.counterfact import default_data_dir
from factsync.evaluation.datasets import DATASETS, dataset_spec, default_dataset_path

FLUENCY_FILE = Path("fluency") / "me-ppl-50.json"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command group."""
    parser = commands.add_parser("bench", help="benchmarks that print comparison tables")
    sub = parser.add_subparsers(title="benchmarks", metavar="BENCHMARK")

    counterfact = sub.add_parser(
        "counterfact",
        help="editing methods side by side on COUNTERFACT or ZsRE records",
        description="Edit the same COUNTERFACT or ZsRE records with memit, memit+ime, "
        "memit+ime+nme and alphaedit+ime+nme (sequential batches on one model) and print "
        "efficacy, paraphrase and neighbourhood (success and accuracy) with their 95% "
        "bootstrap intervals over records, perplexity ratio, mean IME passes and seconds, "
        "with the unedited model as a reference row.",
    )
    _add_record_options(counterfact, records=100)
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

    zopt = sub.add_parser(
        "zopt",
        help="time batched z optimisation against one fact at a time",
        description="Optimise the target vectors of the same facts batched (padded batch, "
        "per-fact early stopping, frozen layers replayed) and one at a time, and print "
        "both times and the ratio.",
    )
    _add_data_options(zopt)
    zopt.add_argument("--n", type=int, default=10, help="facts to optimise (10)")
    add_model_options(zopt)
    add_engine_options(zopt)
    zopt.set_defaults(handler=run_zopt_bench, computes=True)
    _register_budget(sub)
    _register_sync(sub)
    _register_share(sub)
    _register_load(sub)
    _register_ingest(sub)
    _register_plan(sub)
    _register_lifelong(sub)
    _register_scale(sub)
    _register_serving(sub)
    _register_solve(sub)
    _register_damage(sub)


def _register_sync(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser(
        "sync",
        help="time from writing a facts file to its facts being live in a running daemon",
        description="Start a real daemon (subprocess, fresh data directory, shared caches, "
        "default policy), write one facts file per size with that many COUNTERFACT "
        "rewrites, and print the seconds until every fact in it is live or failed.",
    )
    _add_data_options(sync)
    sync.add_argument("--sizes", default="1,10",
                      help="comma-separated facts per file, written in order (1,10)")
    sync.add_argument("--fresh-home", action="store_true",
                      help="give the daemon an empty FACTSYNC_HOME, as on a machine that "
                      "never ran factsync (fetches the default model, makes the corpus and "
                      "statistics), and print the time from launch to the first promoted version")
    sync.set_defaults(handler=run_sync_bench)


def run_sync_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench sync``."""
    from factsync.bench.sync import format_sync_table, load_rewrites, run_sync_latency

    sizes = _positive_list(args.sizes, "--sizes")
    rewrites = load_rewrites(_counterfact_path(args))
    startup, rows = run_sync_latency(rewrites, sizes, fresh_home=args.fresh_home)
    print(format_sync_table(startup, rows, fresh_home=args.fresh_home))
    return 0


def _register_share(sub: argparse._SubParsersAction) -> None:
    share = sub.add_parser(
        "share",
        help="factsync processes side by side on the same cores: tokens per second",
        description="Sample text from the model in one process alone, then in --processes "
        "processes at once as factsync ran before it shared cores (a thread per core "
        "each, OpenMP's spinning waits), then as it runs them now (later processes take "
        "their share of the cores, waiting threads sleep); print each process's threads "
        "and tokens per second.",
    )
    share.add_argument("--processes", type=int, default=2, help="processes at once (2)")
    share.add_argument("--tokens", type=int, default=256,
                       help="tokens each process samples (256)")
    share.add_argument("--model", default="default",
                       help="local model directory, or 'default' (SmolLM2-135M-Instruct)")
    share.set_defaults(handler=run_share_bench)


def run_share_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench share``."""
    from factsync.bench.core_sharing import format_rounds, run_rounds
    from factsync.models.loading import ensure_default_model

    if args.processes < 2 or args.tokens < 1:
        raise ValueError("--processes must be at least 2 and --tokens at least 1")
    model = ensure_default_model() if args.model == "default" else Path(args.model)
    print(format_rounds(run_rounds(model, processes=args.processes, tokens=args.tokens)))
    return 0


def _register_load(sub: argparse._SubParsersAction) -> None:
    load = sub.add_parser(
        "load",
        help="a steady feed of fact changes through a running daemon: throughput, queue "
        "depth, memory, API latency and a check that nothing was dropped",
        description="Start a real daemon (subprocess, fresh data directory, shared caches) "
        "and feed it --changes fact changes over --facts (subject, relation) pairs at a "
        "steady rate for --seconds, through rewritten .jsonl files in its watched directory "
        "and POST /facts batches. A thread times GET /healthz, /status and /facts?subject= "
        "at a fixed rate; the queue depth and the daemon's RSS are sampled once a second. "
        "After the feed it waits up to --drain-seconds for the queue to empty, then checks "
        "every fed fact against the store. Prints throughput, jobs, queue depth over time, "
        "RSS, latency percentiles and the drop check; exits 1 if anything was dropped.",
    )
    load.add_argument("--changes", type=int, default=10_000, help="fact changes to feed (10000)")
    load.add_argument("--seconds", type=float, default=180.0,
                      help="feed duration in seconds, at a steady rate (180)")
    load.add_argument("--facts", type=int, default=2_000,
                      help="distinct (subject, relation) pairs the changes fall on (2000)")
    load.add_argument("--channel", choices=["file", "api", "both"], default="both",
                      help="how facts arrive; with both, half the facts use each (both)")
    load.add_argument("--drain-seconds", type=float, default=600.0,
                      help="wait at most this long after the feed for the queue to empty (600)")
    load.add_argument("--probe-rate", type=float, default=10.0,
                      help="API latency probes per second across the three endpoints (10)")
    load.add_argument("--every", type=float, default=15.0,
                      help="seconds between rows of the queue-depth table (15)")
    load.add_argument("--model", default="default",
                      help="local HuggingFace model directory, or 'default' (the embedded "
                      "SmolLM2-135M-Instruct from the shared cache)")
    load.add_argument("--policy", type=Path,
                      help="policy file (default: the shipped default policy with jobs of at "
                      "most 10 facts and a 5 s coalesce window)")
    load.add_argument("--data-dir", type=Path,
                      help="run the daemon in this directory and keep it (state, daemon.log); "
                      "default: a temporary directory, removed afterwards")
    load.add_argument("--seed", type=int, default=0, help="random seed of the feed (0)")
    load.add_argument("--json", type=Path, help="also write the numbers to this file")
    load.set_defaults(handler=run_load_bench)


def run_load_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench load``."""
    import yaml

    from factsync.bench.live_daemon import DaemonProcess
    from factsync.bench.load import BENCH_POLICY, run_load
    from factsync.bench.load_plan import LoadSettings
    from factsync.bench.load_report import format_load_report, report_json
    from factsync.policies.schema import load_policy

    settings = LoadSettings(
        changes=args.changes, seconds=args.seconds, facts=args.facts, channel=args.channel,
        drain_seconds=args.drain_seconds, probe_rate=args.probe_rate, every=args.every,
        seed=args.seed,
    )
    policy = BENCH_POLICY
    if args.policy:
        load_policy(args.policy)  # a wrong policy fails here, naming the key
        policy = yaml.safe_load(args.policy.read_text())
    model = args.model if args.model == "default" else str(Path(args.model).absolute())

    def make_daemon(data_dir: Path) -> DaemonProcess:
        return DaemonProcess(data_dir, policy=policy, model={"path": model})

    report = run_load(settings, make_daemon, data_dir=args.data_dir)
    print(format_load_report(report))
    if args.json:
        write_json(args.json, report_json(report))
    return 1 if report.problems else 0


def _register_ingest(sub: argparse._SubParsersAction) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="rows per second from a source's batch into the state store, by rows per commit",
        description="Deliver the same --rows rows (a tenth of them bad) through the "
        "connectors' deliver_rows into a real Ingest and a fresh SQLite store, once per "
        "--batch-sizes value, --repeats times in turn, and print the times and rows per "
        "second. A batch of 1 commits every row on its own (ingest before batching).",
    )
    ingest.add_argument("--rows", type=int, default=100_000, help="rows per run (100000)")
    ingest.add_argument("--batch-sizes", default="1,500",
                        help="comma-separated rows per commit; the first is the baseline (1,500)")
    ingest.add_argument("--repeats", type=int, default=3, help="runs per batch size (3)")
    ingest.set_defaults(handler=run_ingest_bench)


def run_ingest_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench ingest``."""
    from factsync.bench.ingest import format_ingest_table
    from factsync.bench.ingest import run_ingest_bench as run

    sizes = _positive_list(args.batch_sizes, "--batch-sizes")
    print(format_ingest_table(args.rows, run(args.rows, sizes, repeats=args.repeats)))
    return 0


def _register_plan(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan",
        help="time planning and preparing one job against stores of few and many applied facts",
        description="Fill one SQLite store per --sizes value with that many applied facts, "
        "then time, sizes taking turns, --repeats rounds of: the reconciler's plan of one "
        "job of 10 fact changes and that job's preparation (prepare_job and the retention "
        "sample), with the store's share of preparing timed on its own. --model none "
        "runs only the store side of preparing.",
    )
    plan.add_argument("--sizes", default="100,100000",
                      help="comma-separated applied facts per store; ratios are to the first "
                      "(100,100000)")
    plan.add_argument("--repeats", type=int, default=5, help="rounds per store (5)")
    plan.add_argument("--seed", type=int, default=0, help="random seed (0)")
    plan.add_argument("--model", default="default",
                      help="local HuggingFace model directory, 'default' (the embedded "
                      "SmolLM2-135M-Instruct) or 'none' (store side only, fast)")
    plan.add_argument("--device", default="cpu", help="auto, cpu, cuda... (cpu)")
    plan.set_defaults(handler=run_plan_bench, computes=True)


def run_plan_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench plan``."""
    from factsync.bench.plan import format_plan_table
    from factsync.bench.plan import run_plan_bench as run
    from factsync.models.loading import load_model

    loaded = None if args.model == "none" else load_model(args.model, device=args.device)
    rows = run(_positive_list(args.sizes, "--sizes"), repeats=args.repeats, loaded=loaded,
               seed=args.seed, progress=print)
    print(format_plan_table(rows, model=loaded.name if loaded else "none"))
    return 0


def _register_lifelong(sub: argparse._SubParsersAction) -> None:
    lifelong = sub.add_parser(
        "lifelong",
        help="thousands of facts in sequential jobs on one model: what stays kept as they "
        "pile up",
        description="Feed --n records to each method in sequential jobs of --batch facts on "
        "one model, as the daemon applies them (edit, apply, remember), and every "
        "--checkpoint-every facts (and at the end) score every fact applied so far: "
        "efficacy and paraphrase (retention), held-out neighbours, perplexity ratio on the "
        "fluency texts, canary facts (records after the edited ones that the unedited "
        "model knows, and the daemon's built-in canaries it states), the norm growth of "
        "each edited weight and editing seconds per fact. "
        "Prints the final metrics with 95% bootstrap intervals beside the unedited model; "
        "--json is rewritten after every checkpoint.",
    )
    _add_record_options(lifelong, records=1000)
    lifelong.add_argument("--checkpoint-every", type=int, default=100,
                          help="facts applied between checkpoints (100)")
    lifelong.add_argument("--methods", default="default,memit",
                          help="comma-separated methods: default (the daemon's default "
                          "policy), default+mpes (the same with most-probable early "
                          "stopping), default+alphaedit (the same, spread by AlphaEdit), "
                          "default+alphaedit+mpes (both), memit, memit+ime, "
                          "memit+ime+nme, alphaedit+ime+nme, or the path of a policy "
                          "file (.yaml) whose editing settings to use (default,memit)")
    lifelong.add_argument("--neighbours", type=int, default=3,
                          help="NME neighbours per fact (3)")
    lifelong.add_argument("--canaries", type=int, default=50,
                          help="records after the edited ones tried as canary facts (50)")
    lifelong.add_argument("--json", type=Path,
                          help="write the numbers to this file after every checkpoint")
    lifelong.add_argument("--plot", type=Path, help="draw the metrics against facts (PNG), "
                          "redrawn after every checkpoint")
    lifelong.add_argument("--state", type=Path, metavar="DIR",
                          help="keep what the run needs to continue in DIR after every "
                          "checkpoint (the checkpoints, and each method's applied deltas and "
                          "engine state); a run stopped midway and started again with the "
                          "same arguments and DIR goes on from its last checkpoint")
    add_model_options(lifelong)
    add_engine_options(lifelong)
    add_executor_options(lifelong)
    lifelong.set_defaults(handler=run_lifelong_bench, computes=True)


def run_lifelong_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench lifelong``."""
    from dataclasses import replace

    import torch

    from factsync.bench.canary_facts import daemon_canaries, pick_canaries
    from factsync.bench.lifelong import (
        LifelongRun,
        checkpoint_facts,
        chosen_methods,
        edit_layers,
        run_lifelong,
    )
    from factsync.bench.lifelong_plot import draw_plot
    from factsync.bench.lifelong_report import format_table, to_json
    from factsync.bench.lifelong_resume import RunDirectory
    from factsync.bench.lifelong_scoring import Yardstick
    from factsync.editing.build import build_engine
    from factsync.evaluation.suites import load_cases, prepare_suite
    from factsync.models.scoring import scoring_progress

    checkpoint_facts(args.n, args.batch, args.checkpoint_every)  # bad sizes fail before loading
    if args.canaries < 0:
        raise ValueError(f"--canaries must not be negative, got {args.canaries}")
    # A saved run with other arguments is refused before the long preparation.
    store = RunDirectory(args.state, _run_arguments(args)) if args.state else None
    if store is not None and store.load() is not None:
        print(f"continuing the run saved in {args.state}", flush=True)
    torch.manual_seed(args.seed)
    data = _counterfact_path(args, args.dataset)
    texts = _fluency_texts(args.fluency)
    cases = load_cases(args.dataset, data)
    if len(cases) < args.n:
        raise ValueError(f"{data} holds {len(cases)} records; --n asks for {args.n}")
    base = engine_settings(args, neighbours=False)
    methods = chosen_methods(args.methods, base, args.max_iterations)
    loaded = load(args)
    layers = edit_layers(loaded, methods)
    engine = build_engine(loaded, replace(base, layers=layers), statistics_settings(args))
    with scoring_progress("preparing the records"):
        suite = prepare_suite(loaded, args.dataset, cases[: args.n],
                              neighbours_per_fact=args.neighbours, spare=cases[args.n :])
        canaries = pick_canaries(
            loaded, [case.request for case in cases[args.n : args.n + args.canaries]]
        )
        stated = daemon_canaries(loaded)
        yardstick = Yardstick.prepare(loaded, suite, canaries, texts, seed=args.seed,
                                      stated_canaries=stated)

    def save(run: LifelongRun) -> None:
        """Keep the report and plot of every checkpoint so far, so a stopped run has them."""
        if args.json:
            write_json(args.json, to_json(run))
        if args.plot:
            draw_plot(run, args.plot)

    print(f"{args.dataset}, {args.n} records in jobs of {args.batch}, model {loaded.name}, "
          f"layers {','.join(map(str, layers))}, {len(canaries)} canaries from the "
          f"{min(args.canaries, len(cases) - args.n)} records after the edited ones and "
          f"{len(stated)} of the daemon's built-in canaries", flush=True)
    executor = executor_from_args(args)
    try:
        with scoring_progress("scoring"):
            run = run_lifelong(loaded, yardstick, methods, statistics=engine.statistics,
                               contexts=engine.contexts, batch_size=args.batch,
                               checkpoint_every=args.checkpoint_every,
                               on_checkpoint=save, executor=executor,
                               store=store)
    finally:
        executor.close()
    print(format_table(run))
    return 0


# Options that change where a run's results go or where its work runs, not the results.
_NOT_THE_RUN = {"handler", "computes", "json", "plot", "state", "log_level", "log_json",
                "executor", "ray_workers", "ray_address", "ray_cpus_per_worker",
                "ray_gpus_per_worker"}


def _run_arguments(args: argparse.Namespace) -> dict[str, object]:
    """The arguments that make two ``bench lifelong`` runs the same run."""
    return {name: str(value) if isinstance(value, Path) else value
            for name, value in sorted(vars(args).items()) if name not in _NOT_THE_RUN}


def _register_scale(sub: argparse._SubParsersAction) -> None:
    scale = sub.add_parser(
        "scale",
        help="facts per second of z optimisation and KPI scoring on 1, 2... Ray workers",
        description="Optimise the targets of the same records (one IME pass, unedited model) "
        "and score their KPIs (prompt, paraphrases, held-out neighbours, retention probes "
        "from the records after them, the fluency texts) in this process and then on Ray "
        "fleets of each --workers size, and print facts per second of both stages side by "
        "side, each against the local row, with the largest difference of the targets "
        "from the local ones. Ray and model loading in the workers are not timed.",
    )
    _add_data_options(scale)
    _add_fluency_option(scale)
    scale.add_argument("--n", type=int, default=20, help="records (20)")
    scale.add_argument("--workers", default="1,2",
                       help="comma-separated Ray fleet sizes to time after local (1,2)")
    scale.add_argument("--retention", type=int, default=50,
                       help="retention probes: records after the first --n (50)")
    add_model_options(scale)
    add_engine_options(scale)
    group = scale.add_argument_group("ray")
    group.add_argument("--ray-address", default="", help="an existing Ray cluster; empty "
                       "starts Ray on this machine")
    group.add_argument("--ray-cpus-per-worker", type=float, default=1.0,
                       help="CPU cores each worker reserves (1)")
    group.add_argument("--ray-gpus-per-worker", type=float, default=0.0,
                       help="GPUs each worker reserves; fractions share a GPU (0)")
    scale.set_defaults(handler=run_scale_bench, computes=True)


def run_scale_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench scale``."""
    import torch

    from factsync.bench.scale import ScaleWork, format_table, run_scale
    from factsync.editing.contexts import sample_contexts
    from factsync.evaluation.datasets import load_cases
    from factsync.executors.build import build_executor
    from factsync.executors.settings import ExecutorSettings, ExecutorType

    sizes = _positive_list(args.workers, "--workers")
    torch.manual_seed(args.seed)
    records = load_cases("counterfact", _counterfact_path(args))
    cases = records[: args.n]
    loaded = load(args)
    settings = engine_settings(args, neighbours=False)
    work = ScaleWork(
        loaded=loaded, cases=cases, layer=settings.edit_layers(loaded)[-1],
        contexts=sample_contexts(loaded), settings=settings.target,
        retention=[(c.request.prompt, c.request.old_object)
                   for c in records[args.n : args.n + args.retention]],
        texts=_fluency_texts(args.fluency))

    def fleet(workers: int):  # noqa: ANN202
        return lambda: build_executor(
            ExecutorSettings(type=ExecutorType.RAY, address=args.ray_address, workers=workers,
                             cpus_per_worker=args.ray_cpus_per_worker,
                             gpus_per_worker=args.ray_gpus_per_worker),
            source=args.model, device=args.device, dtype=args.dtype)

    rows = run_scale(work, [(size, fleet(size)) for size in sizes])
    print(f"{len(cases)} COUNTERFACT records, model {loaded.name} on {loaded.device}, "
          f"{torch.get_num_threads()} torch threads locally, "
          f"{args.ray_cpus_per_worker:g} CPU and {args.ray_gpus_per_worker:g} GPU per worker")
    print(format_table(rows))
    return 0


def _register_serving(sub: argparse._SubParsersAction) -> None:
    serving = sub.add_parser(
        "serving",
        help="do the exported adapter and merged checkpoint carry every applied fact?",
        description="Apply COUNTERFACT records in sequential jobs through the daemon's store, "
        "live-version owner and exporter (default export settings, merged checkpoints on, "
        "each export verified and folded as the daemon does), then print the edit success "
        "and paraphrase success of all applied facts on the live model, on the current "
        "adapter loaded with PEFT on its serving base, and on the merged checkpoint, with "
        "the adapter's rank, the folds made and the export seconds of the first and last "
        "job. Works in a temporary data directory unless --work-dir is given.",
    )
    _add_data_options(serving)
    serving.add_argument("--n", type=int, default=100, help="records to apply (100)")
    serving.add_argument("--batch", type=int, default=10, help="facts per edit job (10)")
    serving.add_argument("--max-rank", type=int, default=ExportConfig.max_rank,
                         help=f"the adapter's rank budget ({ExportConfig.max_rank})")
    serving.add_argument("--no-fold", action="store_true",
                         help="truncate the adapter by SVD instead of folding")
    serving.add_argument("--verify-sample", type=int, default=ExportConfig.verify_sample,
                         help="applied facts drawn at random to verify each export on, "
                         "beside the facts it adds; 0 for all "
                         f"({ExportConfig.verify_sample})")
    serving.add_argument("--work-dir", type=Path, help="keep the data directory here")
    serving.add_argument("--corpus-tokens", type=int,
                         help="tokens of model-sampled text behind the key statistics")
    serving.add_argument("--json", type=Path, help="write the numbers to this file")
    add_model_options(serving)
    serving.set_defaults(handler=run_serving_bench, computes=True)


def run_serving_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench serving``."""
    import tempfile

    import torch

    from factsync.bench.serving import format_serving, run_serving
    from factsync.editing.build import build_engine
    from factsync.evaluation.suites import load_cases, prepare_suite
    from factsync.models.loading import default_model_dir
    from factsync.policies.schema import Policy

    torch.manual_seed(args.seed)
    settings = ExportConfig(max_rank=args.max_rank, fold=not args.no_fold,
                            verify_sample=args.verify_sample)
    cases = load_cases("counterfact", _counterfact_path(args))
    if len(cases) < args.n:
        raise ValueError(f"the data holds {len(cases)} records; --n asks for {args.n}")
    loaded = load(args)
    base_model = default_model_dir() if args.model == "default" else Path(args.model)
    policy = Policy()
    engine = build_engine(loaded, policy.editing.engine_settings(), statistics_settings(args))
    suite = prepare_suite(loaded, "counterfact", cases[: args.n],
                          neighbours_per_fact=policy.editing.max_neighbours,
                          spare=cases[args.n :])
    with tempfile.TemporaryDirectory(prefix="factsync-serving-") as scratch:
        result = run_serving(loaded, engine, suite, batch=args.batch,
                             directory=args.work_dir or Path(scratch), base_model=base_model,
                             settings=settings)
    print(f"{args.n} COUNTERFACT records in jobs of {args.batch}, model {loaded.name}, "
          "the default policy's editing")
    print(format_serving(result))
    if args.json:
        write_json(args.json, result)
    return 0


def _register_budget(sub: argparse._SubParsersAction) -> None:
    budget = sub.add_parser(
        "budget",
        help="edit quality against the token budget of the key statistics",
        description="Compute key statistics over the first N tokens of the model-sampled "
        "corpus for each budget, report their distance to the largest budget's and the "
        "derived lambda, and make the same single-pass MEMIT edits with each.",
    )
    _add_data_options(budget)
    _add_fluency_option(budget)
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
    from factsync.editing.contexts import sample_contexts
    from factsync.editing.corpus import model_corpus
    from factsync.evaluation.counterfact import load_counterfact
    from factsync.paths import data_home

    torch.manual_seed(args.seed)
    budgets = _positive_list(args.budgets, "--budgets")
    data = _counterfact_path(args)
    cases = load_counterfact(data, limit=args.n)
    fluency = _fluency_texts(args.fluency)
    loaded = load(args)
    texts = model_corpus(loaded, num_tokens=max(budgets), cache_dir=data_home() / "corpus")
    rows = run_budget_study(
        loaded,
        cases,
        budgets,
        texts=texts,
        settings=engine_settings(args, neighbours=False),
        contexts=sample_contexts(loaded),
        fluency_texts=fluency,
        batch_size=args.batch,
    )
    print(f"single-pass MEMIT on {len(cases)} COUNTERFACT records, model {loaded.name}")
    print(format_budget_table(rows))
    return 0


def _add_record_options(parser: argparse.ArgumentParser, *, records: int) -> None:
    """Which records a bench edits, in jobs of how many, and its fluency texts."""
    parser.add_argument("--dataset", choices=DATASETS, default="counterfact",
                        help="record format of --data (counterfact)")
    _add_data_options(parser)
    _add_fluency_option(parser)
    parser.add_argument("--n", type=int, default=records, help=f"records to edit ({records})")
    parser.add_argument("--batch", type=int, default=10, help="facts per edit job (10)")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="records json (default: the dataset's file under ../shared/data beside the "
        "checkout: counterfact/counterfact-dev-1000.json or zsre/zsre-dev-1000.json)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")


def _add_fluency_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fluency",
        type=Path,
        help=f"texts to measure perplexity on, a json list of {{\"Text\": ...}} rows "
        f"(default: ../shared/data/{FLUENCY_FILE} beside the checkout)",
    )


def _counterfact_path(args: argparse.Namespace, dataset: str = "counterfact") -> Path:
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


def _fluency_texts(path: Path | None) -> list[str]:
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
    from factsync.editing.build import build_engine
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
    records = load_cases(args.dataset, _counterfact_path(args, args.dataset))
    cases = records[: args.n]
    texts = _fluency_texts(args.fluency)
    tables = {}
    for dtype in filter(None, (args.against_dtype, args.dtype)):
        torch.manual_seed(args.seed)
        run_args = argparse.Namespace(**{**vars(args), "dtype": dtype})
        loaded = load(run_args)
        engine = build_engine(loaded, base, statistics_settings(args))
        executor = executor_from_args(run_args)
        try:
            with scoring_progress("scoring"):
                tables[dtype] = run_counterfact(
                    loaded, cases, methods, statistics=engine.statistics,
                    contexts=engine.contexts, fluency_texts=texts, batch_size=args.batch,
                    neighbours_per_fact=args.neighbours, dataset=args.dataset,
                    spare=records[args.n :], executor=executor)
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


def run_zopt_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench zopt``."""
    import torch

    from factsync.bench.zopt import format_timing, time_zopt
    from factsync.editing.contexts import sample_contexts
    from factsync.evaluation.counterfact import load_counterfact

    torch.manual_seed(args.seed)
    cases = load_counterfact(_counterfact_path(args), limit=args.n)
    loaded = load(args)
    settings = engine_settings(args, neighbours=False)
    layers = settings.edit_layers(loaded)
    timing = time_zopt(
        loaded, [c.request for c in cases], layers[-1], sample_contexts(loaded), settings.target
    )
    print(format_timing(timing))
    print(json.dumps(asdict(timing) | {"speedup": timing.speedup}))
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

    sizes = _positive_list(args.key_sizes, "--key-sizes")
    counts = _positive_list(args.keys, "--keys")
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
        "layers alone.",
    )
    damage.add_argument("delta", type=Path, help="the delta file (.safetensors)")
    _add_fluency_option(damage)
    damage.add_argument("--json", type=Path, help="also write the numbers to this file")
    add_model_options(damage)
    damage.add_argument("--corpus-tokens", type=int, default=None,
                        help="tokens of model-sampled text behind the key statistics "
                        "(default: as the engine chooses for the key size)")
    damage.set_defaults(handler=run_damage_bench, computes=True)


def run_damage_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench damage``."""
    from factsync.bench.damage import edited_layers, format_damage, measure_damage
    from factsync.editing.build import layer_statistics, statistics_corpus
    from factsync.editing.delta import ModelDelta

    delta = ModelDelta.load(args.delta)
    texts = _fluency_texts(args.fluency)
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
    if args.json:
        write_json(args.json, report.to_json())
    return 0


def _positive_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} must be comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{option} must list numbers of at least 1, got {text!r}")
    return values
