"""Monitor checks, rollbacks and folds of versions (mixed into ``StateStore``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from factsync.store.changes import add_pending_change
from factsync.store.fact_index import write_applied
from factsync.store.records import (
    CHANGE_PENDING,
    CHANGE_ROLLED_BACK,
    JOB_ROLLED_BACK,
    VERSION_ROLLED_BACK,
    Fold,
    MonitorCheck,
    Rollback,
    StoreError,
    Version,
    decode_json_fields,
)


class VersionHistory:
    """What the monitor and rollbacks write. ``StateStore`` provides the plumbing."""

    _clock: Callable[[], float]
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[dict[str, Any]]]
    live_version: Callable[[], Version]

    def record_check(self, *, version_id: str, metrics: dict, failing: list[str]) -> MonitorCheck:
        """Store one monitor check of ``version_id``."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO monitor_checks (version_id, at, metrics, failing) VALUES (?, ?, ?, ?)",
                (version_id, self._clock(), json.dumps(metrics), json.dumps(failing)),
            )
            check_id = cursor.lastrowid
        rows = self._query("SELECT * FROM monitor_checks WHERE id = ?", (check_id,))
        return MonitorCheck(**decode_json_fields(rows[0], "metrics", "failing"))

    def checks(self, *, version_id: str, limit: int = 20) -> list[MonitorCheck]:
        """The latest checks of ``version_id``, newest first."""
        rows = self._query(
            "SELECT * FROM monitor_checks WHERE version_id = ? ORDER BY id DESC LIMIT ?",
            (version_id, limit),
        )
        return [MonitorCheck(**decode_json_fields(r, "metrics", "failing")) for r in rows]

    def restate(self, *, facts: Sequence[tuple[str, str]], reason: str) -> list[tuple[str, str]]:
        """Queue again the applied facts ``facts`` (subject, relation) that the live
        model no longer states.

        In one transaction, each leaves the applied state, which says what the live
        version states, and gets a pending change to its desired object, so a later job
        edits it again; if that edit fails, the fact stays failed and unapplied rather
        than being found worn and queued again on every check. A fact no longer applied,
        deleted or desired with another object, or with a change already pending, is
        left alone. Returns the facts queued, in order.
        """
        now = self._clock()
        queued = []
        with self._transaction() as db:
            for subject, relation in facts:
                key = (subject, relation)
                applied = db.execute("SELECT object FROM applied_facts WHERE subject = ? "
                                     "AND relation = ?", key).fetchone()
                desired = db.execute("SELECT object, deleted, source FROM desired_facts "
                                     "WHERE subject = ? AND relation = ?", key).fetchone()
                pending = db.execute("SELECT 1 FROM fact_changes WHERE subject = ? AND "
                                     "relation = ? AND state = ?", (*key, CHANGE_PENDING)
                                     ).fetchone()
                if (applied is None or desired is None or desired["deleted"] or pending
                        or desired["object"] != applied["object"]):
                    continue
                db.execute("DELETE FROM applied_facts WHERE subject = ? AND relation = ?", key)
                add_pending_change(db, subject=subject, relation=relation,
                                   object=desired["object"], deleted=False,
                                   source=desired["source"], now=now, reason=reason)
                queued.append(key)
        return queued

    def record_fold(self, *, version_id: str, checkpoint: str, reason: str) -> Fold:
        """Record that ``version_id``'s weights were written as a serving base at
        ``checkpoint``; recording the same version again keeps the first record."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO folds (version_id, at, checkpoint, reason) "
                       "VALUES (?, ?, ?, ?)", (version_id, self._clock(), checkpoint, reason))
        return self.folds()[version_id]

    def folds(self) -> dict[str, Fold]:
        """Every fold, by version id."""
        return {row["version_id"]: Fold(**row)
                for row in self._query("SELECT * FROM folds ORDER BY at")}

    def version_rows(self, versions: Sequence[Version]) -> list[dict[str, Any]]:
        """``versions`` as JSON rows, each with ``live`` and its ``fold`` (or ``None``)."""
        live = self.live_version().id
        folds = self.folds()
        return [{**v.as_dict(), "live": v.id == live,
                 "fold": folds[v.id].as_dict() if v.id in folds else None} for v in versions]

    def rollback(self, *, to_version_id: str, reason: str, requeue: bool) -> Rollback:
        """Make ``to_version_id`` (an ancestor of the live version) live again.

        In one transaction: every version after it is marked rolled back with its job,
        the applied state becomes that of ``to_version_id``, and the facts those versions
        applied are queued again (``requeue``) or quarantined for an operator. Facts the
        rolled-back versions had found already true are re-checked.
        """
        now = self._clock()
        with self._transaction() as db:
            rolled = list(_versions_after(db, to_version_id))
            if not rolled:
                raise StoreError(f"version {to_version_id} is already live")
            marks = ",".join("?" * len(rolled))
            edited = []
            quarantined = 0
            for row in db.execute(
                f"SELECT id, job_id, facts FROM versions WHERE id IN ({marks})", rolled
            ).fetchall():
                edited += [(row["id"], fact) for fact in json.loads(row["facts"])]
                if row["job_id"] is not None:
                    db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?",
                               (JOB_ROLLED_BACK, now, row["job_id"]))
                    db.execute(
                        "INSERT INTO job_events (job_id, state, reason, at) VALUES (?, ?, ?, ?)",
                        (row["job_id"], JOB_ROLLED_BACK, reason, now),
                    )
            db.execute(f"UPDATE versions SET status = ? WHERE id IN ({marks})",
                       (VERSION_ROLLED_BACK, *rolled))
            edited_keys = {(f["subject"], f["relation"]) for _, f in edited}
            recheck = [
                (r["subject"], r["relation"])
                for r in db.execute(
                    f"SELECT subject, relation FROM applied_facts WHERE version_id IN ({marks})",
                    rolled,
                ).fetchall()
                if (r["subject"], r["relation"]) not in edited_keys
            ]
            db.execute(f"DELETE FROM applied_facts WHERE version_id IN ({marks})", rolled)
            _restore_applied(db, to_version_id, edited_keys, now)
            for version_id, fact in edited:
                why = f"{reason}; version {version_id} that applied it was rolled back"
                if requeue:
                    _queue_again(db, fact["subject"], fact["relation"], why, now)
                else:
                    db.execute(
                        "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? "
                        "WHERE id = ?",
                        (CHANGE_ROLLED_BACK, why, now, fact.get("change_id")),
                    )
                    quarantined += db.execute(
                        "INSERT OR IGNORE INTO quarantine (source, location, reason, raw, "
                        "first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
                        ("rollback", f"version {version_id}", why, json.dumps(fact), now, now),
                    ).rowcount
            for subject, relation in recheck:
                _queue_again(db, subject, relation, f"{reason}; re-check after rollback", now)
            db.execute("UPDATE live_pointer SET version_id = ?", (to_version_id,))
            db.execute("INSERT INTO live_history (version_id, at, reason) VALUES (?, ?, ?)",
                       (to_version_id, now, reason))
        return Rollback(rolled_back=rolled, quarantined=quarantined)


def _versions_after(db: sqlite3.Connection, ancestor: str) -> Iterator[str]:
    """The live version and its parents, newest first, down to (excluding) ``ancestor``."""
    current = db.execute("SELECT version_id FROM live_pointer").fetchone()["version_id"]
    chain = []
    while current != ancestor:
        if current is None:
            raise StoreError(f"version {ancestor} is not an ancestor of the live version")
        chain.append(current)
        current = db.execute("SELECT parent_id FROM versions WHERE id = ?",
                             (current,)).fetchone()["parent_id"]
    yield from chain


def _restore_applied(
    db: sqlite3.Connection, version_id: str, keys: set[tuple[str, str]], now: float
) -> None:
    """Applied rows for ``keys`` as the lineage of ``version_id`` last left them."""
    lineage = []
    current = version_id
    while current is not None:
        row = db.execute("SELECT id, parent_id, facts FROM versions WHERE id = ?",
                         (current,)).fetchone()
        lineage.append(row)
        current = row["parent_id"]
    for row in reversed(lineage):
        for fact in json.loads(row["facts"]):
            if (fact["subject"], fact["relation"]) in keys:
                write_applied(db, subject=fact["subject"], relation=fact["relation"],
                              object=fact["object"], version_id=row["id"],
                              change_id=fact.get("change_id"), now=now)


def _queue_again(db: sqlite3.Connection, subject: str, relation: str, reason: str,
                 now: float) -> None:
    desired = db.execute(
        "SELECT * FROM desired_facts WHERE subject = ? AND relation = ?", (subject, relation)
    ).fetchone()
    if desired is None or desired["deleted"]:
        return
    add_pending_change(db, subject=subject, relation=relation, object=desired["object"],
                       deleted=False, source=desired["source"], now=now, reason=reason)
