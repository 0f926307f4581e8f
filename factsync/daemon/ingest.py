"""``Ingest``: the sink every connector and ``POST /facts`` deliver rows to."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from factsync.connectors.base import ScanReport, deliver_rows
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
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
            a source of higher priority (unknown sources have 0; the rule and the others
            a row must pass are ``factsync.facts.admission``).
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
        self._lock = threading.RLock()  # taken before the store's lock, never after it
        self._batch_depth = 0
        self._changed_in_batch = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the rows taken inside together (one disk sync for many rows).

        Rows recorded inside are durable once it ends; a crash before loses them all,
        and the source delivers them again (a re-scan, or a push that was not answered).
        """
        with self._lock:
            self._batch_depth += 1
            try:
                with self._store.batch():
                    yield
                    if self._batch_depth == 1 and self._changed_in_batch:
                        failpoint("ingest.uncommitted")
            finally:
                self._batch_depth -= 1
                changed = self._changed_in_batch if self._batch_depth == 0 else 0
                if self._batch_depth == 0:
                    self._changed_in_batch = 0
        if changed:  # committed: wake the worker (and let the kill-point suite strike)
            failpoint("ingest.recorded")
            self._on_change()

    def accept(self, record: FactRecord) -> bool:
        """Record a valid row; ``False`` if it was quarantined instead."""
        return self.record(record) is not None

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        """Quarantine a row; counted once however often it is re-read."""
        if self._store.quarantine(source=source, location=location, reason=reason, raw=raw):
            self._metrics.facts_quarantined.labels(source).inc()
            log.warning("quarantined %s %s: %s", source, location, reason)
        self._metrics.quarantine_size.set(self._store.quarantine_count())

    def push(self, rows: list[Any], *, source: str, batch: str) -> PushResult:
        """Take rows pushed over the API as one batch; what became of each."""
        outcomes = _PushOutcomes(self, batch)
        deliver_rows(outcomes, ((raw, f"{batch}:{index}", None) for index, raw in enumerate(rows)),
                     source=source, report=ScanReport())
        outcomes.result.quarantined.sort(key=lambda q: q["index"])
        return outcomes.result

    def record(self, record: FactRecord) -> bool | None:
        """Record a valid row: ``None`` if it was quarantined (an unknown relation), else
        whether it changed the desired fact. Durable at once, or when the enclosing
        ``batch`` ends."""
        relation = self._catalog.resolve(record.relation)
        if relation is None:
            self.reject(source=record.source, location=record.location,
                        reason=self.unknown_relation(record), raw=json.dumps(record.__dict__))
            return None
        self._metrics.facts_ingested.labels(record.source).inc()
        with self.batch():
            change = self._store.record_desired(record=record, relation=relation.id,
                                                priorities=self._priorities)
            if change is None:
                return False
            self._changed_in_batch += 1
        self._metrics.fact_changes.labels(record.source).inc()
        log.info("fact change %d: %s %s -> %s%s (from %s %s)", change.id, record.subject,
                 relation.id, record.object, " [deleted]" if record.deleted else "",
                 record.source, record.location)
        return True

    @staticmethod
    def unknown_relation(record: FactRecord) -> str:
        """The quarantine reason of a row whose relation the catalog does not know."""
        return (f"unknown relation '{record.relation}': add it under 'relations' in the "
                "config or use a catalog id or alias")


class _PushOutcomes:
    """A sink in front of ``Ingest`` that notes what became of each pushed row."""

    def __init__(self, ingest: Ingest, batch: str) -> None:
        self._ingest = ingest
        self._prefix = f"{batch}:"
        self.result = PushResult()

    def accept(self, record: FactRecord) -> bool:
        outcome = self._ingest.record(record)
        if outcome is None:
            self._note_rejected(record.location, self._ingest.unknown_relation(record))
            return False
        self.result.accepted += 1
        self.result.changed += int(outcome)
        return True

    def reject(self, *, source: str, location: str, reason: str, raw: str) -> None:
        self._ingest.reject(source=source, location=location, reason=reason, raw=raw)
        self._note_rejected(location, reason)

    def batch(self) -> AbstractContextManager[None]:
        return self._ingest.batch()

    def _note_rejected(self, location: str, reason: str) -> None:
        index = int(location.removeprefix(self._prefix))
        self.result.quarantined.append({"index": index, "reason": reason})
