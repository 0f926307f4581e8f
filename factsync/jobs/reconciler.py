"""``Reconciler``: turns pending fact changes into jobs.

For each fact (subject, relation) only the latest pending change counts: older ones are
marked superseded, so a burst of updates makes one edit. A change waits
``coalesce_seconds`` after it arrived for later ones to replace it. Deletions are
recorded without an edit, changes the applied state already holds are closed, and
changes the live model already states are counted as applied without an edit. The rest
wait their turn: each plan queues one job of at most ``max_facts``, the changes that
settled first, and the others stay pending, so an update arriving while earlier jobs run
still replaces its fact's change instead of queueing a second, stale edit.

A plan reads pending changes in arrival order, a page at a time, only until its job is
full, and looks up the applied state of just those facts: its cost follows the job, not
the number of facts ever applied or the length of the queue behind it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from factsync.facts.catalog import RelationCatalog
from factsync.failpoints import failpoint
from factsync.policies.schema import Policy
from factsync.store.records import (
    CHANGE_ALREADY_TRUE,
    CHANGE_FAILED,
    CHANGE_PENDING,
    CHANGE_RECORDED,
    AppliedFact,
    FactChange,
    Job,
)
from factsync.store.store import StateStore

log = logging.getLogger(__name__)

LiveCheck = Callable[[Sequence[FactChange]], list[bool]]
"""Whether the live model already states each change's object."""
UsableCheck = Callable[[FactChange], str | None]
"""Why the model cannot be edited to state a change (``None``: it can)."""

MAX_PAGE = 1000
"""Pending changes read at once at most; pages start at a job's size and double."""


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
        size = self._policy.batch.max_facts
        ready = self._ready_changes(first_page=size)
        live = self._store.live_version().id
        batch: list[FactChange] = []
        while len(batch) < size:
            candidates = list(itertools.islice(ready, size - len(batch)))
            if not candidates:
                break
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
        log.info("job %d queued with %d fact change(s); %d more pending", job.id, len(batch),
                 self._store.count_changes(states=(CHANGE_PENDING,)))
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

    def _ready_changes(self, *, first_page: int) -> Iterator[FactChange]:
        """The latest pending change of each ready fact, the longest settled first.

        A fact is ready once its latest change has waited out the coalescing window.
        Changes are read in arrival order, ``first_page`` at first and twice as many
        each page after, and only as far as the caller takes them. A fact's older
        pending changes are superseded when they are met; deletions, changes the applied
        state already holds and relations gone from the catalog are closed.
        """
        now = self._clock()
        after, page = 0, max(first_page, 1)
        while True:
            changes = self._store.pending_changes(after=after, limit=page)
            if not changes:
                return
            after, page = changes[-1].id, min(page * 2, MAX_PAGE)
            keys = {(c.subject, c.relation) for c in changes}
            latest = self._store.latest_pending(keys=keys)
            applied = self._store.applied_for(keys=keys)
            for change in changes:
                key = (change.subject, change.relation)
                newest = latest.get(key, change.id)
                if newest != change.id:
                    # the newer change comes later in arrival order and is judged there
                    self._store.supersede(change_ids=[change.id], by=newest)
                    continue
                if now - change.received_at < self._policy.batch.coalesce_seconds:
                    continue
                if self._closed(change, applied.get(key)):
                    continue
                yield change

    def _closed(self, change: FactChange, done: AppliedFact | None) -> bool:
        """Close ``change`` if it needs no edit; whether it was."""
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
            return False
        return True
