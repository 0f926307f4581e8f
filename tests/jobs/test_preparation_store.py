"""The store side of preparing a job: neighbour candidates and retention samples."""

from __future__ import annotations

import pytest

from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.preparation import neighbour_candidates, probes_of, retention_facts
from factsync.store.store import StateStore


@pytest.fixture
def store(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    yield store
    store.close()


def desire(store, subject, relation, obj):  # noqa: ANN001, ANN201
    record = FactRecord(subject=subject, relation=relation, object=obj, source="t",
                        location="x")
    return store.record_desired(record=record, relation=relation)


def apply(store, subject, relation, obj):  # noqa: ANN001, ANN201
    change = desire(store, subject, relation, obj)
    store.record_already_true(change_id=change.id, version_id="base")


def test_candidates_alternate_same_object_and_same_subject_facts_and_skip_the_job(store):
    for subject in ("Alain Delon", "Jean Reno", "Édith Piaf", "Jean Gabin"):
        apply(store, subject, "P103", "French")
    apply(store, "Charles Aznavour", "P103", "Armenian")
    desire(store, "Danielle Darrieux", "P27", "France")
    desire(store, "Danielle Darrieux", "P19", "Bordeaux")
    change = desire(store, "Danielle Darrieux", "P103", "English")
    in_job = {("Danielle Darrieux", "P103"), ("Jean Reno", "P103")}

    found = neighbour_candidates(store, change, "french", limit=10, exclude=in_job)
    assert [(f.subject, f.relation) for f in found] == [
        ("Alain Delon", "P103"), ("Danielle Darrieux", "P19"),
        ("Jean Gabin", "P103"), ("Danielle Darrieux", "P27"),
        ("Édith Piaf", "P103")]
    assert len(neighbour_candidates(store, change, "French", limit=3, exclude=in_job)) == 3
    without_old = neighbour_candidates(store, change, None, limit=10, exclude=in_job)
    assert [f.relation for f in without_old] == ["P19", "P27"]


def test_retention_samples_leave_out_the_job_and_relations_gone_from_the_catalog(store):
    for index in range(20):
        apply(store, f"Country {index}", "P36", f"City {index}")
    apply(store, "Country 0", "P9999", "Nowhere")
    catalog = RelationCatalog.built_in()
    exclude = {("Country 1", "P36")}
    def probes(exclude: set, sample: int) -> list:
        return probes_of(catalog, retention_facts(store, catalog, exclude=exclude,
                                                  sample=sample, seed=3))

    sample = probes(exclude, 5)
    assert len(sample) == 5 and len(set(sample)) == 5
    assert sample == probes(exclude, 5)
    every = probes(exclude, 50)
    assert len(every) == 19 and ("The capital of Country 1 is", "City 1") not in every
    assert len(probes(set(), 0)) == 20
