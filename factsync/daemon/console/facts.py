"""What the facts pages show: facts found by subject and state, one fact's history with
the jobs and versions that handled it, and the quarantine."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from factsync.store.records import CHANGE_APPLIED, CHANGE_STATES, QuarantineEntry
from factsync.store.store import StateStore

FACT_STATES = (*CHANGE_STATES, "unknown")
"""States a fact can show: its latest change's, or ``unknown`` when it has none."""

_LINE = re.compile(r"^(?P<place>.+?)[:#](?P<line>\d+)$")
"""``people.jsonl:4``, ``kb:17``, ``https://host/facts.json#3``: a place and a line or row."""


@dataclass(frozen=True)
class FactRow:
    """A desired fact with its state and what the live version states."""

    subject: str
    relation: str
    object: str
    deleted: bool
    source: str
    location: str
    state: str
    reason: str
    applied_object: str | None
    applied_by: str | None
    applied_job: int | None


@dataclass(frozen=True)
class QuarantineRow:
    """A quarantine entry with its location split into the place and the line."""

    entry: QuarantineEntry
    place: str
    line: str | None


def facts_view(store: StateStore, *, query: str, state: str, limit: int) -> dict[str, Any]:
    """Values of the facts page: facts whose subject holds ``query`` (any case) in
    ``state`` (any state if empty), at most ``limit`` of them."""
    views = store.fact_views(state=state or None)
    if query:
        wanted = query.casefold()
        views = [v for v in views if wanted in v["subject"].casefold()]
    jobs = _jobs_of_versions(store)
    return {
        "facts": [_fact_row(v, jobs) for v in views[:limit]],
        "total": len(views),
        "query": query,
        "state": state,
        "states": FACT_STATES,
    }


def fact_view(store: StateStore, *, subject: str, relation: str) -> dict[str, Any]:
    """Values of one fact's page: the fact, its changes (newest first) and the object a
    revert would go back to (``None`` when it cannot be reverted).

    Raises:
        KeyError: the store holds no such fact.
    """
    views = store.fact_views(subject=subject, relation=relation)
    if not views:
        raise KeyError(f"no fact {subject!r} {relation}")
    changes = store.changes(subject=subject, relation=relation)
    applied = store.applied_facts(subject=subject, relation=relation)
    by_id = {c.id: c for c in changes}
    applied_change = by_id.get(applied[0].change_id) if applied else None
    return {
        "fact": _fact_row(views[0], _jobs_of_versions(store)),
        "changes": changes[::-1],
        # As ``StateStore.revert`` requires: applied by an edit that replaced an object.
        "revert_to": applied_change.old_object or None
        if applied_change is not None and applied_change.state == CHANGE_APPLIED else None,
    }


def quarantine_view(store: StateStore, *, limit: int) -> dict[str, Any]:
    """Values of the quarantine page: the latest ``limit`` entries."""
    rows = []
    for entry in store.quarantined(limit=limit):
        match = _LINE.match(entry.location)
        place, line = (match["place"], match["line"]) if match else (entry.location, None)
        rows.append(QuarantineRow(entry, place, line))
    return {"entries": rows, "total": store.quarantine_count(), "limit": limit}


def _jobs_of_versions(store: StateStore) -> dict[str, int | None]:
    return {v.id: v.job_id for v in store.versions()}


def _fact_row(view: dict[str, Any], jobs: dict[str, int | None]) -> FactRow:
    return FactRow(
        subject=view["subject"], relation=view["relation"], object=view["object"],
        deleted=view["deleted"], source=view["source"], location=view["location"],
        state=view["state"], reason=view["reason"], applied_object=view["applied_object"],
        applied_by=view["applied_by"], applied_job=jobs.get(view["applied_by"] or ""),
    )
