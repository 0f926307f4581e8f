"""Writing fact changes: the one way a pending change enters the queue."""

from __future__ import annotations

import sqlite3

from factsync.store.records import CHANGE_PENDING, CHANGE_SUPERSEDED


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
