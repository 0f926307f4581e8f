"""The SQL connector against a real SQLite database file."""

from __future__ import annotations

import sqlite3

import pytest
from prometheus_client import CollectorRegistry

from factsync.connectors.sql import SqlConnector
from factsync.daemon.ingest import Ingest
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "feed.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kb (pk INTEGER PRIMARY KEY, entity TEXT, prop TEXT, "
                   "value TEXT, changed INTEGER, gone INTEGER DEFAULT 0)")
        db.executemany("INSERT INTO kb (entity, prop, value, changed) VALUES (?, ?, ?, ?)", [
            ("France", "capital", "Paris", 1), ("Italy", "P36", "Rome", 2),
            ("Spain", "P36", None, 3),
        ])
    return path


def connector(database, ingest, **kw):  # noqa: ANN001, ANN201
    return SqlConnector(
        name="sql:kb", url=f"sqlite:///{database}", sink=ingest, table="kb",
        columns={"id": "pk", "subject": "entity", "relation": "prop", "object": "value",
                 "updated_at": "changed", "deleted": "gone"}, **kw)


def test_a_full_read_maps_columns_and_quarantines_bad_rows_by_key(database, ingest, store):
    sql = connector(database, ingest)
    report = sql.scan()
    assert (report.rows, report.rejected) == (3, 1)
    assert sorted((f.subject, f.object) for f in store.desired_facts()) == [
        ("France", "Paris"), ("Italy", "Rome")]
    [bad] = store.quarantined()
    assert (bad.location, bad.reason) == ("kb:3", "missing field 'object'")
    assert sql.health.up and sql.health.lag_seconds() < 60


def test_polls_read_only_rows_changed_since_the_last_read(database, ingest, store):
    sql = connector(database, ingest)
    sql.scan()
    with sqlite3.connect(database) as db:
        db.execute("UPDATE kb SET value = 'Lyon', changed = 10 WHERE entity = 'France'")
        db.execute("UPDATE kb SET gone = 1, changed = 11 WHERE entity = 'Italy'")
    report = sql.poll()
    assert report.rows == 2
    facts = {f.subject: f for f in store.desired_facts()}
    assert facts["France"].object == "Lyon" and facts["Italy"].deleted
    assert sql.poll().rows == 0


def test_a_query_source_and_a_broken_database_are_reported(database, ingest):
    sql = SqlConnector(name="sql:q", url=f"sqlite:///{database}", sink=ingest,
                       query="SELECT entity AS subject, prop AS relation, value AS object "
                             "FROM kb WHERE value IS NOT NULL")
    assert sql.scan().rows == 2
    with sqlite3.connect(database) as db:
        db.execute("DROP TABLE kb")
    report = sql.scan()
    assert report.errors and not sql.health.up
    assert sum(sql.health.errors.values()) == 1


def test_missing_columns_are_a_schema_error_not_a_crash(database, ingest):
    sql = SqlConnector(name="sql:kb", url=f"sqlite:///{database}", sink=ingest, table="kb")
    report = sql.scan()
    assert report.errors == ["kb has no column(s) subject, relation, object"]
    assert sql.health.errors["schema"] == 1


def test_a_source_of_higher_priority_keeps_its_facts(store, database):
    from factsync.facts.records import FactRecord

    ingest = Ingest(store=store, catalog=RelationCatalog.built_in(),
                    metrics=Metrics(CollectorRegistry()), priorities={"sql:kb": 10})
    connector(database, ingest).scan()
    ingest.accept(FactRecord("France", "P36", "Lyon", "file:facts", "a.jsonl:1"))
    assert store.desired_facts(subject="France")[0].object == "Paris"
    ingest.accept(FactRecord("Germany", "P36", "Berlin", "file:facts", "a.jsonl:2"))
    assert store.desired_facts(subject="Germany")[0].source == "file:facts"


def test_building_connects_to_nothing_and_a_database_down_at_first_read_is_retried(
    tmp_path, ingest
):
    database = tmp_path / "later" / "feed.db"  # sqlite cannot open a file in no directory
    sql = connector(database, ingest)
    assert not database.parent.exists()
    report = sql.scan()
    assert report.errors == ["unable to open database file"]
    assert not sql.health.up and sql.health.errors["connection"] == 1
    database.parent.mkdir()
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE kb (pk INTEGER PRIMARY KEY, entity TEXT, prop TEXT, "
                   "value TEXT, changed INTEGER, gone INTEGER DEFAULT 0)")
        db.execute("INSERT INTO kb (entity, prop, value, changed) "
                   "VALUES ('France', 'P36', 'Paris', 1)")
    assert sql.poll().rows == 1
    assert sql.health.up
