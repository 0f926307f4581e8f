"""What operators see when the live version changes: metrics, and an alert on rollback.

A rollback that quarantines the facts it undid counts them in
``factsync_facts_quarantined_total{source="rollback"}``, as ingest counts its refusals."""

from __future__ import annotations

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.jobs.live import LiveChanged, LiveEvent


class LiveReporter:
    """A ``LiveVersion`` listener that keeps the live-version metrics and alerts current."""

    def __init__(self, *, metrics: Metrics, alerter: Alerter) -> None:
        self._metrics = metrics
        self._alerter = alerter

    def __call__(self, change: LiveChanged) -> None:
        self._metrics.record_live(change.version)
        if change.event is not LiveEvent.ROLLED_BACK or change.previous is None:
            return
        self._metrics.rollbacks.labels(change.trigger or "operator").inc()
        if change.quarantined:  # counted like every other quarantined row
            self._metrics.facts_quarantined.labels("rollback").inc(change.quarantined)
            self._metrics.quarantine_size.inc(change.quarantined)
        self._alerter.fire(Alert(
            "FactsyncRollback", "critical",
            f"live version rolled back from {change.previous.id} to {change.version.id}: "
            f"{change.reason}",
            details={"from": change.previous.id, "to": change.version.id,
                     "rolled_back": change.rolled_back, "trigger": change.trigger,
                     "cause": change.reason},
        ))
