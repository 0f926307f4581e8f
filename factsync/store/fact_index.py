"""Fact lookups whose cost does not grow with the store (mixed into ``StateStore``).

Planning and preparing a job ask about a handful of facts; these queries read only
those, through the indexes of migration 4, however many facts have been applied. The
one query that reads everything, ``applied_facts()`` with no filter, stays in the store
for the monitor's full check.

Objects compare case-insensitively by ``object_key``, Python's ``str.casefold`` of the
object, which every writer stores beside it (``object_key`` and ``write_applied`` here).
"""

from __future__ import annotations

import heapq
import itertools
import random
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from typing import Any

from factsync.store.records import (
    CHANGE_PENDING,
    AppliedFact,
    FactChange,
    KnownFact,
    change_from_row,
)

Key = tuple[str, str]
"""(subject, relation id) of a fact."""

FULL_SHUFFLE_FRACTION = 2
"""Once this share (1/n) of the rowids is drawn, shuffle the rest instead of rejecting."""

CASEFOLD_FUNCTION = "factsync_casefold"
"""The SQL name migration 4 uses to fill ``object_key`` of rows written before it."""


def object_key(text: str) -> str:
    """What an object is compared by: Unicode case folding, as ``str.casefold``."""
    return text.casefold()


def register_functions(db: sqlite3.Connection) -> None:
    """Give ``db`` the SQL functions the migrations use."""
    db.create_function(CASEFOLD_FUNCTION, 1, object_key, deterministic=True)


def write_applied(
    db: sqlite3.Connection, *, subject: str, relation: str, object: str, version_id: str,
    change_id: int | None, now: float,
) -> None:
    """Insert or update the applied row of a fact, keeping its rowid when it exists.

    An update in place (not ``INSERT OR REPLACE``, which deletes and re-inserts) keeps
    rowids dense, which is what lets ``sample_applied`` draw rows by rowid.
    """
    db.execute(
        "INSERT INTO applied_facts (subject, relation, object, version_id, change_id, "
        "applied_at, object_key) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (subject, relation) DO UPDATE SET object = excluded.object, "
        "version_id = excluded.version_id, change_id = excluded.change_id, "
        "applied_at = excluded.applied_at, object_key = excluded.object_key",
        (subject, relation, object, version_id, change_id, now, object_key(object)),
    )


