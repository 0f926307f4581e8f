"""``factsync bench`` for the runtime: processes sharing cores, and Ray workers."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.commands.bench.inputs import (
    add_data_options,
    add_fluency_option,
    fluency_texts,
    positive_list,
    records_path,
)
from factsync.commands.options import add_engine_options, add_model_options, engine_settings, load


def register(sub: argparse._SubParsersAction) -> None:
    """Add the runtime benchmarks: share, sampling and scale."""
    _register_share(sub)
    _register_sampling(sub)
    _register_scale(sub)


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


def _register_sampling(sub: argparse._SubParsersAction) -> None:
    sampling = sub.add_parser(
        "sampling",
        help="the corpus sampler's tokens per second at several batch sizes",
        description="Sample the same first sequences of the model-sampled corpus once per "
        "batch size, one after another in this process, and print tokens per second, the "
        "memory each batch's key-value cache and logits take, and whether the texts equal "
        "the first batch size's (they should: each sequence has its own generator).",
    )
    sampling.add_argument("--batch-sizes", default="16,32,64,128",
                          help="comma-separated sequences sampled together (16,32,64,128)")
    sampling.add_argument("--sequences", type=int, default=128,
                          help="sequences each batch size samples (128)")
    sampling.add_argument("--sequence-length", type=int, default=128,
                          help="tokens per sequence, the corpus's (128)")
    add_model_options(sampling)
    sampling.set_defaults(handler=run_sampling_bench)


def run_sampling_bench(args: argparse.Namespace) -> int:
    """Handler of ``factsync bench sampling``."""
    from factsync.bench.sampling_speed import format_timings, time_batch_sizes

    if args.sequences < 1 or args.sequence_length < 1:
        raise ValueError("--sequences and --sequence-length must be at least 1")
    sizes = positive_list(args.batch_sizes, "--batch-sizes")
    loaded = load(args)
    print(f"{args.sequences} sequences of {args.sequence_length} tokens from {loaded.name} "
          f"on {loaded.device}")
    print(format_timings(time_batch_sizes(loaded, sizes, sequences=args.sequences,
                                          sequence_length=args.sequence_length)))
    return 0


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
    add_data_options(scale)
    add_fluency_option(scale)
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
    from factsync.editing.build import engine_contexts
    from factsync.evaluation.datasets import load_cases
    from factsync.executors.build import build_executor
    from factsync.executors.settings import ExecutorSettings, ExecutorType

    sizes = positive_list(args.workers, "--workers")
    torch.manual_seed(args.seed)
    records = load_cases("counterfact", records_path(args))
    cases = records[: args.n]
    loaded = load(args)
    settings = engine_settings(args, neighbours=False)
    work = ScaleWork(
        loaded=loaded, cases=cases, layer=settings.edit_layers(loaded)[-1],
        contexts=engine_contexts(loaded), settings=settings.target,
        retention=[(c.request.prompt, c.request.old_object)
                   for c in records[args.n : args.n + args.retention]],
        texts=fluency_texts(args.fluency))

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
