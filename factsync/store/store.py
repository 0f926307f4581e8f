"""``StateStore``: every durable fact, job and version of the daemon, in one SQLite file.

Each method is one transaction, committed before it returns, so the caller can act on
what it wrote: after a crash the store says exactly how far things got.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factsync.facts.admission import Admission, HeldFact, admit
from factsync.facts.records import FactRecord
from factsync.store.changes import (
    ChangeRecords,
    add_pending_change,
    upsert_applied,
)
from factsync.store.fact_index import FactQueries, object_key, register_functions
from factsync.store.history import VersionHistory
from factsync.store.jobs import JobRecords, transition_job
from factsync.store.records import (
    CHANGE_APPLIED,
    JOB_PROMOTED,
    AppliedFact,
    DesiredFact,
    FactChange,
    QuarantineEntry,
    StoreError,
    Version,
    change_from_row,
    decode_json_fields,
    where_fields,
)
from factsync.store.schema import MIGRATIONS

Clock = Callable[[], float]


class StateStore(ChangeRecords, JobRecords, VersionHistory, FactQueries):
    """The daemon's state in SQLite (WAL, full sync). Safe to share between threads.

    Args:
        path: the SQLite file; created and migrated to the current schema unless
            ``read_only``.
        clock: the time now, in epoch seconds.
        read_only: open an existing file for reading only (SQLite ``mode=ro``), for
            commands that look at a running daemon's state: nothing is created or
            migrated, the schema must be exactly this factsync's, and every write raises
            ``StoreError``.
    """

    def __init__(self, path: Path, *, clock: Clock = time.time, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._clock = clock
        self._lock = threading.RLock()
        self._batch_depth = 0  # only the thread holding _lock inside batch() changes it
        if read_only:
            if not path.is_file():
                raise StoreError(f"no state file at {path}")
            self._db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False, isolation_level=None)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        register_functions(self._db)
        if read_only:
            self._check_schema()
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the writes made inside as one transaction, with one disk sync.

        Each write still succeeds or fails on its own (a savepoint), but a crash before
        the batch ends loses all of them, so callers keep batches to what they can redo
        (rows a source will deliver again). Other threads wait for the batch: keep it
        short.
        """
        with self._transaction():
            self._batch_depth += 1
            try:
                yield
            finally:
                self._batch_depth -= 1

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only; this command cannot change it")
        with self._lock:
            if self._batch_depth:
                yield from _savepoint(self._db)
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (a full disk does that)
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._db.execute(sql, params).fetchall()]

    def _migrate(self) -> None:
        with self._lock:
            current = self._db.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this factsync "
                    f"({len(MIGRATIONS)}); upgrade factsync"
                )
            for number in range(current, len(MIGRATIONS)):
                # executescript commits on its own, so the script and its version bump
                # run inside one explicit transaction.
                self._db.executescript(
                    f"BEGIN; {MIGRATIONS[number]}; PRAGMA user_version = {number + 1}; COMMIT;"
                )

    def _check_schema(self) -> None:
        """Refuse a file whose schema is not exactly this factsync's (read-only opens)."""
        found = self.schema_version
        expected = len(MIGRATIONS)
        if found > expected:
            raise StoreError(
                f"{self.path} has schema version {found}, newer than this factsync "
                f"({expected}); upgrade factsync"
            )
        if found < expected:
            raise StoreError(
                f"{self.path} has schema version {found}, older than this factsync "
                f"({expected}); start the daemon once to migrate it, then read it again"
            )

    @property
    def schema_version(self) -> int:
        """How many migrations have run."""
        return self._query("PRAGMA user_version")[0]["user_version"]

    def integrity_problems(self) -> list[str]:
        """What SQLite's integrity and foreign-key checks report; empty when sound."""
        problems = [r["integrity_check"] for r in self._query("PRAGMA integrity_check")]
        problems = [p for p in problems if p != "ok"]
        problems += [str(r) for r in self._query("PRAGMA foreign_key_check")]
        return problems

    # facts in

    def record_desired(
        self, *, record: FactRecord, relation: str, priorities: Mapping[str, int] | None = None,
    ) -> FactChange | None:
        """Store the feed's latest word on a fact; a new change when ``admit`` accepts it.

        ``relation`` is the catalog id ``record.relation`` resolved to; ``priorities``
        ranks sources (see ``factsync.facts.admission``). The rule is applied inside the
        write's transaction, so no other writer can slip between it and the write.
        """
        now = self._clock()
        with self._transaction() as db:
            row = db.execute(
                "SELECT object, deleted, source, reverted_from FROM desired_facts "
                "WHERE subject = ? AND relation = ?",
                (record.subject, relation),
            ).fetchone()
            held = None if row is None else HeldFact(
                object=row["object"], deleted=bool(row["deleted"]), source=row["source"],
                reverted_from=row["reverted_from"])
            if admit(record, held, priorities or {}) is not Admission.ACCEPTED:
                return None
            db.execute(
                "INSERT OR REPLACE INTO desired_facts (subject, relation, object, deleted, "
                "source, location, record_id, updated_at, received_at, reverted_from, "
                "object_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    record.subject,
                    relation,
                    record.object,
                    int(record.deleted),
                    record.source,
                    record.location,
                    record.record_id,
                    record.updated_at,
                    now,
                    object_key(record.object),
                ),
            )
            change_id = add_pending_change(
                db, subject=record.subject, relation=relation, object=record.object,
                deleted=record.deleted, source=record.source, now=now,
            )
        return self.change(change_id=change_id)

    def quarantine(self, *, source: str, location: str, reason: str, raw: str) -> bool:
        """Keep input that cannot be used; ``True`` the first time it is seen."""
        now = self._clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO quarantine (source, location, reason, raw, first_seen, "
                "last_seen) VALUES (?, ?, ?, ?, ?, ?)",
                (source, location, reason, raw, now, now),
            )
            if cursor.rowcount == 0:
                db.execute(
                    "UPDATE quarantine SET last_seen = ? WHERE source = ? AND location = ? "
                    "AND reason = ? AND raw = ?",
                    (now, source, location, reason, raw),
                )
                return False
        return True

    def quarantined(self, *, limit: int = 100) -> list[QuarantineEntry]:
        """The most recent quarantine entries first."""
        rows = self._query("SELECT * FROM quarantine ORDER BY id DESC LIMIT ?", (limit,))
        return [QuarantineEntry(**row) for row in rows]

    def quarantine_count(self) -> int:
        """Entries in quarantine."""
        return self._query("SELECT COUNT(*) AS n FROM quarantine")[0]["n"]

    def desired_facts(
        self, *, subject: str | None = None, relation: str | None = None
    ) -> list[DesiredFact]:
        """Desired facts, optionally of one subject and/or relation."""
        where, params = where_fields(subject=subject, relation=relation)
        rows = self._query(f"SELECT * FROM desired_facts {where} ORDER BY subject", params)
        return [DesiredFact(**{**_public(row), "deleted": bool(row["deleted"])}) for row in rows]

    def fact_views(
        self, *, subject: str | None = None, relation: str | None = None,
        state: str | None = None,
    ) -> list[dict[str, Any]]:
        """Desired facts with their latest change's state and reason and what is applied.

        Each row is a ``DesiredFact`` as a mapping plus ``state``, ``reason``,
        ``applied_object`` and ``applied_by`` (the version), filtered by any argument.
        """
        where, params = where_fields(**{"d.subject": subject, "d.relation": relation})
        rows = self._query(
            "SELECT d.*, COALESCE(c.state, 'unknown') AS state, COALESCE(c.reason, '') AS reason,"
            " a.object AS applied_object, a.version_id AS applied_by FROM desired_facts d"
            " LEFT JOIN fact_changes c ON c.id = (SELECT MAX(id) FROM fact_changes"
            " WHERE subject = d.subject AND relation = d.relation)"
            " LEFT JOIN applied_facts a ON a.subject = d.subject AND a.relation = d.relation"
            f" {where} ORDER BY d.subject, d.relation",
            params,
        )
        return [{**_public(row), "deleted": bool(row["deleted"])} for row in rows
                if state is None or row["state"] == state]

    # applied facts

    def applied_facts(
        self, *, subject: str | None = None, relation: str | None = None
    ) -> list[AppliedFact]:
        """Facts the live version states, optionally of one subject and/or relation."""
        where, params = where_fields(subject=subject, relation=relation)
        rows = self._query(f"SELECT * FROM applied_facts {where} ORDER BY applied_at", params)
        return [AppliedFact(**_public(row)) for row in rows]

    def applied_by(self, version_ids: Collection[str]) -> list[AppliedFact]:
        """The applied facts that one of ``version_ids`` applied (and no later version
        changed), oldest first; the cost follows those facts, not all applied ones."""
        if not version_ids:
            return []
        marks = ",".join("?" * len(version_ids))
        rows = self._query(f"SELECT * FROM applied_facts WHERE version_id IN ({marks}) "
                           "ORDER BY applied_at", tuple(version_ids))
        return [AppliedFact(**_public(row)) for row in rows]

    # versions

    def promote(
        self,
        *,
        job_id: int,
        version_id: str,
        parent_id: str,
        policy_digest: str,
        report: dict,
        applied: dict[int, str],
        left_out: dict[int, tuple[str, str]],
    ) -> Version:
        """Record a new version and make it live, all in one transaction.

        ``applied`` maps the change ids the version applied to their old objects;
        ``left_out`` gives the (state, reason) of the job's changes it did not apply.
        """
        if not applied:
            raise ValueError(f"job {job_id}: a version must apply at least one fact")
        now = self._clock()
        with self._transaction() as db:
            live = db.execute("SELECT version_id FROM live_pointer").fetchone()["version_id"]
            if live != parent_id:
                raise StoreError(f"live version moved from {parent_id} to {live} during the job")
            changes = [
                change_from_row(dict(row))
                for row in db.execute(
                    f"SELECT * FROM fact_changes WHERE id IN ({','.join('?' * len(applied))})",
                    tuple(applied),
                ).fetchall()
            ]
            facts = [
                {"subject": c.subject, "relation": c.relation, "object": c.object,
                 "old_object": applied[c.id], "change_id": c.id}
                for c in changes
            ]
            seq = db.execute("SELECT MAX(seq) AS n FROM versions").fetchone()["n"] + 1
            db.execute(
                "INSERT INTO versions (id, seq, parent_id, job_id, created_at, policy_digest, "
                "facts, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (version_id, seq, parent_id, job_id, now, policy_digest, json.dumps(facts),
                 json.dumps(report)),
            )
            _move_live(db, version_id, f"promoted job {job_id}", now)
            for change in changes:
                upsert_applied(db, change, version_id, now)
                db.execute(
                    "UPDATE fact_changes SET state = ?, reason = ?, old_object = ?, "
                    "changed_at = ? WHERE id = ?",
                    (CHANGE_APPLIED, f"applied by version {version_id}", applied[change.id],
                     now, change.id),
                )
            db.executemany(
                "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? WHERE id = ?",
                [(s, r, now, change_id) for change_id, (s, r) in left_out.items()],
            )
            transition_job(db, job_id, JOB_PROMOTED, f"version {version_id} is live", now)
            db.execute(
                "UPDATE jobs SET version_id = ?, report = ? WHERE id = ?",
                (version_id, json.dumps(report), job_id),
            )
        return self.version(version_id=version_id)

    def version(self, *, version_id: str) -> Version:
        """One version by id."""
        rows = self._query("SELECT * FROM versions WHERE id = ?", (version_id,))
        if not rows:
            raise KeyError(f"no version {version_id}")
        return Version(**decode_json_fields(rows[0], "facts", "report"))

    def versions(self) -> list[Version]:
        """All versions, newest first."""
        rows = self._query("SELECT * FROM versions ORDER BY seq DESC")
        return [Version(**decode_json_fields(row, "facts", "report")) for row in rows]

    def live_version(self) -> Version:
        """The version the live pointer names."""
        live = self._query("SELECT version_id FROM live_pointer")[0]["version_id"]
        return self.version(version_id=live)

    def lineage(self, *, version_id: str) -> list[Version]:
        """The versions from the base (excluded) down to ``version_id``, oldest first."""
        chain = []
        version = self.version(version_id=version_id)
        while version.parent_id is not None:
            chain.append(version)
            version = self.version(version_id=version.parent_id)
        return chain[::-1]

    def live_history(self) -> list[dict[str, Any]]:
        """Every move of the live pointer, oldest first."""
        return self._query("SELECT version_id, at, reason FROM live_history ORDER BY id")


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A fact row without the store's own lookup column."""
    row.pop("object_key", None)
    return row


def _move_live(db: sqlite3.Connection, version_id: str, reason: str, now: float) -> None:
    db.execute("UPDATE live_pointer SET version_id = ?", (version_id,))
    db.execute(
        "INSERT INTO live_history (version_id, at, reason) VALUES (?, ?, ?)",
        (version_id, now, reason),
    )


def _savepoint(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write inside a batch: undone alone if it fails, committed with the batch."""
    db.execute("SAVEPOINT write")
    try:
        yield db
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK TO write")
            db.execute("RELEASE write")
        raise
    db.execute("RELEASE write")