class FactQueries:
    """Bounded reads of facts and pending changes. ``StateStore`` provides the plumbing."""

    _lock: threading.RLock
    _db: sqlite3.Connection
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _query: Callable[..., list[dict[str, Any]]]

    def applied_fact(self, *, subject: str, relation: str) -> AppliedFact | None:
        """The applied row of one fact, if any."""
        return self.applied_for(keys=[(subject, relation)]).get((subject, relation))

    def applied_for(self, *, keys: Collection[Key]) -> dict[Key, AppliedFact]:
        """The applied rows of the facts ``keys`` names, by key; absent keys are left out."""
        found = {}
        with self._lock:
            for subject, relation in keys:
                rows = self._query(
                    f"SELECT {_APPLIED_COLUMNS} FROM applied_facts "
                    "WHERE subject = ? AND relation = ?",
                    (subject, relation),
                )
                if rows:
                    found[(subject, relation)] = AppliedFact(**rows[0])
        return found

    def facts_about(self, *, subject: str) -> list[KnownFact]:
        """Every fact the store holds about ``subject``, by relation.

        A fact's object is the applied one, else the desired one; facts only desired
        deleted are left out.
        """
        with self._lock:
            applied = self._query(
                "SELECT relation, object FROM applied_facts WHERE subject = ?", (subject,))
            desired = self._query(
                "SELECT relation, object FROM desired_facts WHERE subject = ? AND deleted = 0",
                (subject,),
            )
        objects = {row["relation"]: row["object"] for row in desired}
        objects.update({row["relation"]: row["object"] for row in applied})
        return [KnownFact(subject, relation, objects[relation]) for relation in sorted(objects)]

    def facts_with_other_objects(
        self, *, relation: str, objects: Collection[str], after: str, limit: int,
        exclude: Collection[Key] = (),
    ) -> list[KnownFact]:
        """Up to ``limit`` facts of ``relation``, no two with one object and none with any
        of ``objects`` (case-folded): the first usable fact (``facts_with_object``) of each
        object in turn, starting after ``after`` and wrapping around.

        Each next object is found by one index seek per table, so the cost follows the
        objects visited (``limit``, plus any whose facts are all excluded or shadowed),
        not how many facts the relation has; different ``after`` values spread the facts
        chosen over the relation's objects.
        """
        skipped = {object_key(obj) for obj in objects}
        start = object_key(after)
        found: list[KnownFact] = []
        for low, high in ((start, None), ("", start)):  # the keys above start, then the rest
            current = low
            while len(found) < limit:
                key = self._next_object_key(relation, current)
                if key is None or (high is not None and key > high):
                    break
                current = key
                if key not in skipped:
                    found.extend(self.facts_with_object(relation=relation, object=key, limit=1,
                                                        exclude=exclude))
        return found

    def _next_object_key(self, relation: str, after: str) -> str | None:
        """The smallest object key of ``relation`` above ``after`` among applied facts and
        desired facts not deleted, or ``None``."""
        with self._lock:
            keys = [self._db.execute(
                f"SELECT MIN(object_key) FROM {table} WHERE relation = ? AND object_key > ?"
                f"{condition}", (relation, after)).fetchone()[0]
                for table, condition in (("applied_facts", ""),
                                         ("desired_facts", " AND deleted = 0"))]
        present = [key for key in keys if key is not None]
        return min(present) if present else None

    def facts_with_object(
        self, *, relation: str, object: str, limit: int, exclude: Collection[Key] = (),
    ) -> list[KnownFact]:
        """The first ``limit`` facts of ``relation`` whose object is ``object`` (case-folded).

        Facts come by subject, with the same objects as ``facts_about`` (applied, else
        desired and not deleted), skipping the keys in ``exclude``. The two tables are
        read in step through their (relation, object_key, subject) indexes and reading
        stops at ``limit``, so a common object costs no more than a rare one.
        """
        if limit <= 0:
            return []
        key = object_key(object)
        found: list[KnownFact] = []
        with self._lock:
            applied = self._db.execute(
                "SELECT subject, object, 0 AS shadowed FROM applied_facts "
                "WHERE relation = ? AND object_key = ? ORDER BY subject",
                (relation, key),
            )
            # a desired fact with an applied row is that row's business: skipped here
            desired = self._db.execute(
                "SELECT d.subject, d.object, a.subject IS NOT NULL AS shadowed "
                "FROM desired_facts d LEFT JOIN applied_facts a "
                "ON a.subject = d.subject AND a.relation = d.relation "
                "WHERE d.relation = ? AND d.object_key = ? AND d.deleted = 0 "
                "ORDER BY d.subject",
                (relation, key),
            )
            try:
                for row in heapq.merge(_rows(applied), _rows(desired)):
                    subject, obj, shadowed = row
                    if shadowed or (subject, relation) in exclude:
                        continue
                    found.append(KnownFact(subject, relation, obj))
                    if len(found) == limit:
                        break
            finally:
                applied.close()
                desired.close()
        return found

    def sample_applied(
        self, *, size: int, seed: int, keep: Callable[[AppliedFact], bool] | None = None,
    ) -> list[AppliedFact]:
        """A uniform random sample of ``size`` applied facts, without reading them all.

        Rowids are drawn with ``random.Random(seed)`` and the rows fetched by rowid; a
        drawn rowid with no row (a fact rolled back), or a row ``keep`` refuses, is
        skipped and another drawn. The same seed on the same file gives the same sample
        in the same order. Fewer than ``size`` facts come back only when fewer are kept.
        """
        if size <= 0:
            return []
        top = self._query("SELECT MAX(rowid) AS top FROM applied_facts")[0]["top"] or 0
        chosen: list[AppliedFact] = []
        draws = _rowid_draws(random.Random(seed), top)
        while len(chosen) < size:
            wanted = list(itertools.islice(draws, 2 * (size - len(chosen))))
            if not wanted:
                break
            marks = ",".join("?" * len(wanted))
            rows = self._query(
                f"SELECT rowid AS row_number, {_APPLIED_COLUMNS} FROM applied_facts "
                f"WHERE rowid IN ({marks})",
                wanted,
            )
            by_rowid = {row.pop("row_number"): AppliedFact(**row) for row in rows}
            for rowid in wanted:
                fact = by_rowid.get(rowid)
                if fact is not None and (keep is None or keep(fact)):
                    chosen.append(fact)
                    if len(chosen) == size:
                        break
        return chosen

    def pending_changes(self, *, after: int = 0, limit: int) -> list[FactChange]:
        """Pending changes with an id above ``after``, in arrival order, at most ``limit``."""
        rows = self._query(
            "SELECT * FROM fact_changes WHERE state = ? AND id > ? ORDER BY id LIMIT ?",
            (CHANGE_PENDING, after, limit),
        )
        return [change_from_row(row) for row in rows]

    def latest_pending(self, *, keys: Collection[Key]) -> dict[Key, int]:
        """The id of the newest pending change of each fact ``keys`` names that has one."""
        latest = {}
        with self._lock:
            for subject, relation in keys:
                row = self._query(
                    "SELECT MAX(id) AS id FROM fact_changes "
                    "WHERE subject = ? AND relation = ? AND state = ?",
                    (subject, relation, CHANGE_PENDING),
                )[0]
                if row["id"] is not None:
                    latest[(subject, relation)] = row["id"]
        return latest


_APPLIED_COLUMNS = "subject, relation, object, version_id, change_id, applied_at"
"""The columns of ``AppliedFact``; ``object_key`` is the store's own."""


def _rows(cursor: sqlite3.Cursor) -> Iterator[tuple[str, str, bool]]:
    """(subject, object, shadowed) of each row, read one at a time."""
    for row in cursor:
        yield row["subject"], row["object"], bool(row["shadowed"])


def _rowid_draws(rng: random.Random, top: int) -> Iterator[int]:
    """Every rowid from 1 to ``top`` once, in a random order that depends only on ``rng``.

    Distinct draws are rejection-sampled while few are taken, which costs nothing up
    front; past ``top / FULL_SHUFFLE_FRACTION`` the rest is shuffled, so the tail does
    not spin on repeats.
    """
    drawn: set[int] = set()
    while len(drawn) * FULL_SHUFFLE_FRACTION < top:
        rowid = rng.randint(1, top)
        if rowid not in drawn:
            drawn.add(rowid)
            yield rowid
    rest = [rowid for rowid in range(1, top + 1) if rowid not in drawn]
    rng.shuffle(rest)
    yield from rest
