"""Options and helpers shared by the commands that load a model and edit it."""

from __future__ import annotations

import argparse
from pathlib import Path

from factsync.editing.corpus import SAMPLING_TOP_K
from factsync.editing.engine import EngineSettings
from factsync.editing.spread import SpreadSettings
from factsync.editing.targets import TargetSettings


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default="default",
        help="local HuggingFace model directory, or 'default' for the embedded "
        "SmolLM2-135M-Instruct (fetched and converted on first use)",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1... (auto)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    group.add_argument("--edit-weights", choices=["float32", "model"], default="float32",
                       help="in a bfloat16 or float16 model, hold the edit layers' weights "
                       "in float32 as the daemon does (float32), or leave them in the "
                       "model's dtype to measure what that costs (model) (float32)")


POLICY_METHODS_NOTE = ("these shape the built-in methods; a method named by a policy file "
                       "takes all its editing settings (layers included) from that file")
"""The engine group's description in commands whose methods may be policy files."""


def add_engine_options(parser: argparse.ArgumentParser, description: str | None = None) -> None:
    """Options that shape the edit engine, under ``description`` when given."""
    group = parser.add_argument_group("engine", description)
    group.add_argument("--algorithm", choices=["memit", "alphaedit"],
                       default=SpreadSettings.algorithm)
    group.add_argument("--layers", help="comma-separated edit layers (default: by family)")
    group.add_argument(
        "--max-iterations",
        type=int,
        default=EngineSettings.max_iterations,
        help=f"IME passes at most; 1 is single-pass editing ({EngineSettings.max_iterations})",
    )
    group.add_argument(
        "--update-fraction",
        type=float,
        default=SpreadSettings.update_fraction,
        help="share of its requested change a typical key gets per layer; sets the "
        f"update strength of MEMIT and AlphaEdit ({SpreadSettings.update_fraction})",
    )
    group.add_argument(
        "--chunk-size",
        type=int,
        default=TargetSettings.chunk_size,
        help=f"facts per padded batch in the z optimisation ({TargetSettings.chunk_size})",
    )
    add_corpus_options(group)


def add_corpus_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--corpus-tokens``, ``--corpus-files``, ``--corpus-sampled-share`` and
    ``--corpus-top-k``: the text behind the key statistics (``statistics_settings``
    reads them)."""
    parser.add_argument(
        "--corpus-tokens",
        type=int,
        default=None,
        help="tokens of corpus text behind the key statistics (default: 10 per key "
        "dimension, 300,000 at least)",
    )
    parser.add_argument(
        "--corpus-files",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="compute the key statistics over this text instead of text sampled from the "
        "model: .txt files (one text per paragraph) or .jsonl files (a 'text' field per "
        "line)",
    )
    parser.add_argument(
        "--corpus-sampled-share",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="with --corpus-files, this share of the statistics' tokens is sampled from "
        "the model and interleaved with the files' text; 0.5 keeps most of what either "
        "alone gives on its own kind of text (default: 0, the files alone)",
    )
    parser.add_argument(
        "--corpus-top-k",
        type=int,
        default=SAMPLING_TOP_K,
        metavar="K",
        help="the model-sampled corpus draws each token from the model's K likeliest; 0 "
        "draws from all of them, which on SmolLM2-135M stands for ordinary English "
        "better than 50 (bench statistics-fit) (default: 0)",
    )


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Options that choose where the z optimisation (and scoring) runs."""
    group = parser.add_argument_group("executor")
    group.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="run the z optimisation in this process (local) or on Ray "
                       "workers, each with its own copy of the model (local)")
    group.add_argument("--ray-workers", type=int, default=2, help="Ray workers (2)")
    group.add_argument("--ray-address", default="",
                       help="an existing Ray cluster (auto, ray://head:10001); empty starts "
                       "Ray on this machine. Workers read --model from their own disk")
    group.add_argument("--ray-cpus-per-worker", type=float, default=1.0,
                       help="CPU cores each worker reserves (1)")
    group.add_argument("--ray-gpus-per-worker", type=float, default=0.0,
                       help="GPUs each worker reserves; fractions share a GPU (0)")


def executor_from_args(args: argparse.Namespace):  # noqa: ANN201
    """The executor the executor options name (a Ray fleet is started here)."""
    from factsync.executors.build import build_executor
    from factsync.executors.settings import ExecutorSettings

    settings = ExecutorSettings(type=args.executor, address=args.ray_address,
                                workers=args.ray_workers,
                                cpus_per_worker=args.ray_cpus_per_worker,
                                gpus_per_worker=args.ray_gpus_per_worker)
    if args.executor == "ray" and args.edit_weights != "float32":
        raise ValueError("--edit-weights model runs with --executor local only")
    return build_executor(settings, source=args.model, device=args.device, dtype=args.dtype,
                          edit_layers=edit_layers(args))


def engine_settings(args: argparse.Namespace, *, neighbours: bool):  # noqa: ANN201
    """``EngineSettings`` from parsed engine options."""
    return EngineSettings(
        layers=edit_layers(args),
        max_iterations=args.max_iterations,
        neighbours=neighbours,
        target=TargetSettings(chunk_size=args.chunk_size),
        spread=SpreadSettings(algorithm=args.algorithm, update_fraction=args.update_fraction),
    )


def statistics_settings(args: argparse.Namespace):  # noqa: ANN201
    """``StatisticsSettings`` from parsed options."""
    from factsync.editing.build import StatisticsSettings

    return StatisticsSettings(corpus_tokens=args.corpus_tokens or None,
                              text_files=tuple(args.corpus_files or ()),
                              corpus_sampled_share=args.corpus_sampled_share,
                              corpus_top_k=args.corpus_top_k)


def edit_layers(args: argparse.Namespace) -> tuple[int, ...] | None:
    """``--layers``, or ``None`` for the model's default window."""
    layers = getattr(args, "layers", None)
    return tuple(int(x) for x in layers.split(",")) if layers else None


def load(args: argparse.Namespace):  # noqa: ANN201
    """Load the model named by the model options; in bf16 or fp16, the edit layers'
    weights stay in float32 (``models.precision``)."""
    from factsync.models.loading import load_model
    from factsync.models.precision import keep_edit_layers_in_float32

    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.edit_weights == "float32":
        keep_edit_layers_in_float32(loaded, edit_layers(args))
    return loaded
