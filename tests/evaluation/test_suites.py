"""Suites on tiny models: per-record scores against direct forward passes, and hygiene."""

from __future__ import annotations

import pytest
import torch

from factsync.editing.requests import EditRequest, Neighbour
from factsync.evaluation.record_scores import METRICS
from factsync.evaluation.suites import EvalCase, prepare_suite
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

COUNTERFACT_CASES = [
    EvalCase(
        0,
        EditRequest("Paris", "The capital of {} is", "Rome", "France"),
        paraphrases=("Paris is the capital city of", "Once upon a time, Paris was in"),
        neighbourhood=(("Lyon", "The capital of {} is"), ("Skype", "{} is owned by")),
    ),
    EvalCase(
        1,
        EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
        paraphrases=(),
        neighbourhood=(("Skype", "{} is owned by"),),
    ),
]

ZSRE_QUESTIONS = [
    ("Watts Humphrey", "What university did {} attend?",
     "Which university was attended by Watts Humphrey?",
     ("the theme song for the show friends", "nq question: who sings {}?")),
    ("Denny Herzig", "Which position does {} play?",
     "What position does Denny Herzig play in football?",
     ("skype", "nq question: who owns {}?")),
    ("Lahti Town Hall", "Who was the designer of {}?",
     "Who designed Lahti Town Hall?",
     ("the capital of france", "nq question: where is {}?")),
]


def _teacher_forced(loaded, prompt: str, obj: str) -> tuple[list[int], list[int]]:
    """(object tokens, argmax at each of their positions), from one plain forward pass."""
    target = list(object_ids(loaded, obj))
    ids = list(loaded.prefix_ids) + loaded.tokenizer(prompt)["input_ids"] + target
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0]
    start = len(ids) - len(target)
    return target, logits[start - 1 : len(ids) - 1].argmax(-1).tolist()


def _token_share(loaded, prompt: str, obj: str) -> float:
    target, predicted = _teacher_forced(loaded, prompt, obj)
    return sum(p == t for p, t in zip(predicted, target, strict=True)) / len(target)


