"""``LiveChecker``: re-checks the live version and rolls it back per the policy's rules.

Each check measures, on the worker's model (the live version, between jobs): retention
of the applied facts (all, or a policy-sized sample), the canary facts, and perplexity
against the base model. A rollback rule broken on ``consecutive`` checks of the same
version in a row rolls the live pointer back to its parent through ``LiveVersion``,
which rebuilds the model and the engine state exactly as that version left them.
Otherwise, with the policy's ``monitor.restate_worn``, the applied facts the check found
no longer stated are queued to be edited again (``StateStore.restate``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from factsync.evaluation.kpis import Prompted, split_probes
from factsync.executors.local import Executor, LocalExecutor
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveVersion
from factsync.jobs.model_state import ModelState
from factsync.jobs.preparation import probes_of, retention_facts
from factsync.kpis.report import KpiValues, Metric
from factsync.policies.schema import OnRollback, Policy, RollbackRule
from factsync.store.records import MonitorCheck, Version
from factsync.store.store import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    """One check of the live version.

    Attributes:
        version: the version checked.
        values: what was measured.
        check: the check as the store recorded it (its failing metrics among it).
        rolled_back_by: the rule that rolled the version back, if one did.
        unrecoverable: a rule the base model itself breaks (nothing to roll back to).
        restated: applied facts (subject, relation) found no longer stated and queued
            to be edited again (``monitor.restate_worn``).
    """

    version: Version
    values: KpiValues
    check: MonitorCheck
    rolled_back_by: RollbackRule | None = None
    unrecoverable: RollbackRule | None = None
    restated: tuple[tuple[str, str], ...] = ()


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
        values, worn = self.measure()
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
        restated = self._restate(live, worn) if self._policy.monitor.restate_worn else []
        return CheckOutcome(live, values, check, restated=tuple(restated))

    def measure(self) -> tuple[KpiValues, list[tuple[str, str]]]:
        """The monitor's KPIs of the model as it is now, and the applied facts checked
        that it no longer states (subject, relation)."""
        self._checks += 1
        facts = retention_facts(self._store, self._catalog, exclude=set(),
                                sample=self._policy.monitor.retention_sample,
                                seed=self._checks)
        retention = probes_of(self._catalog, facts)
        measured = self._executor.measure(self._models.work, [], retention + self.canaries,
                                          self._texts)
        still_stated, canary = split_probes(measured.retained, len(self.canaries))
        worn = [(fact.subject, fact.relation)
                for fact, kept in zip(facts, measured.retained[: len(facts)], strict=True)
                if not kept]
        return KpiValues({
            Metric.RETENTION: still_stated,
            Metric.CANARY: canary,
            Metric.PERPLEXITY_RATIO: measured.perplexity / self._base_perplexity,
        }), worn

    def _restate(self, live: Version, worn: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Queue ``worn`` to be edited again, and say so."""
        queued = self._store.restate(
            facts=worn, reason=f"monitor: version {live.id} no longer states it")
        if queued:
            log.warning("monitor: version %s no longer states %d applied fact(s); queued to "
                        "be edited again: %s", live.id, len(queued),
                        "; ".join(f"{subject} {relation}" for subject, relation in queued))
        return queued
