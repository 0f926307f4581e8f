"""Claims about editing quality, checked on the real default model (SmolLM2-135M)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from factsync.editing.build import StatisticsSettings, build_engine
from factsync.editing.engine import EngineSettings, StopReason
from factsync.editing.requests import EditRequest, Neighbour
from factsync.models.loading import load_model
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

pytestmark = pytest.mark.real_model

FACTS = [
    EditRequest(
        "Danielle Darrieux",
        "The mother tongue of {} is",
        "English",
        "French",
        (Neighbour("Jean Gabin", "The mother tongue of {} is", "French"),),
    ),
    EditRequest(
        "LinkedIn",
        "{} is owned by",
        "Apple",
        "Microsoft",
        (Neighbour("Skype", "{} is owned by", "Microsoft"),),
    ),
    EditRequest(
        "Paris",
        "{} is the capital of",
        "Italy",
        "France",
        (Neighbour("Lyon", "{} is a city in", "France"),),
    ),
]
PARAPHRASES = [
    ("The native language of {} is", "Danielle Darrieux"),
    ("{} is a subsidiary of", "LinkedIn"),
    ("{} is the capital city of", "Paris"),
]
# Scored only, never used for editing: NME neighbours and scoring neighbours stay disjoint.
HELD_OUT_NEIGHBOUR = ("{} is the capital of", "Berlin", "Germany", "Italy")


@pytest.fixture(scope="module")
def loaded():
    return load_model()


def _beats(loaded, template: str, subject: str, winner: str, loser: str) -> bool:
    win, lose = score_targets(
        loaded,
        [PromptSpec(template, subject, object_ids(loaded, o)) for o in (winner, loser)],
    )
    return win.mean_nll < lose.mean_nll


def test_three_edits_take_and_generalise_while_a_neighbour_keeps_its_object(loaded):
    template, subject, true, new = HELD_OUT_NEIGHBOUR
    assert _beats(loaded, template, subject, true, new), "the base model knows the neighbour"
    for fact in FACTS:
        assert not _beats(loaded, fact.template, fact.subject, fact.new_object, fact.old_object)

    settings = EngineSettings(max_iterations=3, neighbours=True)
    # Statistics are cached under $FACTSYNC_HOME, so only the first run computes them.
    engine = build_engine(loaded, settings, StatisticsSettings(corpus_tokens=20_000))
    result = engine.edit(FACTS)
    handle = result.delta.apply(loaded)
    try:
        for fact, (para_template, para_subject) in zip(FACTS, PARAPHRASES, strict=True):
            assert _beats(loaded, fact.template, fact.subject, fact.new_object, fact.old_object)
            assert _beats(loaded, para_template, para_subject, fact.new_object, fact.old_object)
        assert _beats(loaded, template, subject, true, new)
    finally:
        handle.revert()
    assert all(len(records) <= 3 for records in result.records)


def test_a_fact_changed_twice_ends_on_its_latest_object(loaded):
    settings = EngineSettings(max_iterations=3, neighbours=True)
    engine = build_engine(loaded, settings, StatisticsSettings(corpus_tokens=20_000))
    first = engine.edit(FACTS)
    handles = [first.delta.apply(loaded)]
    engine.remember(first)
    changed = replace(FACTS[1], new_object="Google", old_object="Apple")
    second = engine.edit([changed])
    handles.append(second.delta.apply(loaded))
    engine.remember(second)
    try:
        for earlier in ("Apple", "Microsoft"):
            assert _beats(loaded, changed.template, changed.subject, "Google", earlier)
        for kept in (FACTS[0], FACTS[2]):
            assert _beats(loaded, kept.template, kept.subject, kept.new_object, kept.old_object)
    finally:
        for handle in reversed(handles):
            handle.revert()
    assert second.stop_reasons == [StopReason.TOOK]
