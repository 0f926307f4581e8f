"""The state store on a real SQLite file: changes, jobs, promotion, restart."""

from __future__ import annotations

import sqlite3

import pytest

from factsync.facts.records import FactRecord
from factsync.store.records import JOB_EDITING, JOB_PREPARING, JOB_REJECTED
from factsync.store.schema import MIGRATIONS
from factsync.store.store import StateStore, StoreError


@pytest.fixture
def store(tmp_path, clock):
    store = StateStore(tmp_path / "state.sqlite", clock=clock)
    yield store
    store.close()


def record(subject="France", obj="Paris", **kw):  # noqa: ANN001, ANN201
    return FactRecord(subject=subject, relation="capital", object=obj, source="test",
                      location="f:1", **kw)


def test_a_new_store_is_migrated_with_the_base_version_live(store):
    assert store.schema_version == len(MIGRATIONS)
    assert store.live_version().id == "base"
    assert store.integrity_problems() == []


def test_a_state_file_from_a_newer_factsync_is_refused(tmp_path):
    path = tmp_path / "state.sqlite"
    StateStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this factsync"):
        StateStore(path)


def test_only_a_different_object_makes_a_change(store):
    first = store.record_desired(record=record(), relation="P36")
    assert first is not None and first.state == "pending"
    assert store.record_desired(record=record(), relation="P36") is None
    second = store.record_desired(record=record(obj="Lyon"), relation="P36")
    assert second.id == first.id + 1
    assert store.record_desired(record=record(obj="", deleted=True), relation="P36").deleted
    assert store.desired_facts()[0].deleted


def test_a_newer_word_on_a_fact_supersedes_its_pending_change_but_not_a_queued_one(store):
    queued = store.record_desired(record=record(obj="Lyon"), relation="P36")
    store.create_job(change_ids=[queued.id], policy_digest="p")
    older = store.record_desired(record=record(obj="Nice"), relation="P36")
    other = store.record_desired(record=record(subject="Italy", obj="Rome"), relation="P36")
    newest = store.record_desired(record=record(obj="Brest"), relation="P36")
    assert store.change(change_id=older.id).state == "superseded"
    assert store.change(change_id=older.id).reason == f"replaced by change {newest.id}"
    assert store.change(change_id=queued.id).state == "queued"
    assert [c.id for c in store.changes(state="pending")] == [other.id, newest.id]
    again = store.retry(subject="France", relation="P36")
    assert store.change(change_id=newest.id).state == "superseded" and again.state == "pending"


def test_quarantine_counts_each_bad_row_once(store):
    assert store.quarantine(source="s", location="a:1", reason="bad", raw="{}")
    assert not store.quarantine(source="s", location="a:1", reason="bad", raw="{}")
    assert store.quarantine(source="s", location="a:2", reason="bad", raw="{}")
    assert store.quarantine_count() == 2


