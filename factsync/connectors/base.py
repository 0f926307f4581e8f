"""What every connector talks to, and what it offers the daemon.

A connector reads rows from one source, validates each with ``parse_row`` and hands
good ones to ``FactSink.accept`` and bad ones to ``FactSink.reject``; one bad row never
holds back the rest. To add a source, write a class with ``name``, ``start``, ``stop``
and ``scan`` (a full read of the source) in one module and register it in the config.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from factsync.facts.records import FactRecord, RowError, parse_row

RAW_TEXT_LIMIT = 2000
"""Characters of a bad row kept in quarantine."""


class FactSink(Protocol):
    """Where connectors deliver rows."""

    def accept(self, record: FactRecord) -> None:
        """Take a valid fact row."""

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        """Quarantine a row that could not be used."""


@dataclass
class ScanReport:
    """What one read of a source found."""

    rows: int = 0
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def deliver_row(
    sink: FactSink, raw: Any, *, source: str, location: str, report: ScanReport,
    problem: str | None = None,
) -> None:
    """Validate one raw row and hand it to ``sink``: accepted, or quarantined with why.

    ``problem`` is a reason the row could not even be read (bad JSON, a short CSV line).
    """
    report.rows += 1
    try:
        if problem is not None:
            raise RowError(problem)
        record = parse_row(raw, source=source, location=location)
    except RowError as exc:
        report.rejected += 1
        sink.reject(source=source, location=location, reason=str(exc), raw=_raw_text(raw))
        return
    sink.accept(record)


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
