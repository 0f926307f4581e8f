"""A monitor that cannot run alerts and counts it, and never touches the live version."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alerter
from factsync.daemon.metrics import Metrics
from factsync.daemon.monitor import Monitor
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.monitoring import LiveChecker
from factsync.policies.schema import Policy
from factsync.registry.versions import VersionFiles
from factsync.store.store import StateStore

pytestmark = pytest.mark.reliability


def test_a_failing_check_raises_an_alert_and_a_metric_then_clears(
    tmp_path, tiny_loaded, tiny_engine
):
    store = StateStore(tmp_path / "state.sqlite")
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    loaded = tiny_loaded("llama")
    models = ModelState(loaded)
    live = LiveVersion(store=store, versions=VersionFiles(tmp_path / "versions"), models=models,
                       engine=tiny_engine(loaded))

    def monitor(texts: list[str]) -> Monitor:
        checker = LiveChecker(store=store, catalog=RelationCatalog.built_in(), policy=Policy(),
                              models=models, live=live, canaries=[], fluency_texts=texts,
                              base_perplexity=10.0)
        return Monitor(checker=checker, store=store, metrics=metrics, alerter=alerter)

    before = models.digest()
    assert monitor([]).check() is None  # a fluency set that cannot be measured
    assert [a.name for a in alerter.active()] == ["FactsyncMonitorFailing"]
    assert "no texts to measure perplexity on" in alerter.active()[0].summary
    assert metrics.registry.get_sample_value(
        "factsync_monitor_checks_total", {"outcome": "error"}) == 1
    assert store.live_version().id == "base" and models.digest() == before

    assert monitor(list(FLUENCY_TEXTS[:2])).check() is not None  # the cause is fixed
    assert alerter.active() == []
    alerter.close()
    store.close()
