"""``Monitor``: re-checks the live version on a schedule and rolls it back on regression.

Each check measures, on the worker's model (the live version, between jobs): retention
of the applied facts (all, or a policy-sized sample), the canary facts, and perplexity
against the base model. A rollback rule broken on ``consecutive`` checks of the same
version in a row rolls the live pointer back to its parent through ``LiveVersion``,
which rebuilds the model and the engine state exactly as that version left them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.kpis import Prompted
from factsync.facts.canaries import CANDIDATE_CANARIES
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import retention_probes, states
from factsync.kpis.report import KpiValues, Metric, mean
from factsync.policies.schema import OnRollback, Policy
from factsync.store.records import MonitorCheck
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


def choose_canaries(
    base: ModelState, store: StateStore, catalog: RelationCatalog,
    candidates: Sequence[tuple[str, str, str]] = CANDIDATE_CANARIES,
) -> list[Prompted]:
    """Candidate facts the base model states and the feed does not change."""
    fed = {(f.subject, f.relation) for f in store.desired_facts()}
    pairs = []
    for subject, relation_id, obj in candidates:
        relation = catalog.resolve(relation_id)
        if relation is not None and (subject, relation.id) not in fed:
            pairs.append((relation.template.format(subject), obj))
    return [p for p, ok in zip(pairs, states(base.work, pairs), strict=True) if ok]


class Monitor:
    """Checks the live version and rolls back per the policy's rules."""

    def __init__(
        self, *, store: StateStore, catalog: RelationCatalog, policy: Policy,
        models: ModelState, live: LiveVersion, metrics: Metrics, alerter: Alerter,
        canaries: list[Prompted], fluency_texts: Sequence[str], base_perplexity: float,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._models = models
        self._live = live
        self._metrics = metrics
        self._alerter = alerter
        self.canaries = canaries
        self._texts = list(fluency_texts)
        self._base_perplexity = base_perplexity
        self._checks = 0
        self._quarantine_seen = store.quarantine_count()

    def check(self) -> MonitorCheck | None:
        """One scheduled check; a rollback when a rule has been broken often enough."""
        live = self._store.live_version()
        try:
            metrics = self.measure()
        except Exception as exc:
            self._metrics.monitor_checks.labels("error").inc()
            log.exception("monitor check of version %s failed", live.id)
            self._alerter.fire(Alert(
                "FactsyncMonitorFailing", "warning",
                f"the monitor could not check live version {live.id}: {exc}"))
            return None
        self._alerter.resolve("FactsyncMonitorFailing")
        rules = self._policy.monitor.rules
        failing = sorted({r.metric.value for r in rules if r.broken_by(metrics.get(r.metric))})
        check = self._store.record_check(version_id=live.id, metrics=metrics.to_dict(),
                                         failing=failing)
        self._metrics.monitor_checks.labels("failing" if failing else "ok").inc()
        for metric, value in metrics.values.items():
            self._metrics.monitor_kpi.labels(metric.value).set(
                float("nan") if value is None else value)
        self._watch_quarantine()
        log.info("monitor: version %s %s%s", live.id,
                 ", ".join(f"{k} {v:.3f}" for k, v in metrics.to_dict().items()
                           if v is not None),
                 f"; failing {', '.join(failing)}" if failing else "")
        history = self._store.checks(version_id=live.id, limit=max(r.consecutive for r in rules))
        for rule in rules:
            recent = history[: rule.consecutive]
            if len(recent) == rule.consecutive and all(rule.metric.value in c.failing
                                                       for c in recent):
                if live.parent_id is None:
                    self._alerter.fire(Alert(
                        "FactsyncBaseRegressed", "critical",
                        f"the base model breaks '{rule.describe()}'; nothing to roll back to"))
                    break
                value = metrics.get(rule.metric)
                self._live.rollback(
                    to_version_id=live.parent_id, trigger="monitor",
                    reason=f"monitor: {rule.describe()} (measured {value:.4g})",
                    requeue=self._policy.monitor.on_rollback is OnRollback.REQUEUE,
                )
                break
        else:
            if not failing:
                self._alerter.resolve("FactsyncRollback")
        return check

    def measure(self) -> KpiValues:
        """The monitor's KPIs of the model as it is now."""
        self._checks += 1
        retention = retention_probes(self._store, self._catalog, exclude=set(),
                                     sample=self._policy.monitor.retention_sample,
                                     seed=self._checks)
        kept = states(self._models.work, retention)
        canary = states(self._models.work, self.canaries)
        return KpiValues({
            Metric.RETENTION: mean(kept),
            Metric.CANARY: mean(canary),
            Metric.PERPLEXITY_RATIO:
                perplexity(self._models.work, self._texts) / self._base_perplexity,
        })

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
