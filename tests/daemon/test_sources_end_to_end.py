"""A PostgreSQL feed into the daemon on the real model, scraped by a real Prometheus."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.real_model

SCHEMA = """
CREATE TABLE kb (id serial PRIMARY KEY, entity text, prop text, value text,
                 changed timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION kb_changed() RETURNS trigger AS $$
BEGIN PERFORM pg_notify('kb_changed', NEW.id::text); RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER kb_notify AFTER INSERT OR UPDATE ON kb FOR EACH ROW EXECUTE FUNCTION kb_changed();
"""
PROMPT = "The native language of Danielle Darrieux is"


def promql(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


def test_rows_inserted_and_updated_in_postgres_become_versions_and_prometheus_sees_them(
    tmp_path, postgres, daemon_process, prometheus_server
):
    engine = sa.create_engine(postgres)
    with engine.begin() as db:
        db.exec_driver_sql(SCHEMA)
    daemon = daemon_process(
        tmp_path, policy={"batch": {"coalesce_seconds": 0.5}},
        connectors=[{"type": "sql", "url": postgres, "table": "kb", "poll_seconds": 60,
                     "listen_channel": "kb_changed",
                     "columns": {"subject": "entity", "relation": "prop", "object": "value",
                                 "updated_at": "changed"}}],
    )
    daemon.start()
    prometheus = prometheus_server(f"127.0.0.1:{daemon.metrics_port}")

    with engine.begin() as db:
        db.exec_driver_sql("INSERT INTO kb (entity, prop, value) "
                           "VALUES ('Danielle Darrieux', 'P103', 'English')")
    first = daemon.wait_for(lambda: [v for v in daemon.get("/versions") if v["seq"] == 1],
                            600, "a version from the inserted row")[0]
    assert first["facts"][0]["object"] == "English"

    with engine.begin() as db:
        db.exec_driver_sql("UPDATE kb SET value = 'German', changed = clock_timestamp()")
    second = daemon.wait_for(lambda: [v for v in daemon.get("/versions") if v["seq"] == 2],
                             600, "a version from the updated row")[0]
    assert second["live"] and second["facts"][0]["object"] == "German"
    status, answer = daemon.post("/generate", {"prompt": PROMPT, "max_new_tokens": 3})
    assert answer["text"].strip().startswith("German")

    connector = daemon.get("/status")["connectors"][0]
    assert connector["name"] == "sql:kb" and connector["up"]
    assert daemon.metric('factsync_connector_up{connector="sql:kb"}') == 1
    promotions = daemon.wait_for(
        lambda: [r for r in promql(prometheus, "factsync_promotions_total")
                 if float(r["value"][1]) == 2], 60, "Prometheus to scrape two promotions")
    assert promotions[0]["metric"]["job"] == "factsync"
    assert promql(prometheus, 'factsync_connector_lag_seconds{connector="sql:kb"}')
    engine.dispose()
