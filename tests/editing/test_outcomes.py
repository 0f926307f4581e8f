"""The test IME stops on, against the scores it is made of, on a tiny random model."""

from __future__ import annotations

import pytest

from factsync.editing.outcomes import TookRule, edit_outcomes
from factsync.editing.requests import EditRequest
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

CONTEXTS = [""]
# On the tiny model "Microsoft" beats "Apple" after the first prompt without being the
# greedy answer, which is where the two rules part; it loses after "{} was bought by".
REQUESTS = [
    EditRequest("LinkedIn", "{} is owned by", "Microsoft", "Apple",
                phrasings=("{} is a product of",)),
    EditRequest("LinkedIn", "{} is owned by", "Microsoft", "Apple",
                phrasings=("{} is a product of", "{} was bought by")),
    EditRequest("Paris", "The capital of {} is", "Rome", "France",
                phrasings=("{} has as its capital",)),
    EditRequest("Skype", "{} was made by", "Microsoft", None, phrasings=("{} comes from",)),
]
# "cre" is the tiny model's greedy answer to the bare prompt; after "{} comes from" it
# beats "Apple" without being the greedy answer.
BARE_LEADER = EditRequest("Berlin", "{} was bought by", "cre", "Apple",
                          phrasings=("{} comes from",))


def _scores(loaded, request: EditRequest, template: str, context: str):
    def score(obj: str):
        spec = PromptSpec(template, request.subject, object_ids(loaded, obj), context)
        return score_targets(loaded, [spec])[0]

    return score(request.new_object), (score(request.old_object) if request.old_object
                                       else None)


def _expected(loaded, request: EditRequest, rule: TookRule, phrasings: bool) -> bool:
    prompts = [(request.template, context) for context in CONTEXTS]
    if phrasings:
        prompts += [(phrasing, "") for phrasing in request.phrasings]
    passed = []
    for index, (template, context) in enumerate(prompts):
        new, old = _scores(loaded, request, template, context)
        leads = rule is TookRule.MOST_PROBABLE or (
            rule is TookRule.MOST_PROBABLE_BARE and index == 0)
        if old is None:
            passed.append(new.exact)
        elif leads:
            passed.append(new.mean_nll < old.mean_nll and new.exact)
        else:
            passed.append(new.mean_nll < old.mean_nll)
    return all(passed)


@pytest.mark.parametrize("phrasings", [False, True])
@pytest.mark.parametrize("rule", list(TookRule))
def test_took_follows_the_rule_on_every_checked_prompt(tiny_loaded, rule, phrasings):
    loaded = tiny_loaded()
    requests = [*REQUESTS, BARE_LEADER]
    outcomes = edit_outcomes(loaded, requests, CONTEXTS, rule, phrasings)
    assert outcomes.took == [_expected(loaded, r, rule, phrasings) for r in requests]
    bare = [_scores(loaded, r, r.template, "")[0].probability for r in requests]
    assert outcomes.probability == pytest.approx(bare, rel=1e-4)


def test_beating_the_old_object_is_not_being_the_greedy_answer(tiny_loaded):
    loaded = tiny_loaded()
    wins = edit_outcomes(loaded, REQUESTS[:1], CONTEXTS, TookRule.WINS).took
    most_probable = edit_outcomes(loaded, REQUESTS[:1], CONTEXTS, TookRule.MOST_PROBABLE).took
    assert wins == [True] and most_probable == [False]


def test_the_bare_rule_asks_the_greedy_answer_of_the_bare_prompt_alone(tiny_loaded):
    loaded = tiny_loaded()
    requests = [REQUESTS[0], BARE_LEADER]
    took = {rule: edit_outcomes(loaded, requests, CONTEXTS, rule, phrasings=True).took
            for rule in TookRule}
    assert took[TookRule.WINS] == [True, True]
    assert took[TookRule.MOST_PROBABLE] == [False, False]
    assert took[TookRule.MOST_PROBABLE_BARE] == [False, True]


def test_a_phrasing_the_new_object_loses_on_keeps_the_fact_in(tiny_loaded):
    loaded = tiny_loaded()
    assert edit_outcomes(loaded, REQUESTS[:2], CONTEXTS).took == [True, True]
    assert edit_outcomes(loaded, REQUESTS[:2], CONTEXTS, phrasings=True).took == [True, False]


def test_contexts_must_start_bare(tiny_loaded):
    with pytest.raises(ValueError, match="bare context"):
        edit_outcomes(tiny_loaded(), REQUESTS, ["Once upon a time. ", ""])
