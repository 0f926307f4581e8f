"""Schema migrations, applied in order; ``PRAGMA user_version`` holds how many ran."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: facts in, jobs, versions and the live pointer.
    """
    CREATE TABLE desired_facts (
        subject TEXT NOT NULL,
        relation TEXT NOT NULL,
        object TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL,
        location TEXT NOT NULL,
        record_id TEXT,
        updated_at TEXT,
        received_at REAL NOT NULL,
        PRIMARY KEY (subject, relation)
    );
    CREATE TABLE fact_changes (
        id INTEGER PRIMARY KEY,
        subject TEXT NOT NULL,
        relation TEXT NOT NULL,
        object TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL,
        received_at REAL NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        job_id INTEGER,
        old_object TEXT,
        changed_at REAL NOT NULL
    );
    CREATE INDEX fact_changes_state ON fact_changes (state);
    CREATE INDEX fact_changes_key ON fact_changes (subject, relation);
    CREATE TABLE applied_facts (
        subject TEXT NOT NULL,
        relation TEXT NOT NULL,
        object TEXT NOT NULL,
        version_id TEXT NOT NULL,
        change_id INTEGER,
        applied_at REAL NOT NULL,
        PRIMARY KEY (subject, relation)
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        policy_digest TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        version_id TEXT,
        report TEXT
    );
    CREATE INDEX jobs_state ON jobs (state);
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE versions (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        parent_id TEXT REFERENCES versions (id),
        job_id INTEGER,
        created_at REAL NOT NULL,
        policy_digest TEXT,
        facts TEXT NOT NULL,
        report TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'ok'
    );
    CREATE TABLE live_pointer (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version_id TEXT NOT NULL REFERENCES versions (id)
    );
    CREATE TABLE live_history (
        id INTEGER PRIMARY KEY,
        version_id TEXT NOT NULL REFERENCES versions (id),
        at REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        location TEXT NOT NULL,
        reason TEXT NOT NULL,
        raw TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        UNIQUE (source, location, reason, raw)
    );
    INSERT INTO versions (id, seq, parent_id, created_at, facts, report)
        VALUES ('base', 0, NULL, 0, '[]', '{}');
    INSERT INTO live_pointer VALUES (1, 'base');
    INSERT INTO live_history (version_id, at, reason) VALUES ('base', 0, 'initial state');
    """,
]

MIGRATIONS.append(
    # 2: the monitor's checks of the live version.
    """
    CREATE TABLE monitor_checks (
        id INTEGER PRIMARY KEY,
        version_id TEXT NOT NULL REFERENCES versions (id),
        at REAL NOT NULL,
        metrics TEXT NOT NULL,
        failing TEXT NOT NULL
    );
    CREATE INDEX monitor_checks_version ON monitor_checks (version_id, id);
    """
)

MIGRATIONS.append(
    # 3: an operator's revert of a fact holds until the feed states something new.
    """
    ALTER TABLE desired_facts ADD COLUMN reverted_from TEXT;
    """
)

MIGRATIONS.append(
    # 4: lookups that stay bounded as facts pile up. ``object_key`` is Python's
    # ``str.casefold`` of the object, written by the store with every row: SQLite's NOCASE
    # folds only ASCII, and neighbours must match "Straße" to "STRASSE" as casefold does.
    # ``factsync_casefold`` is a function each store connection registers; it fills the
    # rows written before this migration. The pending index answers "the latest pending
    # change of this fact" without reading the fact's whole history of changes.
    """
    ALTER TABLE applied_facts ADD COLUMN object_key TEXT;
    ALTER TABLE desired_facts ADD COLUMN object_key TEXT;
    UPDATE applied_facts SET object_key = factsync_casefold(object);
    UPDATE desired_facts SET object_key = factsync_casefold(object);
    CREATE INDEX applied_facts_object ON applied_facts (relation, object_key, subject);
    CREATE INDEX desired_facts_object ON desired_facts (relation, object_key, subject);
    CREATE INDEX fact_changes_fact_state ON fact_changes (subject, relation, state);
    """
)

MIGRATIONS.append(
    # 5: folds: versions whose whole weights became the serving base, so the adapter
    # carries only the versions after them (see ``daemon/exporting.py``).
    """
    CREATE TABLE folds (
        version_id TEXT PRIMARY KEY REFERENCES versions (id),
        at REAL NOT NULL,
        checkpoint TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    """
)

MIGRATIONS.append(
    # 6: the facts a few versions applied (what a new export adds, ``applied_by``) are
    # found without reading every applied fact.
    """
    CREATE INDEX applied_facts_version ON applied_facts (version_id);
    """
)
