"""What every connector talks to, and what it offers the daemon.

A connector reads rows from one source and passes each batch it read together (a file, a
response, a query) to ``deliver_rows``, which validates every row with ``parse_row`` and
hands good ones to ``FactSink.accept`` and bad ones to ``FactSink.reject``, a few
hundred rows to a ``FactSink.batch`` (one commit); one bad row never holds back the
rest. Rows of one batch that share a feed id but state different facts contradict each
other, and none of them is used. To add a source, write a class with ``name``,
``start``, ``stop`` and ``scan`` (a full read of the source) in one module and register
it in the config.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from factsync.facts.records import FactRecord, RowError, parse_row

RAW_TEXT_LIMIT = 2000
"""Characters of a bad row kept in quarantine."""
ROWS_PER_BATCH = 500
"""Rows handed to the sink between commits: one disk sync for many rows, while other
writers wait at most a few milliseconds."""


class FactSink(Protocol):
    """Where connectors deliver rows."""

    def accept(self, record: FactRecord) -> bool:
        """Take a valid fact row; ``False`` if the sink quarantined it itself."""

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        """Quarantine a row that could not be used."""

    def batch(self) -> AbstractContextManager[None]:
        """Commit the rows accepted and rejected inside together."""


@dataclass
class ScanReport:
    """What one read of a source found."""

    rows: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


SourceRow = tuple[Any, str, str | None]
"""A row as read: (the raw value, its location, why it could not even be read or None)."""


def deliver_rows(
    sink: FactSink, rows: Iterable[SourceRow], *, source: str, report: ScanReport,
    rows_per_batch: int = ROWS_PER_BATCH,
) -> None:
    """Validate a batch of rows read together and hand each to ``sink``.

    A row is accepted, or quarantined with the reason: it could not be read (bad JSON, a
    short CSV line), ``parse_row`` refused it, or its ``id`` names a different fact
    elsewhere in the batch. The sink commits every ``rows_per_batch`` rows.
    """
    parsed: list[tuple[FactRecord, Any]] = []
    unreadable: list[tuple[str, str, Any]] = []
    for raw, location, problem in rows:
        report.rows += 1
        try:
            if problem is not None:
                raise RowError(problem)
            parsed.append((parse_row(raw, source=source, location=location), raw))
        except RowError as exc:
            unreadable.append((location, str(exc), raw))
    for chunk in _chunks(unreadable, rows_per_batch):
        with sink.batch():
            for location, reason, raw in chunk:
                report.rejected += 1
                sink.reject(source=source, location=location, reason=reason, raw=_raw_text(raw))
    clashes = _conflicting_ids([record for record, _ in parsed])
    for chunk in _chunks(parsed, rows_per_batch):
        with sink.batch():
            for record, raw in chunk:
                others = clashes.get(record.record_id or "")
                if others is None:
                    report.rejected += not sink.accept(record)
                    continue
                report.rejected += 1
                sink.reject(source=source, location=record.location, raw=_raw_text(raw),
                            reason=_clash_reason(record, others))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))


def _clash_reason(record: FactRecord, group: list[FactRecord]) -> str:
    elsewhere = [r.location for r in group if r is not record]
    listed = ", ".join(elsewhere[:3]) + (f" and {len(elsewhere) - 3} more"
                                         if len(elsewhere) > 3 else "")
    return (f"id '{record.record_id}' names a different fact at {listed}; an id must name one "
            f"fact, so none of these rows is used")


def _conflicting_ids(records: list[FactRecord]) -> dict[str, list[FactRecord]]:
    """Ids carried by rows that disagree on the fact, with all their rows."""
    by_id: dict[str, list[FactRecord]] = defaultdict(list)
    for record in records:
        if record.record_id is not None:
            by_id[record.record_id].append(record)
    return {
        record_id: group for record_id, group in by_id.items()
        if len({(r.subject, r.relation, r.object, r.deleted) for r in group}) > 1
    }


def _raw_text(raw: Any) -> str:
    if raw is None:
        return ""
    try:
        return json.dumps(raw, ensure_ascii=False, default=str)[:RAW_TEXT_LIMIT]
    except (TypeError, ValueError):
        return repr(raw)[:RAW_TEXT_LIMIT]


class ConnectorHealth:
    """How a connector's last reads went, for metrics and status.

    Attributes:
        up: whether the last read of the source succeeded.
        last_success: when a read last succeeded (epoch seconds), if ever.
        last_error: the last failure's message.
        errors: failures by kind (``timeout``, ``http``, ``parse``, ``database``...).
    """

    def __init__(self) -> None:
        self.up = False
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.errors: Counter[str] = Counter()
        self.started = time.time()
        self._lock = threading.Lock()

    def succeeded(self) -> None:
        """Record a successful read."""
        with self._lock:
            self.up, self.last_success = True, time.time()

    def failed(self, kind: str, message: str) -> None:
        """Record a failed read of ``kind``."""
        with self._lock:
            self.up, self.last_error = False, message
            self.errors[kind] += 1

    def lag_seconds(self) -> float:
        """Seconds since the source was last read successfully (since start if never)."""
        return time.time() - (self.last_success or self.started)


class Connector(Protocol):
    """A fact source the daemon runs."""

    name: str
    health: ConnectorHealth

    def start(self) -> None:
        """Begin watching the source for changes (non-blocking)."""

    def stop(self) -> None:
        """Stop watching; returns once no more rows will be delivered."""

    def scan(self) -> ScanReport:
        """Read the whole source now and deliver every row."""
