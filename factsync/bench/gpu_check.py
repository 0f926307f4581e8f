"""The device check: what editing costs on a large model shape, with no weights needed.

A randomly initialised Llama of the chosen shape (Llama-3-8B's by default) with a
tokenizer trained here on a few lines stands in for the real model: the cost of key
statistics and of one IME pass depends on the shapes, not on what the weights know. It
times key statistics over a synthetic corpus (random token sequences) for the edit
layers, building the engine, and one pass of jobs of synthetic facts, with seconds per
fact for the OPTIMIZATION and SPREAD stages and the peak accelerator memory of each.

``python -m factsync.bench.gpu_check --smoke`` runs the same on a tiny shape on CPU;
``scripts/gpu-check`` runs the GPU-marked tests first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from factsync.editing.contexts import sample_contexts
from factsync.editing.covariance import compute_key_statistics
from factsync.editing.engine import EditEngine
from factsync.editing.requests import EditRequest
from factsync.editing.sensitivity import SENSITIVITY_TOKENS, compute_sensitivity
from factsync.models.loading import LoadedModel, resolve_device
from factsync.models.precision import keep_edit_layers_in_float32
from factsync.models.synthetic import LLAMA3_8B, LlamaShape, byte_tokenizer, random_llama
from factsync.policies.schema import Policy

SMOKE = LlamaShape(hidden=64, intermediate=256, layers=8, heads=4, kv_heads=2)
TOKENIZER_TEXT = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Danielle Darrieux was a French actress whose mother tongue was French.",
    "Toko Yasuda plays the guitar; Apple A5 was created by Apple in California.",
    "LinkedIn is owned by Microsoft, which also owns Skype and GitHub.",
    "Once upon a time, in 1998, scientists found a new city in the north of Norway.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
    "The river flows through the valley towards the sea, past farms and old towns.",
    "def main(): print('hello world') # a small program written in Python",
)
TEMPLATES = ("{} is located in", "{} works for", "The mother tongue of {} is",
             "{} was founded in", "{} plays the")
OBJECTS = ("Paris", "Rome", "Microsoft", "Apple", "French", "English", "guitar", "piano",
           "Norway", "California")


def synthetic_corpus(loaded: LoadedModel, tokens: int, *, length: int = 256,
                     seed: int = 0) -> list[str]:
    """Texts of ``length`` random ordinary tokens each, about ``tokens`` in all."""
    generator = torch.Generator().manual_seed(seed)
    special = set(loaded.tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(loaded.tokenizer)) if i not in special])
    count = -(-tokens // length)
    picks = torch.randint(len(ordinary), (count, length), generator=generator)
    return [loaded.tokenizer.decode(ordinary[row].tolist()) for row in picks]


def synthetic_facts(count: int) -> list[EditRequest]:
    """``count`` distinct edit requests with made-up subjects."""
    return [EditRequest(f"Entity {index}", TEMPLATES[index % len(TEMPLATES)],
                        OBJECTS[index % len(OBJECTS)], OBJECTS[(index + 3) % len(OBJECTS)])
            for index in range(count)]


def run_check(shape: LlamaShape, *, device: str, dtype: str, statistics_tokens: int,
              jobs: Sequence[int], vocab_size: int = 1024) -> dict:
    """Build the model and time statistics, the sensitivity the default policy's step
    rule reads, engine construction and one IME pass per job size; a JSON-ready record."""
    on = str(resolve_device(device))
    started = time.monotonic()
    loaded = random_llama(byte_tokenizer(TOKENIZER_TEXT, vocab_size), shape, dtype=dtype,
                          device=on)
    record: dict = {"shape": asdict(shape), "device": on, "dtype": dtype,
                    "accelerator": torch.cuda.get_device_name(on) if on.startswith("cuda")
                    else None, "build_seconds": time.monotonic() - started}
    settings = replace(Policy().editing.engine_settings(), max_iterations=1, neighbours=False)
    layers = settings.edit_layers(loaded)
    keep_edit_layers_in_float32(loaded, layers)  # the daemon's precision policy
    texts = synthetic_corpus(loaded, statistics_tokens)
    _reset_peak(on)
    started = time.monotonic()
    statistics = compute_key_statistics(loaded, layers, texts, token_budget=statistics_tokens,
                                        progress=False)
    record["statistics"] = {"layers": layers, "tokens": statistics_tokens,
                            "seconds": time.monotonic() - started, "peak_gib": _peak(on)}
    started = time.monotonic()
    sensitivity_tokens = min(statistics_tokens, SENSITIVITY_TOKENS)
    sensitivity = (compute_sensitivity(loaded, layers[-1], texts,
                                       token_budget=sensitivity_tokens, progress=False)
                   if settings.target.needs_sensitivity else None)
    record["sensitivity"] = {"tokens": sensitivity_tokens if sensitivity is not None else 0,
                             "seconds": time.monotonic() - started}
    started = time.monotonic()
    engine = EditEngine(loaded, settings, statistics, sample_contexts(loaded),
                        sensitivity=sensitivity)
    record["engine_seconds"] = time.monotonic() - started
    record["jobs"] = []
    for size in jobs:
        _reset_peak(on)
        result = engine.edit(synthetic_facts(size))
        [timing] = result.timings
        record["jobs"].append({
            "facts": size,
            "optimisation_seconds_per_fact": timing.optimisation_seconds / size,
            "spread_seconds_per_fact": timing.spread_seconds / size,
            "seconds_per_fact": (timing.optimisation_seconds + timing.spread_seconds) / size,
            "peak_gib": _peak(on),
        })
    return record


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: str) -> float | None:
    """Peak accelerator memory since the last reset, GiB (``None`` on CPU)."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def format_check(record: dict) -> str:
    """The check's table."""
    shape, stats = record["shape"], record["statistics"]

    def gib(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    where = record["accelerator"] or record["device"]
    lines = [
        f"random Llama hidden {shape['hidden']}, MLP {shape['intermediate']}, "
        f"{shape['layers']} layers, {record['dtype']} on {where}",
        f"key statistics: {stats['tokens']} tokens, layers {stats['layers']}: "
        f"{stats['seconds']:.1f} s, peak {gib(stats['peak_gib'])} GiB",
        f"sensitivity of the last edit layer: {record['sensitivity']['tokens']} tokens: "
        f"{record['sensitivity']['seconds']:.1f} s",
        f"engine construction (statistics cached): {record['engine_seconds']:.1f} s",
        "facts/job | optimisation s/fact | spread s/fact | total s/fact | peak GiB",
    ]
    for job in record["jobs"]:
        lines.append(f"{job['facts']:9} | {job['optimisation_seconds_per_fact']:19.3f} | "
                     f"{job['spread_seconds_per_fact']:13.3f} | {job['seconds_per_fact']:12.3f}"
                     f" | {gib(job['peak_gib'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check and write ``gpu-check.json`` and ``gpu-check.txt`` to ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m factsync.bench.gpu_check",
        description="Time key statistics and one IME pass on a random Llama-3-8B-shaped "
        "model (or a tiny one with --smoke), and write the numbers as JSON and a table.")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny shape in float32 on the CPU, in seconds")
    parser.add_argument("--out", type=Path, required=True, help="directory for the results")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:1, cpu (auto)")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype (bfloat16)")
    parser.add_argument("--statistics-tokens", type=int, default=150_000,
                        help="tokens behind the key statistics (150000)")
    parser.add_argument("--jobs", default="1,10,64", help="facts per timed job (1,10,64)")
    args = parser.parse_args(argv)
    jobs = [int(n) for n in args.jobs.split(",")]
    if args.smoke:
        record = run_check(SMOKE, device="cpu", dtype="float32", statistics_tokens=2000,
                           jobs=[1, 4], vocab_size=400)
    else:
        record = run_check(LLAMA3_8B, device=args.device, dtype=args.dtype,
                           statistics_tokens=args.statistics_tokens, jobs=jobs)
    args.out.mkdir(parents=True, exist_ok=True)
    table = format_check(record)
    (args.out / "gpu-check.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "gpu-check.txt").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
