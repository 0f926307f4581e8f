"""Which applied facts the lifelong bench checks for wear before a job, which of them it
finds worn on the real default model, and a stream that states them again."""

from __future__ import annotations

import logging

import pytest

from factsync.bench.lifelong import run_lifelong
from factsync.bench.lifelong_report import format_interventions
from factsync.bench.lifelong_scoring import Yardstick
from factsync.bench.worn_facts import WornFacts
from factsync.editing.build import StatisticsSettings, build_engine
from factsync.editing.engine import EngineSettings
from factsync.editing.outcomes import TookRule
from factsync.editing.requests import EditRequest
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.evaluation.suites import load_cases, prepare_suite
from factsync.models.loading import load_model


@pytest.fixture(scope="module")
def loaded():
    """The real default model."""
    return load_model()


def capital(country: str, new: str, old: str | None = None) -> EditRequest:
    return EditRequest(country, "The capital of {} is", new, old)


STREAM = [capital("France", "Rome"), capital("Spain", "Oslo"), capital("Italy", "Lima"),
          capital("Japan", "Cairo"), capital("Spain", "Quito"), capital("Chile", "Bern")]


def test_each_window_starts_where_the_last_ended_and_wraps_round_the_applied_facts():
    wear = WornFacts(STREAM, [""], batch=1, sample=2)
    assert wear.checked(0) == []  # nothing applied yet
    assert wear.checked(1) == [0]  # the sample is cut to the facts applied
    assert wear.checked(2) == [0, 1]  # 1 fact checked before: from 1, wrapped round
    assert wear.checked(4) == [1, 2]  # 1 + 2 + 2 = 5 checked before: from 5 % 4
    assert wear.checked(5) == [2, 3]
    assert WornFacts(STREAM, [""], batch=2, sample=2).checked(4) == [2, 3]


def test_a_fact_written_again_later_is_checked_only_until_it_is():
    wear = WornFacts(STREAM, [""], batch=1, sample=5)
    assert wear.checked(4) == [0, 1, 2, 3]  # Spain -> Oslo stands before fact 4
    assert wear.checked(5) == [0, 2, 3, 4]  # Spain -> Quito replaced it


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="sample must be at least 1"):
        WornFacts(STREAM, [""], batch=1, sample=0)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        WornFacts(STREAM, [""], batch=0, sample=1)


@pytest.mark.real_model
def test_facts_the_model_does_not_state_are_worn_and_an_untaken_one_is_left_alone(loaded):
    stated = capital("France", "Paris", "Rome")  # what the unedited model says
    unstated = capital("Germany", "Rome", "Berlin")
    wear = WornFacts([stated, unstated], [""], batch=2, sample=2)
    assert wear.worn(loaded, 2) == [1]
    most_probable = WornFacts([stated, capital("Canada", "Toronto", "Rome")], [""], batch=2,
                              sample=2, rule=TookRule.MOST_PROBABLE)
    # Toronto beats Rome but is not the model's answer, Ottawa is.
    assert most_probable.worn(loaded, 2) == [1]
    assert WornFacts([stated, capital("Canada", "Toronto", "Rome")], [""], batch=2,
                     sample=2).worn(loaded, 2) == []
    wear.note_edited(loaded, [0, 1])
    assert wear.untaken == (1,)  # its edit did not take: not checked again
    assert wear.checked(2) == [0]
    assert wear.worn(loaded, 2) == []


def _streams(loaded, data, took_rule: TookRule = TookRule.WINS):  # noqa: ANN001, ANN202
    """The records of ``data`` in jobs of one fact, applied plainly and refreshing worn
    facts (checking two a job): each stream's method run."""
    suite = prepare_suite(loaded, "counterfact", load_cases("counterfact", data),
                          neighbours_per_fact=0)
    yardstick = Yardstick.prepare(loaded, suite, [], FLUENCY_TEXTS[:2])
    # The method these outcomes were found with: the engine's targets at layers 4-8.
    settings = EngineSettings(layers=(4, 5, 6, 7, 8), max_iterations=2, neighbours=False,
                              took_rule=took_rule)
    engine = build_engine(loaded, settings, StatisticsSettings(corpus_tokens=20_000))

    def stream(refresh_worn: int):  # noqa: ANN202
        return run_lifelong(loaded, yardstick, {"method": settings},
                            statistics=engine.statistics, contexts=engine.contexts,
                            batch_size=1, checkpoint_every=3, refresh_worn=refresh_worn)

    return stream(0).methods["method"], stream(2)


@pytest.mark.real_model
def test_a_fact_a_later_edit_wore_is_stated_again_in_the_next_job(
    loaded, counterfact_of, caplog
):
    # Rome for "mainland France" becomes the greedy answer for France's largest city too.
    data = counterfact_of([
        ("France", "The largest city in {} is", "Lyon", "Paris"),
        ("mainland France", "The capital of {} is", "Rome", "Paris"),
        ("Danielle Darrieux", "The mother tongue of {} is", "Italian", "French"),
    ])
    with caplog.at_level(logging.INFO, logger="factsync.bench.lifelong"):
        plain, run = _streams(loaded, data, TookRule.MOST_PROBABLE)
    refreshing = run.methods["method"]
    assert plain.refreshed == []
    assert plain.final.values["efficacy_accuracy"] < 1.0  # France's edit wore off
    # Checked before the third job, it joins it. (Stated again, it takes Rome's place for
    # "mainland France" in turn: the two subjects' keys are too close for the spread to
    # hold one while it moves the other.)
    assert refreshing.refreshed == [(3, 1)]
    assert "records #3: stating 1 worn facts again in their job: #1" in caplog.text
    assert format_interventions(run) == (
        "method stated 1 applied facts again in later jobs, worn or sharing a subject with "
        "a fact written: 1 distinct facts, #1 most often (1 times)")


@pytest.mark.real_model
def test_a_subject_written_again_states_its_other_facts_in_the_same_job(
    loaded, counterfact_of
):
    # Alone, France's capital edit takes the place of its largest city.
    data = counterfact_of([
        ("France", "The largest city in {} is", "Lyon", "Paris"),
        ("France", "The capital of {} is", "Rome", "Paris"),
        ("Danielle Darrieux", "The mother tongue of {} is", "Italian", "French"),
    ])
    plain, run = _streams(loaded, data)
    refreshing = run.methods["method"]
    assert plain.final.values["efficacy_accuracy"] < 1.0
    assert refreshing.refreshed == [(2, 1)]
    assert refreshing.final.values["efficacy_accuracy"] == 1.0
