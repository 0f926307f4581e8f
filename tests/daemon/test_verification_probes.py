"""Which applied facts an export is verified on: what it adds, and a sample of the rest."""

from __future__ import annotations

import pytest

from factsync.daemon.export_verification import unserved_versions, verification_probes
from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.store.store import StateStore

CATALOG = RelationCatalog.built_in()
CAPITAL = CATALOG.resolve("P36").template


@pytest.fixture
def store(tmp_path, clock):
    store = StateStore(tmp_path / "state.sqlite", clock=clock)
    yield store
    store.close()


def promote(store: StateStore, subject: str, obj: str, version: str, parent: str) -> None:
    change = store.record_desired(record=FactRecord(subject, "P36", obj, "test", "f:1"),
                                  relation="P36")
    job = store.create_job(change_ids=[change.id], policy_digest="p")
    store.promote(job_id=job.id, version_id=version, parent_id=parent, policy_digest="p",
                  report={}, applied={change.id: "old"}, left_out={})


def probe(subject: str, obj: str) -> tuple[str, str]:
    return CAPITAL.format(subject), obj


@pytest.fixture
def three_versions(store):
    promote(store, "France", "Lyon", "v1", "base")
    promote(store, "Italy", "Milan", "v2", "v1")
    promote(store, "Spain", "Seville", "v3", "v2")
    return store


def test_the_versions_since_the_served_one_are_unserved(three_versions):
    assert unserved_versions(three_versions, "v3", "v1") == {"v2", "v3"}
    assert unserved_versions(three_versions, "v3", "v3") == set()
    assert unserved_versions(three_versions, "v3", None) == {"v1", "v2", "v3"}


def test_after_a_rollback_only_what_the_served_lineage_lacks_is_unserved(three_versions):
    three_versions.rollback(to_version_id="v1", reason="test", requeue=False)
    promote(three_versions, "Germany", "Munich", "v4", "v1")
    assert unserved_versions(three_versions, "v4", "v3") == {"v4"}
    assert unserved_versions(three_versions, "v4", "v2") == {"v4"}


def test_every_added_fact_is_probed_beside_a_sample_of_the_others(three_versions):
    added = {probe("Italy", "Milan"), probe("Spain", "Seville")}
    for seed in range(5):
        probes = verification_probes(three_versions, CATALOG, version="v3", served="v1",
                                     sample=1, seed=seed)
        assert added <= set(probes) and len(probes) == len(set(probes)) <= 3
    nothing_added = verification_probes(three_versions, CATALOG, version="v3", served="v3",
                                        sample=1, seed=0)
    assert len(nothing_added) == 1


def test_a_sample_of_zero_probes_every_applied_fact(three_versions):
    probes = verification_probes(three_versions, CATALOG, version="v3", served="v3",
                                 sample=0, seed=0)
    assert sorted(probes) == sorted([probe("France", "Lyon"), probe("Italy", "Milan"),
                                     probe("Spain", "Seville")])


def test_the_facts_of_named_versions_are_read_by_version(three_versions):
    assert [f.subject for f in three_versions.applied_by({"v1", "v3"})] == ["France", "Spain"]
    assert three_versions.applied_by(set()) == []
