"""The SQL connector against a real PostgreSQL server, with LISTEN/NOTIFY."""

from __future__ import annotations

import time

import sqlalchemy as sa

from factsync.connectors.sql import SqlConnector

SCHEMA = """
CREATE TABLE facts (id serial PRIMARY KEY, subject text, relation text, object text,
                    updated_at timestamptz NOT NULL DEFAULT now(), deleted boolean DEFAULT false);
CREATE FUNCTION facts_changed() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('facts_changed', NEW.id::text); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER facts_notify AFTER INSERT OR UPDATE ON facts
    FOR EACH ROW EXECUTE FUNCTION facts_changed();
"""


def test_a_committed_change_is_picked_up_within_seconds_through_notify(postgres, store, ingest):
    engine = sa.create_engine(postgres)
    with engine.begin() as db:
        db.exec_driver_sql(SCHEMA)
        db.exec_driver_sql("INSERT INTO facts (subject, relation, object) "
                           "VALUES ('France', 'P36', 'Paris')")
    sql = SqlConnector(name="sql:facts", url=postgres, sink=ingest, table="facts",
                       poll_seconds=600, listen_channel="facts_changed")
    assert sql.scan().rows == 1
    sql.start()
    try:
        time.sleep(1.0)  # let LISTEN start
        with engine.begin() as db:
            db.exec_driver_sql("UPDATE facts SET object = 'Lyon', updated_at = now() "
                               "WHERE subject = 'France'")
        deadline = time.monotonic() + 10
        while store.desired_facts()[0].object != "Lyon" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert store.desired_facts()[0].object == "Lyon"  # long before the 600 s poll
    finally:
        sql.stop()
        engine.dispose()