def _greedy_text(loaded, prompt: str, tokens: int = 2) -> str:
    """What the model writes after ``prompt``: an answer it partly gets right."""
    ids = list(loaded.prefix_ids) + loaded.tokenizer(prompt)["input_ids"]
    start = len(ids)
    for _ in range(tokens):
        with torch.no_grad():
            ids.append(int(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return loaded.tokenizer.decode(ids[start:])


def _prefers(loaded, prompt: str, winner: str, loser: str) -> float:
    win, lose = score_targets(
        loaded, [PromptSpec("{}", prompt, object_ids(loaded, o)) for o in (winner, loser)]
    )
    return float(win.mean_nll < lose.mean_nll)


def _zsre_cases(loaded) -> list[EvalCase]:
    """ZsRE cases whose answers are the model's own greedy text, so accuracies vary."""
    cases = []
    for index, (subject, template, rephrase, (loc_subject, loc)) in enumerate(ZSRE_QUESTIONS):
        prompt, loc_prompt = template.format(subject), loc.format(loc_subject)
        cases.append(
            EvalCase(
                index,
                EditRequest(subject, template, _greedy_text(loaded, prompt), "Trinity College"),
                paraphrases=(rephrase,),
                neighbourhood=((loc_subject, loc),),
                neighbourhood_objects=(_greedy_text(loaded, loc_prompt),),
            )
        )
    return cases


def _ordered(loaded, prompt: str, one: str, other: str) -> tuple[str, str]:
    """(the object the model prefers after ``prompt``, the other one)."""
    return (one, other) if _prefers(loaded, prompt, one, other) else (other, one)


def _object_where(loaded, prompt: str, answer: str, *, kept: bool) -> str:
    """A new object that ``answer`` beats after ``prompt`` (``kept``), or that beats it."""
    for candidate in ("Paris", "Rome", "Apple", "guitar", "French", "Italy", "letter"):
        if _prefers(loaded, prompt, answer, candidate) == float(kept):
            return candidate
    raise AssertionError(f"no candidate object fits {prompt!r} against {answer!r}")


def test_counterfact_scores_follow_the_definitions(tiny_loaded):
    loaded = tiny_loaded()
    suite = prepare_suite(loaded, "counterfact", COUNTERFACT_CASES, neighbours_per_fact=0)
    scores = suite.score(loaded)
    assert tuple(scores) == METRICS == suite.metrics()
    assert scores["efficacy_success"] == [
        _prefers(loaded, "The capital of Paris is", "Rome", "France"),
        _prefers(loaded, "LinkedIn is owned by", "Apple", "Microsoft"),
    ]
    exact = [
        float(_token_share(loaded, "The capital of Paris is", "Rome") == 1.0),
        float(_token_share(loaded, "LinkedIn is owned by", "Apple") == 1.0),
    ]
    assert scores["efficacy_accuracy"] == exact
    paraphrase = [_prefers(loaded, p, "Rome", "France") for p in COUNTERFACT_CASES[0].paraphrases]
    assert scores["paraphrase_success"] == [pytest.approx(sum(paraphrase) / 2), None]
    assert scores["paraphrase_accuracy"][1] is None
    first = [_prefers(loaded, p, "France", "Rome") for p in
             ("The capital of Lyon is", "Skype is owned by")]
    second = _prefers(loaded, "Skype is owned by", "Microsoft", "Apple")
    assert scores["neighbourhood_success"] == [pytest.approx(sum(first) / 2), second]
    # The unedited model predicts what it predicted: accuracy against itself is 1.
    assert scores["neighbourhood_accuracy"] == [1.0, 1.0]


def test_counterfact_neighbourhood_accuracy_counts_changed_predictions(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    suite = prepare_suite(loaded, "counterfact", COUNTERFACT_CASES, neighbours_per_fact=0)
    hood = [("The capital of Lyon is", "France"), ("Skype is owned by", "France")]
    before = [_teacher_forced(loaded, p, o)[1] for p, o in hood]
    handle = random_delta(loaded, loaded.default_layers, scale=2.0).apply(
        loaded
    )
    try:
        after = [_teacher_forced(loaded, p, o)[1] for p, o in hood]
        kept = [float(a == b) for a, b in zip(after, before, strict=True)]
        assert kept != [1.0, 1.0], "the delta must change a prediction for this test to bite"
        assert suite.score(loaded, [0])["neighbourhood_accuracy"] == [sum(kept) / 2]
    finally:
        handle.revert()
    assert suite.score(loaded)["neighbourhood_accuracy"] == [1.0, 1.0]


def test_zsre_scores_follow_the_paper(tiny_loaded):
    loaded = tiny_loaded()
    cases = _zsre_cases(loaded)
    suite = prepare_suite(loaded, "zsre", cases, neighbours_per_fact=0)
    scores = suite.score(loaded)
    assert "neighbourhood_success" not in suite.metrics()
    assert scores["neighbourhood_success"] == [None, None, None]
    efficacy = [_token_share(loaded, c.request.prompt, c.request.new_object) for c in cases]
    paraphrase = [_token_share(loaded, c.paraphrases[0], c.request.new_object) for c in cases]
    hood = [
        _token_share(loaded, t.format(s), o)
        for c in cases
        for (s, t), o in zip(c.neighbourhood, c.neighbourhood_objects, strict=True)
    ]
    # Shares strictly between 0 and 1 tell a per-token accuracy from an exact match.
    assert any(0.0 < v < 1.0 for v in efficacy + hood)
    assert scores["efficacy_accuracy"] == pytest.approx(efficacy)
    assert scores["paraphrase_accuracy"] == pytest.approx(paraphrase)
    assert scores["neighbourhood_accuracy"] == pytest.approx(hood)
    assert scores["efficacy_success"] == [
        _prefers(loaded, c.request.prompt, c.request.new_object, "Trinity College") for c in cases
    ]


@pytest.mark.parametrize("dataset", ["counterfact", "zsre"])
def test_score_gives_one_value_per_chosen_case_in_order(tiny_loaded, dataset):
    loaded = tiny_loaded()
    cases = COUNTERFACT_CASES if dataset == "counterfact" else _zsre_cases(loaded)
    suite = prepare_suite(loaded, dataset, cases, neighbours_per_fact=1)
    every = suite.score(loaded)
    assert set(every) == set(METRICS)
    assert all(len(values) == len(cases) for values in every.values())
    chosen = suite.score(loaded, [1, 0])
    assert {m: len(v) for m, v in chosen.items()} == {m: 2 for m in METRICS}
    for metric in METRICS:
        assert chosen[metric] == [every[metric][1], every[metric][0]], metric


def test_a_neighbour_shared_by_two_cases_is_scored_by_neither_once_it_edits(tiny_loaded):
    loaded = tiny_loaded()
    shared = ("Skype", "{} is owned by")
    # Case 0 offers only the shared prompt, with objects ordered so that the unedited
    # model gets it right: it must edit with it.
    old, new = _ordered(loaded, "Skype is owned by", "Microsoft", "Apple")
    cases = [
        EvalCase(0, EditRequest("LinkedIn", "{} is owned by", new, old), (), (shared,)),
        EvalCase(
            1,
            EditRequest("Paris", "The capital of {} is", "Rome", "France"),
            (),
            (shared, ("Lyon", "The capital of {} is"), ("Nice", "{} is in")),
        ),
    ]
    suite = prepare_suite(loaded, "counterfact", cases, neighbours_per_fact=1)
    assert suite.requests[0].neighbours == (Neighbour("Skype", "{} is owned by", old),)
    used = {n.template.format(n.subject) for r in suite.requests for n in r.neighbours}
    scored = [{prompt for prompt, _ in probe.neighbourhood} for probe in suite.probes]
    assert "Skype is owned by" not in scored[0] | scored[1]
    # Nothing else is held back: a case scores every own prompt no case edits with.
    assert scored[1] == {"The capital of Lyon is", "Nice is in"} - used
    assert suite.score(loaded)["neighbourhood_accuracy"][0] is None
    # Without editing neighbours the shared prompt is scored for both.
    plain = prepare_suite(loaded, "counterfact", cases, neighbours_per_fact=0)
    assert all("Skype is owned by" in {p for p, _ in probe.neighbourhood} for probe in plain.probes)


def test_zsre_cases_borrow_editing_neighbours_from_spare_records_and_score_their_own(
    tiny_loaded,
):
    loaded = tiny_loaded()
    questions = [("skype", "nq question: who owns {}?"), ("france", "nq question: where is {}?")]
    answers = ["Microsoft", "The Rembrandts"]
    # The spare's question qualifies against case 0's new object and not against case 1's.
    new_0 = _object_where(loaded, "nq question: where is france?", answers[1], kept=True)
    new_1 = _object_where(loaded, "nq question: where is france?", answers[1], kept=False)
    case_0, spare = (
        EvalCase(index, EditRequest("Watts Humphrey", "Where did {} study?", new, "Yale"),
                 ("Which university did Watts Humphrey attend?",), (question,), (answer,))
        for index, (new, question, answer) in enumerate(
            zip((new_0, new_0), questions, answers, strict=True)
        )
    )
    case_1 = EvalCase(2, EditRequest("Yale", "Where is {}?", new_1, "New Haven"),
                      ("In which city is Yale?",), (questions[0],), (answers[0],))
    suite = prepare_suite(loaded, "zsre", [case_0, case_1], neighbours_per_fact=1,
                          spare=[spare])
    assert suite.requests[0].neighbours == (Neighbour("france", questions[1][1], answers[1]),)
    assert suite.requests[1].neighbours == ()
    # Every case keeps its own question to score, whether or not it borrowed.
    assert [probe.neighbourhood for probe in suite.probes] == [
        (("nq question: who owns skype?", "Microsoft"),),
        (("nq question: who owns skype?", "Microsoft"),),
    ]
    assert all(v is not None for v in suite.score(loaded)["neighbourhood_accuracy"])


def test_zsre_cases_without_spare_records_edit_without_neighbours(tiny_loaded, caplog):
    loaded = tiny_loaded()
    cases = _zsre_cases(loaded)
    suite = prepare_suite(loaded, "zsre", cases, neighbours_per_fact=2)
    assert all(request.neighbours == () for request in suite.requests)
    assert [len(probe.neighbourhood) for probe in suite.probes] == [1, 1, 1]
    assert "no spare records" in caplog.text


def test_a_suite_needs_cases(tiny_loaded):
    with pytest.raises(ValueError, match="no cases to prepare"):
        prepare_suite(tiny_loaded(), "zsre", [])
