"""Preparing a job on the real default model: old objects and neighbours from the store."""

from __future__ import annotations

import pytest

from factsync.facts.catalog import RelationCatalog
from factsync.facts.records import FactRecord
from factsync.jobs.preparation import prepare_job, probes_of, retention_facts, states
from factsync.models.loading import load_model
from factsync.policies.schema import EditingPolicy, EvaluationPolicy, Policy
from factsync.store.store import StateStore

pytestmark = pytest.mark.real_model

KNOWN = [  # facts the store holds besides the one being edited
    ("Alain Delon", "P103", "French"),
    ("Catherine Deneuve", "P103", "French"),
    ("Gérard Depardieu", "P103", "French"),
    ("Marion Cotillard", "P103", "French"),
    ("Jean Reno", "P103", "French"),
    ("Jean Gabin", "P103", "French"),  # the model gets this one wrong: never used
    ("Charles Aznavour", "P103", "Armenian"),  # another old object: never a neighbour
    ("Danielle Darrieux", "P27", "France"),  # same subject, other relation (model wrong)
]


@pytest.fixture(scope="module")
def loaded():
    return load_model("default", device="cpu")


def test_neighbours_come_from_the_store_are_right_now_and_editing_and_scoring_sets_are_disjoint(
    loaded, tmp_path
):
    store = StateStore(tmp_path / "state.sqlite")
    for subject, relation, obj in KNOWN:
        store.record_desired(record=FactRecord(subject, relation, obj, "t", "x"),
                             relation=relation)
    change = store.record_desired(
        record=FactRecord("Danielle Darrieux", "P103", "English", "t", "x"), relation="P103")
    policy = Policy(editing=EditingPolicy(max_neighbours=2),
                    evaluation=EvaluationPolicy(held_out_neighbours=2))
    [prepared] = prepare_job(loaded, store, RelationCatalog.built_in(), policy, [change])

    assert prepared.request.old_object == "French"
    editing = {n.subject for n in prepared.request.neighbours}
    held_out = {s for s, _, _ in KNOWN for prompt, _ in prepared.check.held_out if s in prompt}
    assert len(editing) == 2 and len(held_out) == 2
    assert not editing & held_out
    assert not {"Charles Aznavour", "Jean Gabin", "Danielle Darrieux"} & (editing | held_out)
    assert all(n.object in ("French", "France") for n in prepared.request.neighbours)
    assert prepared.check.paraphrases and all("Danielle Darrieux" in p
                                              for p in prepared.check.paraphrases)
    # the edit may train on the relation's phrasings, never on what it is scored on
    phrasings = {p.format("Danielle Darrieux") for p in prepared.request.phrasings}
    assert phrasings and not phrasings & set(prepared.check.paraphrases)
    store.close()


def test_contrast_neighbours_hold_facts_of_the_relation_with_other_objects(loaded, tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    others = [("Sophia Loren", "Italian"), ("Penélope Cruz", "Spanish"),
              ("Angela Merkel", "German"), ("Vladimir Putin", "Russian")]
    for subject, relation, obj in [*KNOWN, *((s, "P103", o) for s, o in others)]:
        store.record_desired(record=FactRecord(subject, relation, obj, "t", "x"),
                             relation=relation)
    change = store.record_desired(
        record=FactRecord("Danielle Darrieux", "P103", "English", "t", "x"), relation="P103")
    catalog = RelationCatalog.built_in()

    def neighbours(contrast: int) -> list[tuple[str, str]]:
        policy = Policy(editing=EditingPolicy(max_neighbours=1, contrast_neighbours=contrast))
        [prepared] = prepare_job(loaded, store, catalog, policy, [change])
        return [(n.subject, n.object) for n in prepared.request.neighbours]

    plain = neighbours(0)
    assert [obj for _, obj in plain] == ["French"]
    template = catalog.resolve("P103").template
    known = [(s, o) for s, o in [("Charles Aznavour", "Armenian"), *others]
             if states(loaded, [(template.format(s), o)])[0]]
    assert len(known) >= 2, "the model should know two of these, or this tests nothing"
    # One per object, in the objects' order after the new one (English), wrapping around.
    by_object = sorted(known, key=lambda fact: (fact[1].casefold() <= "english",
                                                fact[1].casefold()))
    assert neighbours(2) == plain + by_object[:2]
    store.close()


def test_retention_facts_sample_applied_facts_deterministically(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    for index in range(10):
        change = store.record_desired(
            record=FactRecord(f"Country {index}", "P36", f"City {index}", "t", "x"),
            relation="P36")
        store.record_already_true(change_id=change.id, version_id="base")
    catalog = RelationCatalog.built_in()
    def probes(exclude: set, sample: int) -> list:
        return probes_of(catalog, retention_facts(store, catalog, exclude=exclude,
                                                  sample=sample, seed=1))

    sample = probes({("Country 0", "P36")}, 4)
    assert len(sample) == 4
    assert sample == probes({("Country 0", "P36")}, 4)
    everything = probes(set(), 0)
    assert ("The capital of Country 3 is", "City 3") in everything and len(everything) == 10
    store.close()

