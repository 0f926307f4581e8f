"""``factsync bench sampling``: the corpus sampler's tokens per second at several batch sizes.

Each sequence of a sampled corpus has its own random generator, so the texts do not
depend on how many sequences are sampled together: the batch size trades memory for
speed only. This samples the same first sequences of the corpus once per batch size,
one after another in this process, and reports tokens per second, the memory the batch's
key-value cache and logits take (``sampling_bytes_per_sequence``), and whether the texts
equal those of the first batch size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from factsync.editing.corpus import sample_corpus, sampling_bytes_per_sequence
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class BatchTiming:
    """One batch size's sampling: its speed, memory, and whether its texts were the same."""

    batch_size: int
    tokens_per_second: float
    cache_bytes: int
    same_texts: bool


def time_batch_sizes(loaded: LoadedModel, batch_sizes: Sequence[int], *, sequences: int,
                     sequence_length: int) -> list[BatchTiming]:
    """Sample the corpus's first ``sequences`` sequences once per batch size.

    A short untimed batch first warms the model up, so the first size timed is not
    charged for it.
    """
    sample_corpus(loaded, num_tokens=4, sequence_length=4, batch_size=1, progress=False)
    per_sequence = sampling_bytes_per_sequence(loaded, sequence_length)
    timings: list[BatchTiming] = []
    first: list[str] | None = None
    for batch_size in batch_sizes:
        started = time.perf_counter()
        texts = sample_corpus(loaded, num_tokens=sequences * sequence_length,
                              sequence_length=sequence_length, batch_size=batch_size)
        elapsed = time.perf_counter() - started
        first = texts if first is None else first
        timings.append(BatchTiming(batch_size, sequences * sequence_length / elapsed,
                                   per_sequence * min(batch_size, sequences), texts == first))
    return timings


def format_timings(timings: Sequence[BatchTiming]) -> str:
    """The timings as a table, with each size's speed over the first size's."""
    base = timings[0].tokens_per_second
    lines = ["batch | tokens/s | against the first | cache and logits | same texts",
             "------|----------|-------------------|------------------|-----------"]
    for t in timings:
        lines.append(f"{t.batch_size:5} | {t.tokens_per_second:8.1f} | "
                     f"{t.tokens_per_second / base:16.2f}x | "
                     f"{t.cache_bytes / 2**20:12.0f} MiB | {'yes' if t.same_texts else 'NO'}")
    return "\n".join(lines)
