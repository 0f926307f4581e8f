"""Metrics and alerts that follow a change of the live version."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alerter
from factsync.daemon.live_reporting import LiveReporter
from factsync.daemon.metrics import Metrics
from factsync.jobs.live import LiveChanged, LiveEvent
from factsync.store.store import StateStore


def test_a_rollback_is_alerted_counted_and_its_quarantined_facts_are_counted(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    base = store.live_version()
    child = replace(base, id="v1", seq=1, parent_id=base.id,
                    report={"candidate": {"edit_success": 1.0, "retention": 0.5}})
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    report = LiveReporter(metrics=metrics, alerter=alerter)
    sample = metrics.registry.get_sample_value

    report(LiveChanged(LiveEvent.PROMOTED, child, base))
    assert sample("factsync_live_version_sequence") == 1
    assert sample("factsync_live_kpi", {"metric": "efficacy_accuracy"}) == 1.0  # older name
    assert alerter.active() == []

    report(LiveChanged(LiveEvent.ROLLED_BACK, base, child, trigger="monitor",
                       reason="retention < 0.8", rolled_back=["v1"], quarantined=2))
    assert sample("factsync_live_version_sequence") == 0
    assert sample("factsync_rollbacks_total", {"trigger": "monitor"}) == 1
    assert sample("factsync_facts_quarantined_total", {"source": "rollback"}) == 2
    [alert] = alerter.active()
    assert alert.name == "FactsyncRollback" and "from v1 to base" in alert.summary
    alerter.close()
    store.close()