def test_a_promotion_records_the_version_moves_live_and_applies_facts_at_once(store):
    change = store.record_desired(record=record(obj="Lyon"), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    store.transition(job_id=job.id, state=JOB_PREPARING, reason="1 fact")
    version = store.promote(job_id=job.id, version_id="v1", parent_id="base",
                            policy_digest="p", report={"candidate": {}},
                            applied={change.id: "Paris"}, left_out={})
    assert store.live_version() == version
    assert version.seq == 1 and version.parent_id == "base"
    assert version.facts[0]["old_object"] == "Paris"
    assert store.change(change_id=change.id).state == "applied"
    assert [a.object for a in store.applied_facts()] == ["Lyon"]
    assert store.job(job_id=job.id).state == "promoted"
    assert [v.id for v in store.lineage(version_id="v1")] == ["v1"]
    assert [h["version_id"] for h in store.live_history()] == ["base", "v1"]


def test_a_promotion_whose_parent_is_no_longer_live_is_refused_and_changes_nothing(store):
    change = store.record_desired(record=record(obj="Lyon"), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    store.promote(job_id=job.id, version_id="v1", parent_id="base", policy_digest="p",
                  report={}, applied={change.id: "Paris"}, left_out={})
    with pytest.raises(StoreError, match="live version moved"):
        store.promote(job_id=job.id, version_id="v2", parent_id="base", policy_digest="p",
                      report={}, applied={change.id: "Paris"}, left_out={})
    assert [v.id for v in store.versions()] == ["v1", "base"]


def test_jobs_left_half_way_are_requeued_with_the_reason(store):
    change = store.record_desired(record=record(obj="Lyon"), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    store.transition(job_id=job.id, state=JOB_EDITING, reason="1 fact")
    assert store.requeue_interrupted() == [job.id]
    assert store.next_job().id == job.id
    assert store.job_events(job_id=job.id)[-1].reason == "interrupted while editing; rerun"
    assert store.requeue_interrupted() == []


def test_a_rejection_can_retry_the_passing_changes_in_one_new_job(store):
    a = store.record_desired(record=record(obj="Lyon"), relation="P36")
    b = store.record_desired(record=record(subject="Italy", obj="Milan"), relation="P36")
    job = store.create_job(change_ids=[a.id, b.id], policy_digest="p")
    [retry] = store.finish_job(job_id=job.id, state=JOB_REJECTED, reason="gates failed",
                               change_states={a.id: ("failed", "did not take")},
                               retry=[[b.id]])
    assert retry.attempt == 2 and retry.state == "queued"
    assert store.change(change_id=a.id).state == "failed"
    assert store.change(change_id=b.id).job_id == retry.id
    assert store.count_jobs() == {"rejected": 1, "queued": 1}


def test_a_rejection_can_retry_its_changes_in_several_new_jobs(store):
    changes = [store.record_desired(record=record(subject=s, obj="Lyon"), relation="P36")
               for s in ("France", "Italy", "Spain")]
    job = store.create_job(change_ids=[c.id for c in changes], policy_digest="p")
    first, second = store.finish_job(job_id=job.id, state=JOB_REJECTED, reason="gates failed",
                                     change_states={},
                                     retry=[[changes[0].id], [c.id for c in changes[1:]]])
    assert (first.attempt, second.attempt) == (2, 2)
    assert [c.subject for c in store.changes(job_id=first.id)] == ["France"]
    assert sorted(c.subject for c in store.changes(job_id=second.id)) == ["Italy", "Spain"]
    assert store.next_job().id == first.id
    assert store.count_jobs() == {"rejected": 1, "queued": 2}


def test_an_operator_retry_queues_the_desired_state_again(store):
    change = store.record_desired(record=record(obj="Lyon"), relation="P36")
    store.close_changes(change_ids=[change.id], state="failed", reason="did not take")
    again = store.retry(subject="France", relation="P36")
    assert again.state == "pending" and again.object == "Lyon" and again.id != change.id
    assert store.retry(subject="Nowhere", relation="P36") is None


def test_state_survives_reopening_the_file(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    store.record_desired(record=record(obj="Lyon"), relation="P36")
    store.close()
    reopened = StateStore(tmp_path / "state.sqlite")
    assert [c.object for c in reopened.changes()] == ["Lyon"]
    reopened.close()


def promote_one(store, subject, obj, version_id, parent):  # noqa: ANN001, ANN201
    change = store.record_desired(record=record(subject=subject, obj=obj), relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    store.promote(job_id=job.id, version_id=version_id, parent_id=parent, policy_digest="p",
                  report={}, applied={change.id: "old"}, left_out={})
    return change, job


def test_a_rollback_restores_the_applied_state_and_quarantines_the_rolled_back_facts(store):
    first, _ = promote_one(store, "France", "Lyon", "v1", "base")
    second, job = promote_one(store, "France", "Nice", "v2", "v1")
    third, _ = promote_one(store, "Italy", "Milan", "v3", "v2")
    undone = store.rollback(to_version_id="v1", reason="monitor: canary", requeue=False)
    assert undone.rolled_back == ["v3", "v2"] and undone.quarantined == 2
    assert store.live_version().id == "v1"
    assert {(a.subject, a.object, a.version_id) for a in store.applied_facts()} == {
        ("France", "Lyon", "v1")}
    assert store.version(version_id="v2").status == "rolled_back"
    assert store.job(job_id=job.id).state == "rolled_back"
    assert store.change(change_id=third.id).state == "rolled_back"
    assert {q.location for q in store.quarantined()} == {"version v2", "version v3"}
    assert [h["version_id"] for h in store.live_history()][-1] == "v1"
    assert store.integrity_problems() == []
    with pytest.raises(StoreError, match="already live"):
        store.rollback(to_version_id="v1", reason="again", requeue=False)
    with pytest.raises(StoreError, match="not an ancestor"):
        store.rollback(to_version_id="v3", reason="forward", requeue=False)


def test_a_rollback_can_queue_the_facts_again(store):
    promote_one(store, "France", "Lyon", "v1", "base")
    store.rollback(to_version_id="base", reason="monitor", requeue=True)
    assert store.applied_facts() == []
    [pending] = store.changes(state="pending")
    assert pending.object == "Lyon" and "rolled back" in pending.reason


def test_a_worn_fact_leaves_the_applied_state_and_is_queued_to_its_desired_object(store):
    promote_one(store, "France", "Lyon", "v1", "base")
    promote_one(store, "Italy", "Milan", "v2", "v1")
    queued = store.restate(facts=[("France", "P36"), ("Spain", "P36")], reason="worn off")
    assert queued == [("France", "P36")]  # Spain was never applied
    assert [(a.subject, a.object) for a in store.applied_facts()] == [("Italy", "Milan")]
    [pending] = store.changes(state="pending")
    assert (pending.subject, pending.object, pending.reason) == ("France", "Lyon", "worn off")
    # Pending already, then no longer applied: nothing more is queued.
    assert store.restate(facts=[("France", "P36")], reason="again") == []
    assert store.integrity_problems() == []


def test_a_worn_fact_whose_desired_object_changed_or_was_deleted_is_left_to_the_feed(store):
    promote_one(store, "France", "Lyon", "v1", "base")
    promote_one(store, "Italy", "Milan", "v2", "v1")
    store.record_desired(record=record(subject="Italy", obj="Turin", deleted=True),
                         relation="P36")
    newer = store.record_desired(record=record(subject="France", obj="Nice"), relation="P36")
    store.create_job(change_ids=[newer.id], policy_digest="p")  # no longer pending
    assert store.restate(facts=[("France", "P36"), ("Italy", "P36")], reason="worn") == []
    assert {a.subject for a in store.applied_facts()} == {"France", "Italy"}


def test_monitor_checks_are_kept_per_version_newest_first(store):
    store.record_check(version_id="base", metrics={"canary": 1.0}, failing=[])
    store.record_check(version_id="base", metrics={"canary": 0.5}, failing=["canary"])
    assert [c.failing for c in store.checks(version_id="base")] == [["canary"], []]


def test_a_revert_queues_the_old_object_and_holds_against_the_feed(store):
    change, _ = promote_one(store, "France", "Lyon", "v1", "base")
    revert = store.revert(subject="France", relation="P36")
    assert (revert.object, revert.state, revert.source) == ("old", "pending", "operator")
    assert store.desired_facts()[0].object == "old"
    assert store.record_desired(record=record(obj="Lyon"), relation="P36") is None
    newer = store.record_desired(record=record(obj="Nice"), relation="P36")
    assert newer.object == "Nice" and store.desired_facts()[0].reverted_from is None
    with pytest.raises(KeyError, match="no edited fact 'Italy'"):
        store.revert(subject="Italy", relation="P36")


def test_fact_views_join_the_latest_change_and_the_applied_version(store):
    change, _ = promote_one(store, "France", "Lyon", "v1", "base")
    store.record_desired(record=record(subject="France", obj="Nice"), relation="P36")
    store.record_desired(record=record(subject="Italy", obj="Rome"), relation="P36")
    views = {v["subject"]: v for v in store.fact_views()}
    assert (views["France"]["object"], views["France"]["state"]) == ("Nice", "pending")
    assert (views["France"]["applied_object"], views["France"]["applied_by"]) == ("Lyon", "v1")
    assert views["Italy"]["applied_by"] is None
    assert [v["subject"] for v in store.fact_views(state="pending")] == ["France", "Italy"]
    assert [v["subject"] for v in store.fact_views(subject="Italy")] == ["Italy"]


def test_a_batch_commits_its_writes_together_and_a_failed_write_alone_is_undone(store, tmp_path):
    with store.batch():
        store.record_desired(record=record(obj="Lyon"), relation="P36")
        other = StateStore(tmp_path / "state.sqlite")
        assert other.desired_facts() == []  # nothing visible before the batch ends
        with pytest.raises(sqlite3.IntegrityError):  # relation is NOT NULL
            store.record_desired(record=record(subject="Spain", obj="Madrid"), relation=None)
        store.record_desired(record=record(subject="Italy", obj="Rome"), relation="P36")
    assert [f.subject for f in other.desired_facts()] == ["France", "Italy"]
    assert len(other.changes()) == 2
    other.close()


def test_a_batch_that_raises_keeps_none_of_its_writes(store):
    with pytest.raises(RuntimeError), store.batch():
        store.record_desired(record=record(obj="Lyon"), relation="P36")
        raise RuntimeError("the caller failed half-way")
    assert store.desired_facts() == [] and store.changes() == []


def test_a_fold_is_recorded_once_per_version(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    assert store.folds() == {}
    fold = store.record_fold(version_id="base", checkpoint="/x/base", reason="rank 96 > 64")
    assert (fold.version_id, fold.checkpoint, fold.reason) == ("base", "/x/base", "rank 96 > 64")
    assert store.record_fold(version_id="base", checkpoint="/y", reason="again") == fold
    assert list(store.folds()) == ["base"]
    [row] = store.version_rows(store.versions())
    assert row["id"] == "base" and row["live"] and row["fold"]["checkpoint"] == "/x/base"
    with pytest.raises(sqlite3.IntegrityError):
        store.record_fold(version_id="no-such-version", checkpoint="/z", reason="r")
