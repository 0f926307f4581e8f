"""``factsync bench ingest``: rows per second from a source's batch into the state store.

The same rows, a tenth of them bad, go through ``deliver_rows`` into a real ``Ingest``
on a fresh SQLite file once per batch size, the sizes taking turns each repeat so that
a slower moment of the machine does not fall on one of them. A batch of one row commits
(and syncs) every row on its own, which is how ingest worked before rows were batched.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from factsync.connectors.base import ScanReport, SourceRow, deliver_rows
from factsync.daemon.ingest import Ingest
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.store.records import CHANGE_PENDING
from factsync.store.store import StateStore

BAD_EVERY = 10
"""One row in this many is bad (a missing object, or an unknown relation)."""


@dataclass(frozen=True)
class IngestRow:
    """One batch size's runs over the same rows."""

    rows_per_batch: int
    delivered: int
    seconds: list[float]
    changes: int
    quarantined: int

    @property
    def rows_per_second(self) -> float:
        """Rows delivered per second in the median run."""
        return self.delivered / statistics.median(self.seconds)


def make_rows(count: int) -> list[SourceRow]:
    """``count`` rows as a file connector would read them; every ``BAD_EVERY``-th is bad."""
    rows: list[SourceRow] = []
    for number in range(count):
        raw = {"subject": f"Country {number}", "relation": "P36", "object": f"City {number}"}
        if number % BAD_EVERY == BAD_EVERY - 1:
            raw = ({"subject": raw["subject"], "relation": "P36"} if number // BAD_EVERY % 2
                   else {**raw, "relation": "P9999"})
        rows.append((raw, f"bench.jsonl:{number + 1}", None))
    return rows


def time_ingest(
    rows: list[SourceRow], rows_per_batch: int, directory: Path
) -> tuple[float, int, int]:
    """Seconds to deliver ``rows`` into a fresh store under ``directory``, and the fact
    changes and quarantine entries it then holds."""
    store = StateStore(directory / f"state-{time.monotonic_ns()}.sqlite")
    try:
        ingest = Ingest(store=store, catalog=RelationCatalog.built_in(),
                        metrics=Metrics(CollectorRegistry()))
        started = time.perf_counter()
        deliver_rows(ingest, rows, source="file:bench", report=ScanReport(),
                     rows_per_batch=rows_per_batch)
        seconds = time.perf_counter() - started
        return seconds, store.count_changes(states=(CHANGE_PENDING,)), store.quarantine_count()
    finally:
        store.close()


def run_ingest_bench(
    count: int, batch_sizes: list[int], *, repeats: int = 3, directory: Path | None = None
) -> list[IngestRow]:
    """Deliver ``count`` rows ``repeats`` times per batch size; one row per size."""
    if count < 1 or repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("rows, repeats and every batch size must be at least 1")
    rows = make_rows(count)
    seconds: dict[int, list[float]] = {size: [] for size in batch_sizes}
    outcome: dict[int, tuple[int, int]] = {}
    ingest_log = logging.getLogger("factsync.daemon.ingest")
    level = ingest_log.level
    ingest_log.setLevel(logging.ERROR)  # a line per bad row would flood the terminal
    try:
        with tempfile.TemporaryDirectory(prefix="factsync-ingest-bench-",
                                         dir=directory) as scratch:
            for _ in range(repeats):
                for size in batch_sizes:
                    took, changes, quarantined = time_ingest(rows, size, Path(scratch))
                    seconds[size].append(took)
                    outcome[size] = (changes, quarantined)
    finally:
        ingest_log.setLevel(level)
    return [IngestRow(size, count, seconds[size], *outcome[size]) for size in batch_sizes]


def format_ingest_table(count: int, rows: list[IngestRow]) -> str:
    """The runs as a plain-text table, with the speed-up over the first batch size."""
    baseline = rows[0].rows_per_second
    lines = [
        f"{count} rows ({count // BAD_EVERY} bad) through deliver_rows into a fresh store",
        "rows per commit | runs (s) | median s | rows/s | changes | quarantined | vs first",
        "--------------- | -------- | -------- | ------ | ------- | ----------- | --------",
    ]
    for row in rows:
        runs = ", ".join(f"{s:.2f}" for s in row.seconds)
        lines.append(
            f"{row.rows_per_batch} | {runs} | {statistics.median(row.seconds):.2f} | "
            f"{row.rows_per_second:.0f} | {row.changes} | {row.quarantined} | "
            f"{row.rows_per_second / baseline:.1f}x"
        )
    return "\n".join(lines)
