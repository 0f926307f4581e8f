"""``Monitor``: runs the scheduled check of the live version and reports it.

The check itself and the rollback it may lead to are ``factsync.jobs.monitoring``;
this module turns each outcome into metrics and alerts, and alerts when the check
cannot run or the quarantine grows.
"""

from __future__ import annotations

import logging

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.jobs.monitoring import LiveChecker
from factsync.store.records import MonitorCheck
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


class Monitor:
    """Runs ``LiveChecker`` and tells operators what it found.

    Args:
        checker: measures the live version and rolls it back per the policy.
        store: the state store (for the quarantine's size).
        metrics: where checks are counted and KPIs shown.
        alerter: where operator alerts go.
    """

    def __init__(self, *, checker: LiveChecker, store: StateStore, metrics: Metrics,
                 alerter: Alerter) -> None:
        self._checker = checker
        self._store = store
        self._metrics = metrics
        self._alerter = alerter
        self._quarantine_seen = store.quarantine_count()

    def check(self) -> MonitorCheck | None:
        """One scheduled check; ``None`` when it could not measure."""
        live = self._store.live_version()
        try:
            outcome = self._checker.check()
        except Exception as exc:
            self._metrics.monitor_checks.labels("error").inc()
            log.exception("monitor check of version %s failed", live.id)
            self._alerter.fire(Alert(
                "FactsyncMonitorFailing", "warning",
                f"the monitor could not check live version {live.id}: {exc}"))
            return None
        self._alerter.resolve("FactsyncMonitorFailing")
        failing = outcome.check.failing
        self._metrics.monitor_checks.labels("failing" if failing else "ok").inc()
        self._metrics.facts_restated.inc(len(outcome.restated))
        for metric, value in outcome.values.values.items():
            self._metrics.monitor_kpi.labels(metric.value).set(
                float("nan") if value is None else value)
        self._watch_quarantine()
        log.info("monitor: version %s %s%s", outcome.version.id,
                 ", ".join(f"{k} {v:.3f}" for k, v in outcome.values.to_dict().items()
                           if v is not None),
                 f"; failing {', '.join(failing)}" if failing else "")
        if outcome.unrecoverable is not None:
            self._alerter.fire(Alert(
                "FactsyncBaseRegressed", "critical",
                f"the base model breaks '{outcome.unrecoverable.describe()}'; nothing to roll "
                "back to"))
        elif outcome.rolled_back_by is None and not failing:
            self._alerter.resolve("FactsyncRollback")
        return outcome.check

    def _watch_quarantine(self) -> None:
        count = self._store.quarantine_count()
        if count > self._quarantine_seen:
            self._alerter.fire(Alert(
                "FactsyncQuarantineGrowing", "warning",
                f"{count - self._quarantine_seen} new quarantined row(s) since the last check "
                f"({count} in all)", details={"quarantined": count}))
        else:
            self._alerter.resolve("FactsyncQuarantineGrowing")
        self._quarantine_seen = count
