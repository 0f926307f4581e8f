"""``deliver_rows`` into a real ``Ingest``: rows are committed in batches, and the
worker is woken once per batch that changed something, after it is durable."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from factsync.connectors.base import ScanReport, deliver_rows
from factsync.daemon.ingest import Ingest
from factsync.daemon.metrics import Metrics
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import parse_row
from factsync.store.store import StateStore


def rows(count, *, start=0):  # noqa: ANN001, ANN201
    return [({"subject": f"Country {n}", "relation": "P36", "object": f"City {n}"},
             f"a.jsonl:{n + 1}", None) for n in range(start, start + count)]


def test_each_batch_is_durable_before_the_worker_is_woken(store, tmp_path):
    reader = StateStore(tmp_path / "state.sqlite")
    seen_at_wake: list[int] = []
    ingest = Ingest(store=store, catalog=RelationCatalog.built_in(),
                    metrics=Metrics(CollectorRegistry()),
                    on_change=lambda: seen_at_wake.append(len(reader.desired_facts())))
    report = ScanReport()
    deliver_rows(ingest, rows(25) + [("{", "a.jsonl:26", "not valid JSON")],
                 source="file:a", report=report, rows_per_batch=10)
    assert seen_at_wake == [10, 20, 25]  # another connection saw each whole batch
    assert (report.rows, report.rejected) == (26, 1)
    assert reader.quarantine_count() == 1
    reader.close()


def test_a_batch_that_changes_nothing_wakes_no_one(store):
    woken: list[bool] = []
    ingest = Ingest(store=store, catalog=RelationCatalog.built_in(),
                    metrics=Metrics(CollectorRegistry()), on_change=lambda: woken.append(True))
    deliver_rows(ingest, rows(5), source="file:a", report=ScanReport())
    deliver_rows(ingest, rows(5), source="file:a", report=ScanReport())  # a re-scan
    assert woken == [True]
    [(raw, location, _)] = rows(1, start=7)
    assert ingest.record(parse_row(raw, source="file:a", location=location)) is True
    assert woken == [True, True]  # a row recorded on its own is a batch of one
