"""The host checks: the model directory is watched only once the model has loaded."""

from __future__ import annotations

import math
import shutil

from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alerter
from factsync.daemon.host_health import HostHealth
from factsync.daemon.metrics import Metrics


def test_a_model_not_yet_fetched_is_not_missing_until_it_has_loaded(tmp_path, tiny_loaded):
    model_dir = tmp_path / "model"  # the embedded default appears only after its fetch
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([], metrics)
    health = HostHealth(data_dir=tmp_path, model_dir=model_dir, min_free_bytes=0,
                        metrics=metrics, alerter=alerter)
    assert health.check() and alerter.active() == []
    assert math.isnan(metrics.registry.get_sample_value("factsync_model_dir_present"))

    loaded = tiny_loaded()
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    health.model_loaded()
    assert alerter.active() == []
    assert metrics.registry.get_sample_value("factsync_model_dir_present") == 1

    shutil.rmtree(model_dir)
    health.check()
    assert [a.name for a in alerter.active()] == ["FactsyncModelDirMissing"]
    assert metrics.registry.get_sample_value("factsync_model_dir_present") == 0
    alerter.close()
