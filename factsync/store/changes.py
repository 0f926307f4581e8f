"""Fact changes: reading them, closing them, and the one way a pending change enters the
queue (mixed into ``StateStore``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from factsync.store.fact_index import object_key, write_applied
from factsync.store.records import (
    CHANGE_ALREADY_TRUE,
    CHANGE_PENDING,
    CHANGE_SUPERSEDED,
    DesiredFact,
    FactChange,
    change_from_row,
    where_fields,
)


class ChangeRecords:
    """What the reconciler and operators do to fact changes. ``StateStore`` provides the
    plumbing and ``desired_facts``."""

    _clock: Callable[[], float]
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[dict[str, Any]]]
    desired_facts: Callable[..., list[DesiredFact]]

    def change(self, *, change_id: int) -> FactChange:
        """One fact change by id."""
        rows = self._query("SELECT * FROM fact_changes WHERE id = ?", (change_id,))
        if not rows:
            raise KeyError(f"no fact change {change_id}")
        return change_from_row(rows[0])

    def changes(
        self,
        *,
        state: str | None = None,
        subject: str | None = None,
        relation: str | None = None,
        job_id: int | None = None,
        limit: int = 1000,
    ) -> list[FactChange]:
        """Fact changes, oldest first, filtered by any of the given fields."""
        where, params = where_fields(state=state, subject=subject, relation=relation, job_id=job_id)
        rows = self._query(
            f"SELECT * FROM fact_changes {where} ORDER BY id LIMIT ?", (*params, limit)
        )
        return [change_from_row(row) for row in rows]

    def count_changes(self, *, states: Sequence[str]) -> int:
        """Changes in any of ``states``."""
        marks = ",".join("?" * len(states))
        sql = f"SELECT COUNT(*) AS n FROM fact_changes WHERE state IN ({marks})"
        return self._query(sql, tuple(states))[0]["n"]

    def supersede(self, *, change_ids: Sequence[int], by: int) -> None:
        """Mark older pending changes of a fact replaced by change ``by``."""
        self._set_changes(change_ids, state=CHANGE_SUPERSEDED, reason=f"replaced by change {by}")

    def close_changes(self, *, change_ids: Sequence[int], state: str, reason: str) -> None:
        """Move changes to a final ``state`` with ``reason``."""
        self._set_changes(change_ids, state=state, reason=reason)

    def record_already_true(self, *, change_id: int, version_id: str) -> None:
        """The live model already states the change: count it applied, without an edit."""
        change = self.change(change_id=change_id)
        now = self._clock()
        with self._transaction() as db:
            upsert_applied(db, change, version_id, now)
            db.execute(
                "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? WHERE id = ?",
                (CHANGE_ALREADY_TRUE, f"the live version {version_id} already states it",
                 now, change_id),
            )

    def revert(self, *, subject: str, relation: str) -> FactChange:
        """Queue an edit of an applied fact back to the object it replaced.

        The desired fact becomes that old object until the feed states an object other
        than the reverted one.

        Raises:
            KeyError: the fact was never applied by an edit.
        """
        now = self._clock()
        with self._transaction() as db:
            applied = db.execute(
                "SELECT a.object, c.old_object FROM applied_facts a JOIN fact_changes c "
                "ON c.id = a.change_id WHERE a.subject = ? AND a.relation = ? "
                "AND c.state = 'applied'",
                (subject, relation),
            ).fetchone()
            if applied is None or not applied["old_object"]:
                raise KeyError(f"no edited fact {subject!r} {relation} to revert")
            db.execute(
                "UPDATE desired_facts SET object = ?, object_key = ?, deleted = 0, source = ?, "
                "location = ?, received_at = ?, reverted_from = ? "
                "WHERE subject = ? AND relation = ?",
                (applied["old_object"], object_key(applied["old_object"]), "operator", "revert",
                 now, applied["object"], subject, relation),
            )
            change_id = add_pending_change(
                db, subject=subject, relation=relation, object=applied["old_object"],
                deleted=False, source="operator", now=now,
                reason=f"operator revert of {applied['object']!r}",
            )
        return self.change(change_id=change_id)

    def retry(self, *, subject: str, relation: str) -> FactChange | None:
        """Queue the desired state of a fact again (an operator's retry of a failure)."""
        desired = self.desired_facts(subject=subject, relation=relation)
        if not desired:
            return None
        fact = desired[0]
        now = self._clock()
        with self._transaction() as db:
            change_id = add_pending_change(
                db, subject=fact.subject, relation=fact.relation, object=fact.object,
                deleted=fact.deleted, source=fact.source, now=now,
                reason="retry asked by an operator",
            )
        return self.change(change_id=change_id)

    def _set_changes(self, change_ids: Sequence[int], *, state: str, reason: str) -> None:
        now = self._clock()
        with self._transaction() as db:
            db.executemany(
                "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? WHERE id = ?",
                [(state, reason, now, change_id) for change_id in change_ids],
            )


def add_pending_change(
    db: sqlite3.Connection, *, subject: str, relation: str, object: str, deleted: bool,
    source: str, now: float, reason: str = "",
) -> int:
    """Insert a pending change of a fact and supersede the fact's older pending ones.

    Only the latest word on a fact is ever edited, so a burst of updates leaves one
    pending change: the queue is as long as the facts waiting, not their updates.
    """
    change_id = db.execute(
        "INSERT INTO fact_changes (subject, relation, object, deleted, source, received_at, "
        "state, reason, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (subject, relation, object, int(deleted), source, now, CHANGE_PENDING, reason, now),
    ).lastrowid
    db.execute(
        "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? WHERE subject = ? "
        "AND relation = ? AND state = ? AND id < ?",
        (CHANGE_SUPERSEDED, f"replaced by change {change_id}", now, subject, relation,
         CHANGE_PENDING, change_id),
    )
    return change_id


def upsert_applied(
    db: sqlite3.Connection, change: FactChange, version_id: str, now: float
) -> None:
    """Record that ``version_id`` states ``change``'s fact."""
    write_applied(db, subject=change.subject, relation=change.relation, object=change.object,
                  version_id=version_id, change_id=change.id, now=now)
