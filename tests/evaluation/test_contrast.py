"""Contrast neighbours: which records lend them, and how a suite edits with them."""

from __future__ import annotations

import pytest

from factsync.editing.requests import EditRequest, Neighbour
from factsync.evaluation.cases import EvalCase
from factsync.evaluation.contrast import contrast_offers
from factsync.evaluation.suites import prepare_suite
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

LANGUAGE = "The official language of {} is"


def _case(case_id: int, subject: str, new: str, old: str, neighbours: tuple[str, ...],
          relation: str | None = "P37") -> EvalCase:
    return EvalCase(case_id, EditRequest(subject, LANGUAGE, new, old), (),
                    tuple((n, LANGUAGE) for n in neighbours), relation=relation)


MONTANA = _case(0, "Montana", "Italian", "English", ("Fiji", "Barbados"))
POOL = [
    _case(10, "Spain", "German", "Spanish", ("Mexico", "Peru")),
    _case(11, "Scotland", "French", "English", ("Ireland",)),  # Montana's old object
    _case(12, "Sicily", "Dutch", "italian", ("Rome",)),  # Montana's new object, case-folded
    _case(13, "Tokyo", "Korean", "Japanese", ("Osaka",), relation="P36"),  # another relation
    _case(14, "France", "Danish", "French", ("Montana", "Quebec")),
]


def test_offers_come_from_records_of_the_relation_with_another_object():
    [offered] = contrast_offers([MONTANA], POOL, limit=5)
    # One fact per lending record, never about the edited subject itself.
    assert offered == (Neighbour("Mexico", LANGUAGE, "Spanish"),
                       Neighbour("Quebec", LANGUAGE, "French"))


def test_cases_start_at_different_lenders_and_limits_hold():
    cases = [MONTANA, _case(1, "Alabama", "Italian", "English", ())]
    first, second = contrast_offers(cases, POOL, limit=1)
    assert first == (Neighbour("Mexico", LANGUAGE, "Spanish"),)
    # Montana is edited by another case, not by Alabama's: it may hold for Alabama.
    assert second == (Neighbour("Montana", LANGUAGE, "French"),)
    assert contrast_offers(cases, POOL, limit=0) == [(), ()]


def test_a_case_does_not_lend_to_itself_and_one_without_relation_gets_none():
    spain = POOL[0]
    [own] = contrast_offers([spain], [spain], limit=3)
    assert own == ()
    unknown = _case(2, "Ohio", "Greek", "English", (), relation=None)
    assert contrast_offers([unknown], POOL, limit=3) == [()]
    with pytest.raises(ValueError, match="negative"):
        contrast_offers([MONTANA], POOL, limit=-1)


def _knows(loaded, fact: Neighbour, new: str) -> bool:
    keep, edited = score_targets(loaded, [
        PromptSpec(fact.template, fact.subject, object_ids(loaded, obj))
        for obj in (fact.object, new)])
    return keep.mean_nll < edited.mean_nll


def test_a_suite_edits_with_the_contrast_facts_the_model_knows_and_scores_them_nowhere(
    tiny_loaded,
):
    loaded = tiny_loaded()
    lenders = [_case(10 + i, f"Land{i}", "Greek", old, (subject,))
               for i, (old, subject) in enumerate([("Spanish", "Mexico"), ("French", "Quebec"),
                                                   ("German", "Austria"), ("Dutch", "Aruba")])]
    case = _case(0, "Montana", "Italian", "English", ("Fiji",))
    suite = prepare_suite(loaded, "counterfact", [case, *lenders[:1]], neighbours_per_fact=0,
                          contrast_per_fact=2, spare=lenders[1:])
    known = [n for n in contrast_offers([case], [*lenders[1:], *lenders[:1]], limit=8)[0]
             if _knows(loaded, n, "Italian")]
    assert known, "the tiny model should know some contrast fact, or this test tests nothing"
    assert suite.requests[0].neighbours == tuple(known[:2])
    used = {n.subject for n in suite.requests[0].neighbours}
    scored = {prompt for probe in suite.probes for prompt, _ in probe.neighbourhood}
    assert not {LANGUAGE.format(subject) for subject in used} & scored
    # Without contrast neighbours the same suite edits with none.
    plain = prepare_suite(loaded, "counterfact", [case, *lenders[:1]], neighbours_per_fact=0,
                          spare=lenders[1:])
    assert plain.requests[0].neighbours == ()
