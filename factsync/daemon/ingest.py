"""``Ingest``: the sink every connector and ``POST /facts`` deliver rows to."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord, RowError, parse_row
from factsync.failpoints import failpoint
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


@dataclass
class PushResult:
    """What happened to the rows of one push."""

    accepted: int = 0
    changed: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)


class Ingest:
    """Resolves relations, records desired facts and quarantines what cannot be used.

    Args:
        store: the state store.
        catalog: known relations.
        metrics: where counts go.
        on_change: called after a row changed a desired fact (wakes the worker).
        priorities: source name -> priority; a row never replaces a desired fact held by
            a source of higher priority (unknown sources have 0).
    """

    def __init__(
        self,
        *,
        store: StateStore,
        catalog: RelationCatalog,
        metrics: Metrics,
        on_change: Callable[[], None] = lambda: None,
        priorities: dict[str, int] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._metrics = metrics
        self._on_change = on_change
        self._priorities = priorities or {}
        self._lock = threading.Lock()

    def accept(self, record: FactRecord) -> None:
        """Record a valid row; returns after it is durable."""
        self._record(record)

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        """Quarantine a row; counted once however often it is re-read."""
        if self._store.quarantine(source=source, location=location, reason=reason, raw=raw):
            self._metrics.facts_quarantined.labels(source).inc()
            log.warning("quarantined %s %s: %s", source, location, reason)
        self._metrics.quarantine_size.set(self._store.quarantine_count())

    def push(self, rows: list[Any], *, source: str, batch: str) -> PushResult:
        """Take rows pushed over the API; each row is judged on its own."""
        result = PushResult()
        for index, raw in enumerate(rows):
            location = f"{batch}:{index}"
            try:
                record = parse_row(raw, source=source, location=location)
            except RowError as exc:
                self.reject(source=source, location=location, reason=str(exc),
                            raw=json.dumps(raw, default=str)[:2000])
                result.quarantined.append({"index": index, "reason": str(exc)})
                continue
            outcome = self._record(record)
            if outcome is None:
                result.quarantined.append({"index": index, "reason": self._unknown(record)})
            else:
                result.accepted += 1
                result.changed += int(outcome)
        return result

    def _record(self, record: FactRecord) -> bool | None:
        """``None`` if quarantined, else whether the desired fact changed."""
        relation = self._catalog.resolve(record.relation)
        if relation is None:
            self.reject(source=record.source, location=record.location,
                        reason=self._unknown(record), raw=json.dumps(record.__dict__))
            return None
        self._metrics.facts_ingested.labels(record.source).inc()
        with self._lock:
            held = self._store.desired_facts(subject=record.subject, relation=relation.id)
            if held and held[0].source != record.source and self._outranks(held[0].source,
                                                                            record.source):
                log.debug("%s %s from %s ignored: %s has priority", record.subject,
                          relation.id, record.source, held[0].source)
                return False
            change = self._store.record_desired(record=record, relation=relation.id)
        if change is None:
            return False
        failpoint("ingest.recorded")
        self._metrics.fact_changes.labels(record.source).inc()
        log.info("fact change %d: %s %s -> %s%s (from %s %s)", change.id, record.subject,
                 relation.id, record.object, " [deleted]" if record.deleted else "",
                 record.source, record.location)
        self._on_change()
        return True

    def _outranks(self, holder: str, newcomer: str) -> bool:
        return self._priorities.get(holder, 0) > self._priorities.get(newcomer, 0)

    @staticmethod
    def _unknown(record: FactRecord) -> str:
        return (f"unknown relation '{record.relation}': add it under 'relations' in the "
                "config or use a catalog id or alias")
