"""An ``Exporter`` starts its threads only when it has work: exports, then notifications."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alerter
from factsync.daemon.config import ExportConfig
from factsync.daemon.exporting import Exporter
from factsync.daemon.metrics import Metrics
from factsync.jobs.model_state import ModelState
from factsync.registry.exports import ExportDir
from factsync.registry.serving import WebhookServingNotifier
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore


def serving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "serving"]


@pytest.fixture
def build_exporter(tmp_path, tiny_loaded, http_receiver):
    """A factory of exporters that notify ``http_receiver``, on one fresh data dir."""
    store = StateStore(tmp_path / "state.sqlite")
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    models = ModelState(tiny_loaded("llama"))

    def build() -> Exporter:
        return Exporter(
            settings=ExportConfig(), exports=ExportDir(tmp_path / "exports"),
            versions=VersionFiles(tmp_path / "versions"), store=store, models=models,
            base_model="base", notifiers=[WebhookServingNotifier(http_receiver.url)],
            alerter=alerter, metrics=metrics,
        )

    yield build
    alerter.close()
    store.close()


def test_the_first_change_starts_the_thread_and_close_stops_it(build_exporter, http_receiver):
    exporter = build_exporter()
    assert serving_threads() == []
    exporter.export_live("started")
    [sender] = serving_threads()
    exporter.close()
    assert not sender.is_alive()
    assert [body["event"] for _, body in http_receiver.requests] == ["started"]


def test_an_exporter_closed_before_any_change_never_starts_one(build_exporter, http_receiver):
    exporter = build_exporter()
    exporter.close(timeout=0)
    exporter.export_live("started")
    assert serving_threads() == [] and http_receiver.requests == []


def test_requested_exports_run_on_their_own_thread_and_close_finishes_them(
    build_exporter, http_receiver
):
    exporter = build_exporter()
    for event in ("promoted", "promoted", "rolled_back"):
        exporter.request_export(event)  # returns at once; the worker goes on
    assert [t.name for t in threading.enumerate()].count("exports") == 1
    exporter.close()
    assert "exports" not in [t.name for t in threading.enumerate()]
    events = [body["event"] for _, body in http_receiver.requests]
    # Requests queued behind a running export make one export: the last event is sent.
    assert 1 <= len(events) <= 3 and events[-1] == "rolled_back"
    exporter.request_export("promoted")  # after close: ignored
    assert "exports" not in [t.name for t in threading.enumerate()]


def test_close_waits_for_the_export_under_way_beyond_the_notification_timeout(
    build_exporter, http_receiver
):
    exporter = build_exporter()
    exporter.request_export("started")
    # A process that exits while the export thread is inside torch can abort.
    exporter.close(timeout=0)
    assert "exports" not in [t.name for t in threading.enumerate()]
