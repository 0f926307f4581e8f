"""``factsync bench`` for the daemon and its parts: latency, load, ingest, planning and serving."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.commands.bench.inputs import add_data_options, positive_list, records_path
from factsync.commands.options import (
    add_corpus_options,
    add_model_options,
    load,
    statistics_settings,
)
from factsync.daemon.config import ExportConfig
from factsync.durable import write_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the daemon benchmarks: sync, load, ingest, plan and serving."""
    _register_sync(sub)
    _register_load(sub)
    _register_ingest(sub)
    _register_plan(sub)
    _register_serving(sub)


def _register_sync(sub: argparse._SubParsersAction) -> None:
    sync = sub.add_parser(
        "sync",
        help="time from writing a facts file to its facts being live in a running daemon",
        description="Start a real daemon (subprocess, fresh data directory, shared caches, "
        "default policy), write one facts file per size with that many COUNTERFACT "
        "rewrites, and print the seconds until every fact in it is live or failed.",
    )
    add_data_options(sync)
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

    sizes = positive_list(args.sizes, "--sizes")
    rewrites = load_rewrites(records_path(args))
    startup, rows = run_sync_latency(rewrites, sizes, fresh_home=args.fresh_home)
    print(format_sync_table(startup, rows, fresh_home=args.fresh_home))
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

    sizes = positive_list(args.batch_sizes, "--batch-sizes")
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
    rows = run(positive_list(args.sizes, "--sizes"), repeats=args.repeats, loaded=loaded,
               seed=args.seed, progress=print)
    print(format_plan_table(rows, model=loaded.name if loaded else "none"))
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
    add_data_options(serving)
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
    add_corpus_options(serving)
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
    cases = load_cases("counterfact", records_path(args))
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
