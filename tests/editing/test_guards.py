"""The built-in guard facts, and which of them an engine holds."""

from __future__ import annotations

import pytest

from factsync.editing.engine import EngineSettings
from factsync.editing.guards import engine_guards
from factsync.facts.canaries import CANDIDATE_CANARIES
from factsync.facts.catalog import RelationCatalog
from factsync.facts.guards import GUARD_FACTS
from factsync.models.loading import load_model
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids


def test_no_guard_shares_a_subject_with_a_canary_and_every_relation_is_known():
    canary_subjects = {subject for subject, _, _ in CANDIDATE_CANARIES}
    assert not canary_subjects & {subject for subject, _, _ in GUARD_FACTS}
    catalog = RelationCatalog.built_in()
    assert all(catalog.resolve(relation) is not None for _, relation, _ in GUARD_FACTS)
    assert len(set(GUARD_FACTS)) == len(GUARD_FACTS)


def test_an_engine_holds_no_guards_unless_its_settings_ask(tiny_loaded):
    assert engine_guards(tiny_loaded(), EngineSettings()) == []


@pytest.mark.real_model
def test_the_guards_held_are_those_the_model_states():
    loaded = load_model("default", device="cpu")
    held = engine_guards(loaded, EngineSettings(guard_facts=True))
    catalog = RelationCatalog.built_in()
    facts = {(catalog.resolve(r).template, s): o for s, r, o in GUARD_FACTS}
    assert len(GUARD_FACTS) // 2 < len(held) < len(GUARD_FACTS)
    left_out = [prompt for prompt in facts if prompt not in held]
    for prompts, stated in ((held, True), (left_out, False)):
        scores = score_targets(loaded, [PromptSpec(t, s, object_ids(loaded, facts[(t, s)]))
                                        for t, s in prompts])
        assert all(score.exact is stated for score in scores)
