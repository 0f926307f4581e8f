"""``LiveChecker`` on a tiny model: checks are recorded, rules roll back after enough."""

from __future__ import annotations

from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveEvent
from factsync.jobs.monitoring import LiveChecker
from factsync.kpis.report import Metric
from factsync.policies.schema import MonitorPolicy, OnRollback, Policy, RollbackRule

NEVER_MET = RollbackRule("perplexity_ratio", max=0.0, consecutive=2)
ALWAYS_MET = RollbackRule("perplexity_ratio", max=1e9, consecutive=1)


def checker(owner, rule: RollbackRule, *, on_rollback=OnRollback.QUARANTINE) -> LiveChecker:  # noqa: ANN001
    policy = Policy(monitor=MonitorPolicy(rules=(rule,), on_rollback=on_rollback))
    return LiveChecker(store=owner.store, catalog=RelationCatalog.built_in(), policy=policy,
                       models=owner.models, live=owner.live, canaries=[],
                       fluency_texts=FLUENCY_TEXTS[:2], base_perplexity=10.0)


def test_a_rule_broken_on_enough_checks_in_a_row_rolls_back_to_the_parent(daemon):
    owner = daemon()
    parent = owner.promote_edit(0)
    child = owner.promote_edit(1)
    check = checker(owner, NEVER_MET)

    first = check.check()
    assert first.rolled_back_by is None and first.check.failing == ["perplexity_ratio"]
    assert owner.store.live_version().id == child.id

    second = check.check()
    assert second.rolled_back_by == NEVER_MET and second.version.id == child.id
    assert owner.store.live_version().id == parent.id
    assert owner.events[-1].event is LiveEvent.ROLLED_BACK
    assert owner.events[-1].trigger == "monitor"
    assert "perplexity_ratio > 0 on 2 check(s) in a row" in owner.events[-1].reason


def test_a_passing_check_is_recorded_and_moves_nothing(daemon):
    owner = daemon()
    version = owner.promote_edit(0)
    outcome = checker(owner, ALWAYS_MET).check()
    assert outcome.check.failing == [] and outcome.rolled_back_by is None
    retention = outcome.values.get(Metric.RETENTION)  # of the one applied fact
    assert retention in (0.0, 1.0)
    assert outcome.values.get(Metric.CANARY) is None  # no canaries to check
    assert owner.store.checks(version_id=version.id)[0].id == outcome.check.id


def test_the_base_breaking_a_rule_is_unrecoverable_not_a_rollback(daemon):
    owner = daemon()
    outcome = checker(owner, RollbackRule("perplexity_ratio", max=0.0, consecutive=1)).check()
    assert outcome.unrecoverable is not None and outcome.rolled_back_by is None
    assert owner.store.live_version().id == "base"
