"""``Monitor``: re-checks the live version on a schedule and rolls it back on regression.

Each check measures, on the worker's model (the live version, between jobs): retention
of the applied facts (all, or a policy-sized sample), the canary facts, and perplexity
against the base model. A rollback rule broken on ``consecutive`` checks of the same
version in a row rolls the live pointer back to its parent; the model is rebuilt from
the base weights and the parent's deltas, so its weights equal that version's exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from factsync.daemon.alerts import Alert, Alerter
from factsync.daemon.metrics import Metrics
from factsync.editing.delta import ModelDelta
from factsync.evaluation.fluency import perplexity
from factsync.evaluation.kpis import Prompted
from factsync.facts.canaries import CANDIDATE_CANARIES
from factsync.facts.catalog import RelationCatalog
from factsync.failpoints import failpoint
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import retention_probes, states
from factsync.policies.schema import Policy
from factsync.registry.versions import VersionFiles
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
        models: ModelState, versions: VersionFiles, metrics: Metrics, alerter: Alerter,
        canaries: list[Prompted], fluency_texts: Sequence[str], base_perplexity: float,
        on_live_change: Callable[[str], Any] = lambda event: None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._models = models
        self._versions = versions
        self._metrics = metrics
        self._alerter = alerter
        self.canaries = canaries
        self._texts = list(fluency_texts)
        self._base_perplexity = base_perplexity
        self._checks = 0
        self._on_live_change = on_live_change
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
        failing = sorted({r.metric for r in rules if r.broken_by(metrics.get(r.metric))})
        check = self._store.record_check(version_id=live.id, metrics=metrics, failing=failing)
        self._metrics.monitor_checks.labels("failing" if failing else "ok").inc()
        for metric, value in metrics.items():
            self._metrics.monitor_kpi.labels(metric).set(float("nan") if value is None else value)
        self._watch_quarantine()
        log.info("monitor: version %s %s%s", live.id,
                 ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if v is not None),
                 f"; failing {', '.join(failing)}" if failing else "")
        history = self._store.checks(version_id=live.id, limit=max(r.consecutive for r in rules))
        for rule in rules:
            recent = history[: rule.consecutive]
            if len(recent) == rule.consecutive and all(rule.metric in c.failing for c in recent):
                if live.parent_id is None:
                    self._alerter.fire(Alert(
                        "FactsyncBaseRegressed", "critical",
                        f"the base model breaks '{rule.describe()}'; nothing to roll back to"))
                    break
                value = metrics[rule.metric]
                self.rollback(
                    to_version_id=live.parent_id, trigger="monitor",
                    reason=f"monitor: {rule.describe()} (measured {value:.4g})",
                )
                break
        else:
            if not failing:
                self._alerter.resolve("FactsyncRollback")
        return check

    def measure(self) -> dict[str, float | None]:
        """The monitor's KPIs of the model as it is now."""
        self._checks += 1
        retention = retention_probes(self._store, self._catalog, exclude=set(),
                                     sample=self._policy.monitor.retention_sample,
                                     seed=self._checks)
        kept = states(self._models.work, retention)
        canary = states(self._models.work, self.canaries)
        return {
            "retention": sum(kept) / len(kept) if kept else None,
            "canary": sum(canary) / len(canary) if canary else None,
            "perplexity_ratio": perplexity(self._models.work, self._texts) / self._base_perplexity,
        }

    def rollback(self, *, to_version_id: str, trigger: str, reason: str) -> list[str]:
        """Move live to ``to_version_id`` (an ancestor) and rebuild the model exactly."""
        live = self._store.live_version()
        failpoint("monitor.before_rollback")
        rolled = self._store.rollback(
            to_version_id=to_version_id, reason=reason,
            requeue=self._policy.monitor.on_rollback == "requeue",
        )
        failpoint("monitor.rolled_back")
        lineage = self._store.lineage(version_id=to_version_id)
        self._models.rebuild([ModelDelta.load(self._versions.delta_path(v.id)) for v in lineage])
        target = self._store.live_version()
        self._metrics.rollbacks.labels(trigger).inc()
        self._metrics.live_version.info({"id": target.id, "parent": target.parent_id or ""})
        self._metrics.live_version_seq.set(target.seq)
        self._alerter.fire(Alert(
            "FactsyncRollback", "critical",
            f"live version rolled back from {live.id} to {target.id}: {reason}",
            details={"from": live.id, "to": target.id, "rolled_back": rolled,
                     "trigger": trigger, "cause": reason},
        ))
        log.warning("rolled back %s to %s (%s): %s", rolled, target.id, trigger, reason)
        self._on_live_change("rolled_back")
        return rolled

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
