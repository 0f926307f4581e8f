"""``LiveChecker``: re-checks the live version and rolls it back per the policy's rules.

Each check measures, on the worker's model (the live version, between jobs): retention
of the applied facts (all, or a policy-sized sample), the canary facts, and perplexity
against the base model. A rollback rule broken on ``consecutive`` checks of the same
version in a row rolls the live pointer back to its parent through ``LiveVersion``,
which rebuilds the model and the engine state exactly as that version left them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from factsync.evaluation.kpis import Prompted, split_probes
from factsync.executors.local import Executor, LocalExecutor
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import retention_probes
from factsync.kpis.report import KpiValues, Metric
from factsync.policies.schema import OnRollback, Policy, RollbackRule
from factsync.store.records import MonitorCheck, Version
from factsync.store.store import StateStore


@dataclass(frozen=True)
class CheckOutcome:
    """One check of the live version.

    Attributes:
        version: the version checked.
        values: what was measured.
        check: the check as the store recorded it (its failing metrics among it).
        rolled_back_by: the rule that rolled the version back, if one did.
        unrecoverable: a rule the base model itself breaks (nothing to roll back to).
    """

    version: Version
    values: KpiValues
    check: MonitorCheck
    rolled_back_by: RollbackRule | None = None
    unrecoverable: RollbackRule | None = None


class LiveChecker:
    """Measures the live version and rolls it back when a rule says so.

    Args:
        store: the state store.
        catalog: known relations.
        policy: the monitor's rules and sizes.
        models: the worker's model, which is the live version between jobs.
        live: the owner of the live version, which rolls back.
        canaries: facts that must never change.
        fluency_texts: held-out text for perplexity.
        base_perplexity: the base model's perplexity on ``fluency_texts``.
        executor: where the probes and texts are scored (in this thread by default);
            the retention probes grow with the history of applied facts.
    """

    def __init__(
        self, *, store: StateStore, catalog: RelationCatalog, policy: Policy,
        models: ModelState, live: LiveVersion, canaries: list[Prompted],
        fluency_texts: Sequence[str], base_perplexity: float,
        executor: Executor | None = None,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._policy = policy
        self._models = models
        self._live = live
        self.canaries = canaries
        self._texts = list(fluency_texts)
        self._base_perplexity = base_perplexity
        self._executor = executor or LocalExecutor()
        self._checks = 0

    def check(self) -> CheckOutcome:
        """Measure, record, and roll back if a rule has been broken often enough.

        A measurement that fails raises and records nothing.
        """
        live = self._store.live_version()
        values = self.measure()
        rules = self._policy.monitor.rules
        failing = sorted({r.metric.value for r in rules if r.broken_by(values.get(r.metric))})
        check = self._store.record_check(version_id=live.id, metrics=values.to_dict(),
                                         failing=failing)
        history = self._store.checks(version_id=live.id, limit=max(r.consecutive for r in rules))
        for rule in rules:
            recent = history[: rule.consecutive]
            if len(recent) < rule.consecutive or not all(rule.metric.value in c.failing
                                                          for c in recent):
                continue
            if live.parent_id is None:
                return CheckOutcome(live, values, check, unrecoverable=rule)
            self._live.rollback(
                to_version_id=live.parent_id, trigger="monitor",
                reason=f"monitor: {rule.describe()} (measured {values.get(rule.metric):.4g})",
                requeue=self._policy.monitor.on_rollback is OnRollback.REQUEUE,
            )
            return CheckOutcome(live, values, check, rolled_back_by=rule)
        return CheckOutcome(live, values, check)

    def measure(self) -> KpiValues:
        """The monitor's KPIs of the model as it is now."""
        self._checks += 1
        retention = retention_probes(self._store, self._catalog, exclude=set(),
                                     sample=self._policy.monitor.retention_sample,
                                     seed=self._checks)
        measured = self._executor.measure(self._models.work, [], retention + self.canaries,
                                          self._texts)
        still_stated, canary = split_probes(measured.retained, len(self.canaries))
        return KpiValues({
            Metric.RETENTION: still_stated,
            Metric.CANARY: canary,
            Metric.PERPLEXITY_RATIO: measured.perplexity / self._base_perplexity,
        })
