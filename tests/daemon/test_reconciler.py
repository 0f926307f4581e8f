"""The reconciler on a real store: coalescing, closing, skipping and batching."""

from __future__ import annotations

import pytest

from factsync.daemon.reconciler import Reconciler
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.policies.schema import BatchPolicy, Policy
from factsync.store.store import StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = StateStore(tmp_path / "state.sqlite", clock=clock)
    yield store
    store.close()


def reconciler(store, clock, *, max_facts=10, coalesce=2.0):  # noqa: ANN001, ANN201
    policy = Policy(batch=BatchPolicy(max_facts=max_facts, coalesce_seconds=coalesce))
    return Reconciler(store=store, catalog=RelationCatalog.built_in(), policy=policy,
                      clock=clock)


def desire(store, subject, obj, *, deleted=False):  # noqa: ANN001, ANN201
    record = FactRecord(subject=subject, relation="P36", object=obj, source="t", location="x",
                        deleted=deleted)
    return store.record_desired(record=record, relation="P36")


def nothing_known(changes):  # noqa: ANN001, ANN201
    return [False] * len(changes)


def test_changes_wait_for_the_window_and_the_latest_one_wins(store, clock):
    first = desire(store, "France", "Lyon")
    desire(store, "France", "Nice")
    latest = desire(store, "France", "Marseille")
    planner = reconciler(store, clock)
    assert planner.plan(nothing_known) == []
    assert store.change(change_id=first.id).state == "superseded"
    clock.now += 2.5
    [job] = planner.plan(nothing_known)
    assert [c.id for c in store.changes(job_id=job.id)] == [latest.id]


def test_changes_are_batched_by_the_policy_limit(store, clock):
    for index in range(5):
        desire(store, f"Country {index}", "Paris")
    clock.now += 10
    jobs = reconciler(store, clock, max_facts=2).plan(nothing_known)
    assert [len(store.changes(job_id=j.id)) for j in jobs] == [2, 2, 1]


def test_facts_the_live_model_already_states_are_applied_without_an_edit(store, clock):
    known = desire(store, "France", "Paris")
    unknown = desire(store, "Italy", "Milan")
    clock.now += 10
    jobs = reconciler(store, clock).plan(lambda cs: [c.subject == "France" for c in cs])
    assert store.change(change_id=known.id).state == "already_true"
    assert [a.subject for a in store.applied_facts()] == ["France"]
    assert [c.id for c in store.changes(job_id=jobs[0].id)] == [unknown.id]


def test_deletions_are_recorded_and_applied_objects_are_not_edited_again(store, clock):
    desire(store, "France", "Paris")
    clock.now += 10
    reconciler(store, clock).plan(lambda cs: [True] * len(cs))
    again = store.retry(subject="France", relation="P36")
    deletion = desire(store, "Italy", "", deleted=True)
    clock.now += 10
    assert reconciler(store, clock).plan(nothing_known) == []
    assert store.change(change_id=again.id).state == "already_true"
    assert store.change(change_id=deletion.id).state == "recorded"
