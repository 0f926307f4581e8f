"""Edit jobs and their transitions (mixed into ``StateStore``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from factsync.store.records import (
    CHANGE_QUEUED,
    JOB_ACTIVE,
    JOB_QUEUED,
    Job,
    JobEvent,
    decode_json_fields,
    where_fields,
)


class JobRecords:
    """What the reconciler and the job pipeline write. ``StateStore`` provides the
    plumbing."""

    _clock: Callable[[], float]
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[dict[str, Any]]]

    def create_job(self, *, change_ids: Sequence[int], policy_digest: str) -> Job:
        """A queued job holding ``change_ids``."""
        with self._transaction() as db:
            job_id = insert_job(db, change_ids, policy_digest, 1, self._clock())
        return self.job(job_id=job_id)

    def transition(
        self, *, job_id: int, state: str, reason: str, report: dict | None = None
    ) -> None:
        """Move a job to ``state``, with a reason, and optionally its KPI report."""
        now = self._clock()
        with self._transaction() as db:
            transition_job(db, job_id, state, reason, now)
            if report is not None:
                db.execute("UPDATE jobs SET report = ? WHERE id = ?", (json.dumps(report), job_id))

    def job(self, *, job_id: int) -> Job:
        """One job by id."""
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise KeyError(f"no job {job_id}")
        return Job(**decode_json_fields(rows[0], "report"))

    def jobs(self, *, state: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first."""
        where, params = where_fields(state=state)
        rows = self._query(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [Job(**decode_json_fields(row, "report")) for row in rows]

    def job_events(self, *, job_id: int) -> list[JobEvent]:
        """A job's transitions in order."""
        rows = self._query("SELECT * FROM job_events WHERE job_id = ? ORDER BY id", (job_id,))
        return [JobEvent(**row) for row in rows]

    def next_job(self) -> Job | None:
        """The oldest queued job."""
        jobs = self._query("SELECT id FROM jobs WHERE state = ? ORDER BY id LIMIT 1", (JOB_QUEUED,))
        return self.job(job_id=jobs[0]["id"]) if jobs else None

    def requeue_interrupted(self) -> list[int]:
        """Put jobs a crash or stop left half-way back in the queue; their ids."""
        now = self._clock()
        marks = ",".join("?" * len(JOB_ACTIVE))
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT id, state FROM jobs WHERE state IN ({marks}) AND state != ?",
                (*JOB_ACTIVE, JOB_QUEUED),
            ).fetchall()
            for row in rows:
                transition_job(
                    db, row["id"], JOB_QUEUED, f"interrupted while {row['state']}; rerun", now
                )
        return [row["id"] for row in rows]

    def count_jobs(self) -> dict[str, int]:
        """Jobs by state."""
        rows = self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    def finish_job(
        self,
        *,
        job_id: int,
        state: str,
        reason: str,
        change_states: dict[int, tuple[str, str]],
        report: dict | None = None,
        retry: Sequence[Sequence[int]] = (),
    ) -> list[Job]:
        """End a job that made no version: its outcome and each change's (state, reason).

        ``retry`` holds groups of changes to queue again, each in a new job of the next
        attempt; those jobs are returned, in order.
        """
        now = self._clock()
        retry_jobs = []
        with self._transaction() as db:
            transition_job(db, job_id, state, reason, now)
            if report is not None:
                db.execute("UPDATE jobs SET report = ? WHERE id = ?", (json.dumps(report), job_id))
            db.executemany(
                "UPDATE fact_changes SET state = ?, reason = ?, changed_at = ? WHERE id = ?",
                [(s, r, now, change_id) for change_id, (s, r) in change_states.items()],
            )
            job = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            retry_jobs = [insert_job(db, group, job["policy_digest"], job["attempt"] + 1, now)
                          for group in retry if group]
        return [self.job(job_id=retry_job) for retry_job in retry_jobs]


def insert_job(
    db: sqlite3.Connection, change_ids: Sequence[int], policy_digest: str, attempt: int,
    now: float,
) -> int:
    cursor = db.execute(
        "INSERT INTO jobs (state, created_at, updated_at, policy_digest, attempt) "
        "VALUES (?, ?, ?, ?, ?)",
        (JOB_QUEUED, now, now, policy_digest, attempt),
    )
    job_id = cursor.lastrowid
    db.execute(
        "INSERT INTO job_events (job_id, state, reason, at) VALUES (?, ?, ?, ?)",
        (job_id, JOB_QUEUED, f"{len(change_ids)} fact change(s), attempt {attempt}", now),
    )
    db.executemany(
        "UPDATE fact_changes SET state = ?, reason = '', job_id = ?, changed_at = ? WHERE id = ?",
        [(CHANGE_QUEUED, job_id, now, change_id) for change_id in change_ids],
    )
    return job_id


def transition_job(
    db: sqlite3.Connection, job_id: int, state: str, reason: str, now: float
) -> None:
    db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?", (state, now, job_id))
    db.execute(
        "INSERT INTO job_events (job_id, state, reason, at) VALUES (?, ?, ?, ?)",
        (job_id, state, reason, now),
    )
