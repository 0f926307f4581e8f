"""``factsync bench share``: factsync processes side by side on the same cores.

Each process loads the model, waits until all are loaded, then samples text from it
(the corpus sampler, the start-up work that collapsed when a daemon and a bench ran
together) and reports its tokens per second. Three rounds:

- ``alone``: one process, every core;
- ``torch defaults``: ``--processes`` at once, each with a thread per core and
  OpenMP's default waiting (spinning), as factsync ran before it shared cores;
- ``shared``: ``--processes`` at once as factsync runs them now (``threads.py``): the
  later ones take their share of the cores, and waiting threads sleep.

Run as ``python -m factsync.bench.core_sharing MODEL_DIR TOKENS`` it is one such process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from factsync.paths import HOME_ENV
from factsync.threads import THREADS_ENV


@dataclass(frozen=True)
class Round:
    """One round: its name and each process's threads and tokens per second."""

    name: str
    threads: list[int]
    tokens_per_second: list[float]


def run_rounds(model: Path, *, processes: int, tokens: int) -> list[Round]:
    """The three rounds (see the module docstring), one after another, on the model
    directory ``model``."""
    cores = str(os.cpu_count() or 1)
    before = {THREADS_ENV: cores, "OMP_WAIT_POLICY": ""}  # empty: OpenMP's own default
    with tempfile.TemporaryDirectory(prefix="factsync-share-") as scratch:
        # A home of their own, so that no other factsync process on the machine counts.
        home = {HOME_ENV: scratch}
        return [_round("alone", model, 1, tokens, home),
                _round("torch defaults", model, processes, tokens, home | before),
                _round("shared", model, processes, tokens, home)]


def _round(name: str, model: Path, count: int, tokens: int, env: dict[str, str]) -> Round:
    environment = {k: v for k, v in os.environ.items()
                   if k not in (THREADS_ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY")} | env
    workers = []
    for _ in range(count):
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "factsync.bench.core_sharing", str(model), str(tokens)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment))
        _expect(workers[-1], "ready")  # registered and loaded before the next one starts
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = [_expect(worker, "done").split()[1:] for worker in workers]
    for worker in workers:
        worker.wait(timeout=60)
    return Round(name, [int(t) for t, _ in results], [float(r) for _, r in results])


def _expect(worker: subprocess.Popen, word: str) -> str:
    line = worker.stdout.readline()
    if not line.startswith(word):
        worker.kill()
        raise RuntimeError(f"a sharing worker said {line!r} instead of {word!r} "
                           f"(exit {worker.wait()})")
    return line


def format_rounds(rounds: list[Round]) -> str:
    """The rounds as a table: threads and tokens per second of each process."""
    lines = ["round          | processes | threads each | tokens/s each        | tokens/s total",
             "---------------|-----------|--------------|----------------------|---------------"]
    for r in rounds:
        each = ", ".join(f"{v:.1f}" for v in r.tokens_per_second)
        lines.append(f"{r.name:14} | {len(r.threads):9} | "
                     f"{', '.join(map(str, r.threads)):12} | {each:20} | "
                     f"{sum(r.tokens_per_second):.1f}")
    return "\n".join(lines)


def _worker(model: str, tokens: int) -> None:
    """One process of a round: register, load, wait for go, sample, report."""
    import torch

    from factsync.editing.corpus import sample_corpus
    from factsync.models.loading import load_model
    from factsync.paths import data_home
    from factsync.threads import share_cores

    share_cores(data_home() / "cpu-users")
    loaded = load_model(Path(model), device="cpu")
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.monotonic()
    sample_corpus(loaded, num_tokens=tokens, sequence_length=32, batch_size=16,
                  progress=False)
    rate = tokens / (time.monotonic() - started)
    print(f"done {torch.get_num_threads()} {rate:.3f}", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]))
