"""Alerts delivered to a real Alertmanager and a real webhook receiver."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry

from factsync.daemon.alerts import Alert, Alerter, AlertmanagerNotifier, WebhookNotifier
from factsync.daemon.metrics import Metrics


def active_alerts(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true", timeout=5) as response:
        return {a["labels"]["alertname"]: a for a in json.loads(response.read())}


def wait_until(condition, timeout=15.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


REJECTED = Alert("FactsyncJobRejected", "warning", "job 3 rejected: retention >= 0.9",
                 details={"job": 3})
ROLLBACK = Alert("FactsyncRollback", "critical", "rolled back from v2 to v1", key="v2")


def test_alerts_reach_alertmanager_and_the_webhook_once_and_resolve(alertmanager, http_receiver):
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([AlertmanagerNotifier(alertmanager), WebhookNotifier(http_receiver.url)],
                      metrics)
    alerter.fire(REJECTED)
    alerter.fire(REJECTED)  # deduplicated
    alerter.fire(ROLLBACK)
    alerts = wait_until(lambda: (a := active_alerts(alertmanager)) and len(a) == 2 and a)
    assert alerts["FactsyncRollback"]["labels"] == {
        "alertname": "FactsyncRollback", "severity": "critical", "service": "factsync",
        "key": "v2"}
    assert alerts["FactsyncJobRejected"]["annotations"]["summary"] == REJECTED.summary
    alerter.resolve("FactsyncJobRejected")
    alerter.close()
    wait_until(lambda: "FactsyncJobRejected" not in active_alerts(alertmanager))
    assert [(b["alert"], b["status"]) for b in http_receiver.bodies] == [
        ("FactsyncJobRejected", "firing"), ("FactsyncRollback", "firing"),
        ("FactsyncJobRejected", "resolved")]
    assert metrics.registry.get_sample_value(
        "factsync_alerts_total", {"alert": "FactsyncJobRejected"}) == 1


def test_a_delivery_that_keeps_failing_is_retried_then_counted(tmp_path):
    metrics = Metrics(CollectorRegistry())
    alerter = Alerter([WebhookNotifier("http://127.0.0.1:9/unreachable", timeout=0.5)],
                      metrics, retries=2, backoff_seconds=0.05)
    alerter.fire(ROLLBACK)
    alerter.close()
    assert metrics.registry.get_sample_value(
        "factsync_alert_delivery_failures_total", {"notifier": "webhook"}) == 1


def test_the_delivery_thread_starts_with_the_first_alert_to_send_and_close_stops_it(
    http_receiver,
):
    def alert_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "alerts"]

    silent = Alerter([], Metrics(CollectorRegistry()))
    silent.fire(REJECTED)  # kept as active, nothing to deliver to
    assert alert_threads() == [] and silent.active() == [REJECTED]
    silent.close()

    alerter = Alerter([WebhookNotifier(http_receiver.url, timeout=5)],
                      Metrics(CollectorRegistry()))
    assert alert_threads() == []
    alerter.fire(REJECTED)
    [thread] = alert_threads()
    alerter.close()
    assert not thread.is_alive() and len(http_receiver.bodies) == 1
    alerter.fire(Alert("FactsyncJobFailed", "critical", "after close"))
    assert alert_threads() == [] and len(http_receiver.bodies) == 1
