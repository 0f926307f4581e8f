"""The relation catalog: ids, aliases and user additions."""

from __future__ import annotations

import json

import pytest

from factsync.evaluation.counterfact import SHARED_COUNTERFACT, default_data_dir
from factsync.facts.catalog import Relation, RelationCatalog

DATA = default_data_dir()


def test_relations_resolve_by_id_and_alias_case_insensitively():
    catalog = RelationCatalog.built_in()
    assert catalog.resolve("P36") is catalog.resolve("capital") is catalog.resolve(" Capital ")
    assert catalog.resolve("P36").template.format("France") == "The capital of France is"
    assert catalog.resolve("no_such_relation") is None


def test_facts_are_templated_in_order_leaving_out_unknown_relations():
    catalog = RelationCatalog.built_in()
    facts = [("France", "capital", "Paris"), ("Mars", "no_such_relation", "Phobos"),
             ("Skype", "P127", "Microsoft")]
    assert catalog.templated(facts) == [
        ("The capital of {} is", "France", "Paris"),
        (catalog.resolve("P127").template, "Skype", "Microsoft")]


def test_every_built_in_prompt_has_one_slot_and_ends_where_the_object_starts():
    for relation in RelationCatalog.built_in():
        for prompt in (relation.template, *relation.paraphrases, *relation.phrasings):
            assert prompt.count("{}") == 1
            assert not prompt.endswith(" "), prompt


def test_no_built_in_training_phrasing_is_a_wording_the_daemon_scores():
    for relation in RelationCatalog.built_in():
        assert len(relation.phrasings) == 2, relation.id
        scored = [p.format("X") for p in (relation.template, *relation.paraphrases)]
        for phrasing in (p.format("X") for p in relation.phrasings):
            # neither may end with the other: "On the field, X plays as" holds "X plays as"
            assert not any(phrasing.endswith(s) or s.endswith(phrasing) for s in scored), (
                relation.id, phrasing)


@pytest.mark.skipif(DATA is None, reason="../shared COUNTERFACT data not present")
def test_no_counterfact_dev_paraphrase_uses_a_training_phrasing():
    catalog = RelationCatalog.built_in()
    for record in json.loads((DATA / SHARED_COUNTERFACT).read_text()):
        rewrite = record["requested_rewrite"]
        phrasings = catalog.resolve(rewrite["relation_id"]).phrasings
        trained = tuple(p.format(rewrite["subject"]) for p in phrasings)
        assert not any(p.endswith(trained) for p in record["paraphrase_prompts"]), rewrite


@pytest.mark.skipif(DATA is None, reason="../shared COUNTERFACT data not present")
def test_the_catalog_covers_every_counterfact_relation():
    records = json.loads((DATA / SHARED_COUNTERFACT).read_text())
    used = {r["requested_rewrite"]["relation_id"] for r in records}
    catalog = RelationCatalog.built_in()
    assert {r for r in used if catalog.resolve(r) is None} == set()


def test_configured_relations_are_added_and_can_replace_built_in_ones():
    catalog = RelationCatalog.built_in({
        "P9999": {"template": "The mascot of {} is", "alias": "mascot"},
        "P36": {"template": "{}'s capital city is"},
    })
    assert catalog.resolve("mascot").id == "P9999"
    assert catalog.resolve("P36").template == "{}'s capital city is"
    assert catalog.resolve("capital") is None  # the replaced entry's alias is gone


def test_a_phrasing_that_is_also_scored_is_refused():
    with pytest.raises(ValueError, match="phrasing .* is also a scored prompt"):
        Relation("P1", "x", "{} is", paraphrases=("{} was",), phrasings=("{} was",))


def test_configured_relations_may_bring_phrasings():
    catalog = RelationCatalog.built_in({
        "P9999": {"template": "The mascot of {} is", "phrasings": ["{} has the mascot"]},
    })
    assert catalog.resolve("P9999").phrasings == ("{} has the mascot",)


def test_a_prompt_without_exactly_one_slot_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        Relation("P1", "x", "no slot here")
