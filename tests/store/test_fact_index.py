"""The store's bounded lookups: neighbours, applied rows, samples, pending pages, migration 4."""

from __future__ import annotations

import sqlite3

import pytest

from factsync.facts.records import FactRecord
from factsync.store.records import KnownFact
from factsync.store.schema import MIGRATIONS
from factsync.store.store import StateStore


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    yield store
    store.close()


def desire(store, subject, relation, obj, *, deleted=False):  # noqa: ANN001, ANN201
    record = FactRecord(subject=subject, relation=relation, object=obj, source="t",
                        location="x", deleted=deleted)
    return store.record_desired(record=record, relation=relation)


def apply(store, subject, relation, obj):  # noqa: ANN001, ANN201
    change = desire(store, subject, relation, obj)
    store.record_already_true(change_id=change.id, version_id="base")
    return change


def test_facts_about_a_subject_prefer_the_applied_object_and_leave_out_deletions(store):
    apply(store, "Marie Curie", "P27", "Poland")
    desire(store, "Marie Curie", "P27", "France")  # pending: the applied object still counts
    desire(store, "Marie Curie", "P103", "Polish")  # only desired
    desire(store, "Marie Curie", "P19", "", deleted=True)
    apply(store, "Pierre Curie", "P27", "France")
    assert store.facts_about(subject="Marie Curie") == [
        KnownFact("Marie Curie", "P103", "Polish"), KnownFact("Marie Curie", "P27", "Poland")]
    assert store.facts_about(subject="Nobody") == []


def test_facts_with_an_object_match_case_folded_by_subject_up_to_the_limit(store):
    for subject, obj in [("Zürich", "STRASSE"), ("Bern", "straße"), ("Basel", "Straße"),
                         ("Genf", "Strasse ")]:
        apply(store, subject, "P36", obj)
    desire(store, "Aarau", "P36", "strasse")  # only desired: counts
    apply(store, "Chur", "P36", "Elsewhere")
    desire(store, "Chur", "P36", "Strasse")  # applied object differs: not a match
    apply(store, "Lugano", "P36", "Strasse")
    desire(store, "Lugano", "P36", "Other")  # applied object matches: counts, as applied
    desire(store, "Sion", "P36", "", deleted=True)
    apply(store, "Thun", "P17", "Strasse")  # another relation

    found = store.facts_with_object(relation="P36", object="STRAßE", limit=10)
    assert [(f.subject, f.object) for f in found] == [
        ("Aarau", "strasse"), ("Basel", "Straße"), ("Bern", "straße"), ("Lugano", "Strasse"),
        ("Zürich", "STRASSE")]
    limited = store.facts_with_object(relation="P36", object="strasse", limit=2,
                                      exclude={("Aarau", "P36")})
    assert [f.subject for f in limited] == ["Basel", "Bern"]
    assert store.facts_with_object(relation="P36", object="strasse", limit=0) == []


def test_facts_with_other_objects_take_one_per_object_from_a_start_and_wrap_around(store):
    for subject, obj in [("France", "Paris"), ("Gaul", "paris"), ("Italy", "Rome"),
                         ("Spain", "Madrid"), ("Peru", "Lima"), ("Chile", "Santiago")]:
        apply(store, subject, "P36", obj)
    desire(store, "Japan", "P36", "Tokyo")  # only desired: counts
    desire(store, "Mali", "P36", "", deleted=True)
    apply(store, "Kenya", "P17", "Nairobi")  # another relation

    def found(**kwargs):  # noqa: ANN003, ANN202
        return [(f.subject, f.object) for f in store.facts_with_other_objects(
            relation="P36", objects=["ROME", "Lima"], after="Madrid", **kwargs)]

    # The objects after Madrid's, then from the first up to Madrid's own; Rome and Lima
    # are the edit's own objects, and Paris counts once.
    assert found(limit=10) == [("France", "Paris"), ("Chile", "Santiago"), ("Japan", "Tokyo"),
                               ("Spain", "Madrid")]
    assert found(limit=2) == [("France", "Paris"), ("Chile", "Santiago")]
    assert found(limit=1, exclude={("France", "P36")}) == [("Gaul", "paris")]
    assert found(limit=0) == []


