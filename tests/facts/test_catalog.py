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


def test_every_built_in_prompt_has_one_slot_and_ends_where_the_object_starts():
    for relation in RelationCatalog.built_in():
        for prompt in (relation.template, *relation.paraphrases):
            assert prompt.count("{}") == 1
            assert not prompt.endswith(" "), prompt


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


def test_a_prompt_without_exactly_one_slot_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        Relation("P1", "x", "no slot here")
