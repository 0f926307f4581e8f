"""The lifelong bench's canary gate on the real default model: a job that loses a canary
is tried again with the canary stated in it, before any fact of it is refused; and the
well-known facts that gate never reads."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from factsync.bench.canary_facts import canary_repairs, well_known_facts
from factsync.bench.lifelong import run_lifelong
from factsync.bench.lifelong_report import format_interventions, from_json, to_json
from factsync.bench.lifelong_scoring import Yardstick
from factsync.editing.build import StatisticsSettings, build_engine
from factsync.editing.engine import EngineSettings
from factsync.evaluation.heldout_text import FLUENCY_TEXTS
from factsync.evaluation.suites import load_cases, prepare_suite
from factsync.facts.guards import GUARD_FACTS
from factsync.models.loading import load_model

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def loaded():
    """The real default model."""
    return load_model()

# Moving France's capital to Rome spills onto the first canary (tests/jobs/
# test_canary_gate.py); nothing in the job reaches the second.
CANARIES = [("The largest city in {} is", "France", "Paris"),
            ("The capital of {} is", "Germany", "Berlin")]


def test_a_lost_canary_is_stated_again_in_the_job_instead_of_refusing_its_fact(
    loaded, counterfact_file, caplog
):
    france = [case for case in load_cases("counterfact", counterfact_file)
              if case.request.subject == "France"]
    suite = prepare_suite(loaded, "counterfact", france, neighbours_per_fact=1)
    yardstick = Yardstick.prepare(
        loaded, suite, [], FLUENCY_TEXTS[:2],
        stated_canaries=[(template.format(subject), obj) for template, subject, obj in CANARIES])
    assert yardstick.canaries_held(loaded) == [1.0, 1.0]
    # The method this outcome was found with: the engine's targets at layers 4-8.
    engine = build_engine(loaded, EngineSettings(layers=(4, 5, 6, 7, 8), max_iterations=2,
                                                 neighbours=False),
                          StatisticsSettings(corpus_tokens=20_000))

    def stream(**gate):
        run = run_lifelong(loaded, yardstick, {"default": engine.settings},
                           statistics=engine.statistics, contexts=engine.contexts,
                           batch_size=1, checkpoint_every=1, **gate)
        return run, run.methods["default"]

    _, refusing = stream(refuse_canary_loss=True)
    assert refusing.refused == [1]  # alone, France's edit loses the first canary
    assert refusing.final.values["efficacy_success"] == 0.0
    with caplog.at_level(logging.INFO, logger="factsync.bench.lifelong"):
        run, repairing = stream(canary_repairs=canary_repairs([], CANARIES))
    assert repairing.refused == []
    assert repairing.repaired == [(1, "The largest city in France is Paris")]
    assert repairing.final.values["efficacy_success"] == 1.0
    assert repairing.final.values["canary"] == 1.0
    assert ("the job of records #1 keeps every canary with The largest city in France is Paris "
            "stated again in it") in caplog.text
    assert from_json(to_json(run)).methods["default"].repaired == repairing.repaired
    assert format_interventions(run) == (
        "default stated 1 lost canaries again in the job that lost them: The largest city in "
        "France is Paris (job from #1)")


def test_well_known_facts_are_the_stated_guard_facts_a_stream_leaves_alone(
    loaded, counterfact_file
):
    known = well_known_facts(loaded)
    assert len(known) > len(GUARD_FACTS) / 2  # the model states most of them
    assert ("The capital of Australia is", "Canberra") in known
    france = next(case for case in load_cases("counterfact", counterfact_file)
                  if case.request.subject == "France")
    australia = replace(france, request=replace(france.request, subject="Australia"),
                        relation="P36")
    assert well_known_facts(loaded, [australia]) == [
        fact for fact in known if fact != ("The capital of Australia is", "Canberra")]
