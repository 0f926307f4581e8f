"""``Reconciler``: turns pending fact changes into jobs.

For each fact (subject, relation) only the latest pending change counts: older ones are
marked superseded, so a burst of updates makes one edit. A change waits
``coalesce_seconds`` after it arrived for later ones to replace it. Deletions are
recorded without an edit, changes the applied state already holds are closed, and
changes the live model already states are counted as applied without an edit. The rest
wait their turn: each plan queues one job of at most ``max_facts``, the changes that
settled first, and the others stay pending, so an update arriving while earlier jobs run
still replaces its fact's change instead of queueing a second, stale edit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from factsync.facts.catalog import RelationCatalog
from factsync.failpoints import failpoint
from factsync.policies.schema import Policy
from factsync.store.records import (
    CHANGE_ALREADY_TRUE,
    CHANGE_FAILED,
    CHANGE_PENDING,
    CHANGE_RECORDED,
    FactChange,
    Job,
)
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

LiveCheck = Callable[[Sequence[FactChange]], list[bool]]
"""Whether the live model already states each change's object."""
UsableCheck = Callable[[FactChange], str | None]
"""Why the model cannot be edited to state a change (``None``: it can)."""


class Reconciler:
    """Diffs desired against applied state and queues the difference as jobs.

    Args:
        store: the state store.
        catalog: known relations.
        policy: batch limits and the coalescing window.
        clock: the time now, in epoch seconds.
        quarantine: takes a refused fact (``source``, ``location``, ``reason``, ``raw``
            keywords), like ``Ingest.reject``, which also counts it; the store's own
            ``quarantine`` when not given.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        catalog: RelationCatalog,
        policy: Policy,
        clock: Callable[[], float] = time.time,
        quarantine: Callable[..., Any] | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._clock = clock
        self._quarantine = quarantine or store.quarantine

    def plan(
        self, live_states: LiveCheck, unusable: UsableCheck = lambda change: None
    ) -> Job | None:
        """Queue one job of the ready changes that settled first; the job, if any.

        Only changes considered for this job are checked, so a plan costs at most a few
        batches of checks however long the queue is. A change ``unusable`` names a
        reason for is failed and quarantined with it instead of stopping its job.
        """
        ready = self._ready_changes()
        size = self._policy.batch.max_facts
        live = self._store.live_version().id
        batch: list[FactChange] = []
        while ready and len(batch) < size:
            candidates, ready = ready[: size - len(batch)], ready[size - len(batch) :]
            candidates = [c for c in candidates if not self._refused(c, unusable(c))]
            for change, already in zip(candidates, live_states(candidates), strict=True):
                if not already:
                    batch.append(change)
                    continue
                self._store.record_already_true(change_id=change.id, version_id=live)
                log.info("fact change %d: the live model already states %s %s %s; no edit",
                         change.id, change.subject, change.relation, change.object)
        if not batch:
            return None
        job = self._store.create_job(change_ids=[c.id for c in batch],
                                     policy_digest=self._policy.digest)
        failpoint("reconcile.job_created")
        log.info("job %d queued with %d fact change(s); %d more ready", job.id, len(batch),
                 len(ready))
        return job

    def _refused(self, change: FactChange, reason: str | None) -> bool:
        """Fail and quarantine ``change`` if there is a ``reason``; whether it was."""
        if reason is None:
            return False
        desired = self._store.desired_facts(subject=change.subject, relation=change.relation)
        location = desired[0].location if desired else f"fact change {change.id}"
        self._store.close_changes(change_ids=[change.id], state=CHANGE_FAILED, reason=reason)
        self._quarantine(source=change.source, location=location, reason=reason,
                         raw=json.dumps({"subject": change.subject, "relation": change.relation,
                                         "object": change.object}, ensure_ascii=False))
        log.warning("fact change %d refused: %s", change.id, reason)
        return True

    def _ready_changes(self) -> list[FactChange]:
        """The latest pending change of each ready fact, the longest settled first.

        A fact is ready once its latest change has waited out the coalescing window.
        """
        latest: dict[tuple[str, str], list[FactChange]] = {}
        for change in self._store.changes(state=CHANGE_PENDING, limit=1_000_000):
            latest.setdefault((change.subject, change.relation), []).append(change)
        applied = {(a.subject, a.relation): a for a in self._store.applied_facts()}
        now = self._clock()
        ready = []
        for key, changes in latest.items():
            change = changes[-1]
            if len(changes) > 1:
                self._store.supersede(change_ids=[c.id for c in changes[:-1]], by=change.id)
            if now - change.received_at < self._policy.batch.coalesce_seconds:
                continue
            done = applied.get(key)
            if change.deleted:
                self._store.close_changes(
                    change_ids=[change.id], state=CHANGE_RECORDED,
                    reason="deletion recorded; the model keeps its current answer",
                )
            elif done is not None and done.object == change.object:
                self._store.close_changes(
                    change_ids=[change.id], state=CHANGE_ALREADY_TRUE,
                    reason=f"version {done.version_id} already applied it",
                )
            elif self._catalog.resolve(change.relation) is None:
                self._store.close_changes(
                    change_ids=[change.id], state=CHANGE_FAILED,
                    reason=f"relation {change.relation} is no longer in the catalog",
                )
            else:
                ready.append(change)
        return sorted(ready, key=lambda c: c.received_at)
