"""``LiveChecker`` on a tiny model: checks are recorded, rules roll back after enough, and
applied facts the live model no longer states can be queued again."""

from __future__ import annotations

import time

from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.facts.catalog import RelationCatalog
from factsync.jobs.live import LiveEvent
from factsync.jobs.monitoring import LiveChecker
from factsync.jobs.reconciler import Reconciler
from factsync.kpis.report import Metric
from factsync.policies.schema import MonitorPolicy, OnRollback, Policy, RollbackRule

NEVER_MET = RollbackRule("perplexity_ratio", max=0.0, consecutive=2)
ALWAYS_MET = RollbackRule("perplexity_ratio", max=1e9, consecutive=1)


def checker(owner, rule: RollbackRule, *, on_rollback=OnRollback.QUARANTINE,  # noqa: ANN001
            restate_worn: bool = False) -> LiveChecker:
    policy = Policy(monitor=MonitorPolicy(rules=(rule,), on_rollback=on_rollback,
                                          restate_worn=restate_worn))
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


def test_applied_facts_a_check_finds_no_longer_stated_are_queued_to_be_edited_again(daemon):
    owner = daemon()
    version = owner.promote_edit(0)
    # The edit wears off: the worker's model loses it under the same live version.
    owner.models.rebuild([], version_id=version.id)
    plain = checker(owner, ALWAYS_MET).check()
    assert plain.values.get(Metric.RETENTION) == 0.0
    assert plain.restated == ()  # monitor.restate_worn is off by default
    assert owner.store.changes(state="pending") == []

    restating = checker(owner, ALWAYS_MET, restate_worn=True).check()
    assert restating.restated == (("Paris", "P36"),)
    assert owner.store.applied_fact(subject="Paris", relation="P36") is None
    [pending] = owner.store.changes(state="pending")
    assert (pending.subject, pending.object) == ("Paris", "Rome")
    assert pending.reason == f"monitor: version {version.id} no longer states it"
    # No longer in the applied state, the change is planned as an edit, not closed as held.
    planner = Reconciler(store=owner.store, catalog=RelationCatalog.built_in(),
                         policy=Policy(), clock=lambda: time.time() + 60)
    job = planner.plan(lambda changes: [False] * len(changes))  # the model does not state it
    assert job is not None
    assert [c.id for c in owner.store.changes(job_id=job.id)] == [pending.id]


def test_a_check_that_rolls_back_queues_nothing_of_its_own(daemon):
    owner = daemon()
    parent = owner.promote_edit(0)
    child = owner.promote_edit(1)
    owner.models.rebuild([], version_id=child.id)
    check = checker(owner, RollbackRule("perplexity_ratio", max=0.0, consecutive=1),
                    restate_worn=True)
    outcome = check.check()
    assert outcome.values.get(Metric.RETENTION) == 0.0  # both facts wore off
    assert outcome.rolled_back_by is not None and outcome.restated == ()
    assert owner.store.live_version().id == parent.id