def test_applied_rows_come_by_key_and_keep_their_rowid_when_updated(store, tmp_path):
    apply(store, "France", "P36", "Paris")
    apply(store, "Italy", "P36", "Rome")
    assert store.applied_fact(subject="France", relation="P36").object == "Paris"
    assert store.applied_fact(subject="Spain", relation="P36") is None
    found = store.applied_for(keys=[("Italy", "P36"), ("Spain", "P36")])
    assert list(found) == [("Italy", "P36")] and found[("Italy", "P36")].object == "Rome"
    apply(store, "France", "P36", "Lyon")
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        rows = db.execute("SELECT rowid, subject, object FROM applied_facts ORDER BY rowid")
        assert rows.fetchall() == [(1, "France", "Lyon"), (2, "Italy", "Rome")]


def test_a_sample_of_applied_facts_is_the_same_for_a_seed_and_skips_gaps_and_refusals(
    store, tmp_path
):
    for index in range(30):
        apply(store, f"Country {index}", "P36", f"City {index}")
    with sqlite3.connect(tmp_path / "state.sqlite") as db:  # gaps, as a rollback leaves
        db.execute("DELETE FROM applied_facts WHERE subject IN ('Country 3', 'Country 4')")

    def keep(fact):  # noqa: ANN001, ANN202
        return fact.subject != "Country 5"

    first = store.sample_applied(size=8, seed=7, keep=keep)
    assert len(first) == 8 and len({f.subject for f in first}) == 8
    assert first == store.sample_applied(size=8, seed=7, keep=keep)
    assert first != store.sample_applied(size=8, seed=8, keep=keep)
    assert not {"Country 3", "Country 4", "Country 5"} & {f.subject for f in first}
    everything = store.sample_applied(size=100, seed=7, keep=keep)
    assert len(everything) == 27
    seen = {store.sample_applied(size=1, seed=seed)[0].subject for seed in range(300)}
    assert len(seen) == 28  # every row can be drawn
    assert store.sample_applied(size=0, seed=1) == []


def test_an_empty_store_samples_nothing(store):
    assert store.sample_applied(size=5, seed=0) == []


def test_pending_changes_come_in_arrival_order_a_page_at_a_time(store):
    changes = [desire(store, f"Country {index}", "P36", "Paris") for index in range(5)]
    first = store.pending_changes(limit=2)
    assert [c.id for c in first] == [changes[0].id, changes[1].id]
    rest = store.pending_changes(after=first[-1].id, limit=10)
    assert [c.id for c in rest] == [c.id for c in changes[2:]]
    newer = desire(store, "Country 0", "P36", "Rome")
    latest = store.latest_pending(keys=[("Country 0", "P36"), ("Country 1", "P36"),
                                        ("Spain", "P36")])
    assert latest == {("Country 0", "P36"): newer.id, ("Country 1", "P36"): changes[1].id}


def test_a_store_of_the_previous_schema_is_migrated_and_its_objects_folded(tmp_path):
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as db:
        for number, script in enumerate(MIGRATIONS[:3], 1):
            db.executescript(f"{script}; PRAGMA user_version = {number};")
        db.execute("INSERT INTO applied_facts VALUES ('Köln', 'P17', 'DEUTSCHLAND', 'base', "
                   "NULL, 1)")
        db.execute("INSERT INTO desired_facts VALUES ('Graz', 'P17', 'Österreich', 0, 't', "
                   "'x', NULL, NULL, 1, NULL)")
    store = StateStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.integrity_problems() == []
    assert store.facts_with_object(relation="P17", object="deutschland", limit=5) == [
        KnownFact("Köln", "P17", "DEUTSCHLAND")]
    assert store.facts_with_object(relation="P17", object="ÖSTERREICH", limit=5) == [
        KnownFact("Graz", "P17", "Österreich")]
    assert [f.subject for f in store.applied_facts()] == ["Köln"]
    assert [f.object for f in store.desired_facts()] == ["Österreich"]
    store.close()
