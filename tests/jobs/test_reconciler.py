"""The reconciler on a real store: coalescing, closing, skipping and batching."""

from __future__ import annotations

import pytest

from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.reconciler import Reconciler
from factsync.policies.schema import BatchPolicy, Policy
from factsync.store.store import StateStore


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
    assert planner.plan(nothing_known) is None
    assert store.change(change_id=first.id).state == "superseded"
    clock.now += 2.5
    job = planner.plan(nothing_known)
    assert [c.id for c in store.changes(job_id=job.id)] == [latest.id]


def test_each_plan_queues_one_job_of_the_longest_settled_facts(store, clock):
    for index in range(5):
        desire(store, f"Country {index}", "Paris")
        clock.now += 1
    clock.now += 10
    planner = reconciler(store, clock, max_facts=2)
    first = planner.plan(nothing_known)
    assert [c.subject for c in store.changes(job_id=first.id)] == ["Country 0", "Country 1"]
    update = desire(store, "Country 2", "Rome")  # still pending: replaces, no stale edit
    clock.now += 10
    jobs = [planner.plan(nothing_known), planner.plan(nothing_known)]
    assert [[c.subject for c in store.changes(job_id=j.id)] for j in jobs] == [
        ["Country 3", "Country 4"], ["Country 2"]]
    assert store.changes(job_id=jobs[1].id)[0].id == update.id
    assert planner.plan(nothing_known) is None


def test_facts_already_stated_do_not_take_a_place_in_the_job(store, clock):
    for index in range(4):
        desire(store, f"Country {index}", "Paris")
    clock.now += 10
    checked = []

    def even_known(changes):  # noqa: ANN001, ANN202
        checked.append(len(changes))
        return [int(c.subject[-1]) % 2 == 0 for c in changes]

    job = reconciler(store, clock, max_facts=2).plan(even_known)
    assert [c.subject for c in store.changes(job_id=job.id)] == ["Country 1", "Country 3"]
    assert checked == [2, 1, 1]  # only as many checks as places to fill


def test_facts_the_live_model_already_states_are_applied_without_an_edit(store, clock):
    known = desire(store, "France", "Paris")
    unknown = desire(store, "Italy", "Milan")
    clock.now += 10
    job = reconciler(store, clock).plan(lambda cs: [c.subject == "France" for c in cs])
    assert store.change(change_id=known.id).state == "already_true"
    assert [a.subject for a in store.applied_facts()] == ["France"]
    assert [c.id for c in store.changes(job_id=job.id)] == [unknown.id]


def test_deletions_are_recorded_and_applied_objects_are_not_edited_again(store, clock):
    desire(store, "France", "Paris")
    clock.now += 10
    reconciler(store, clock).plan(lambda cs: [True] * len(cs))
    again = store.retry(subject="France", relation="P36")
    deletion = desire(store, "Italy", "", deleted=True)
    clock.now += 10
    assert reconciler(store, clock).plan(nothing_known) is None
    assert store.change(change_id=again.id).state == "already_true"
    assert store.change(change_id=deletion.id).state == "recorded"


def test_a_change_the_model_cannot_spell_is_failed_and_quarantined_alone(store, clock):
    record = FactRecord(subject="Atlantis\U00040000", relation="P36", object="Sea",
                        source="file:a", location="a.jsonl:7")
    odd = store.record_desired(record=record, relation="P36")
    fine = desire(store, "France", "Lyon")
    clock.now += 10

    def unusable(change):  # noqa: ANN001, ANN202
        return "cannot spell it" if "\U00040000" in change.subject else None

    job = reconciler(store, clock).plan(nothing_known, unusable)
    assert [c.id for c in store.changes(job_id=job.id)] == [fine.id]
    refused = store.change(change_id=odd.id)
    assert (refused.state, refused.reason) == ("failed", "cannot spell it")
    [entry] = store.quarantined()
    assert (entry.source, entry.location, entry.reason) == ("file:a", "a.jsonl:7",
                                                            "cannot spell it")
