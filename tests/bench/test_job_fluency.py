"""The fluency texts read after every job of a ``bench lifelong`` stream."""

from __future__ import annotations

import math

import pytest

from factsync.bench.canary_facts import pick_canaries
from factsync.bench.job_fluency import (
    JobFluency,
    JobReading,
    added_by_each,
    format_job_fluency,
)
from factsync.bench.lifelong import run_lifelong
from factsync.bench.lifelong_report import format_fluency_by_job, from_json, to_json
from factsync.bench.lifelong_scoring import Yardstick
from factsync.editing.delta import applied
from factsync.evaluation.fluency import text_nlls
from factsync.evaluation.suites import load_cases, prepare_suite

TEXTS = [
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
    "The river runs past the mill, and the miller counts his sacks of flour.",
]


def test_a_reading_splits_the_whole_change_of_the_texts_nll(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    fluency = JobFluency(loaded, TEXTS)
    unchanged = fluency.read(loaded, 0)
    assert unchanged.first_token == unchanged.later_tokens == 0.0

    before = sum(nll for nll, _ in text_nlls(loaded, TEXTS))
    with applied(loaded, random_delta(loaded, [0, 1], scale=0.5)):
        after = sum(nll for nll, _ in text_nlls(loaded, TEXTS))
        reading = fluency.read(loaded, 10)
    assert reading.facts == 10
    assert reading.first_token != 0.0 and reading.later_tokens != 0.0
    assert reading.first_token + reading.later_tokens == pytest.approx(after - before,
                                                                       abs=1e-4)


def test_each_job_is_charged_what_it_added_to_the_reading_before_it():
    readings = [JobReading(10, 0.5, 2.0), JobReading(20, 0.25, 5.0), JobReading(30, 1.0, 4.5)]
    assert added_by_each(readings) == [JobReading(10, 0.5, 2.0), JobReading(20, -0.25, 3.0),
                                       JobReading(30, 0.75, -0.5)]
    text = format_job_fluency(readings, costliest=2)
    assert "after 30 facts: later tokens +4.5 nats, first token +1.0" in text
    assert "the first to 10 facts: +2.0 +3.0 -0.5" in text
    assert "costliest jobs: to 20 facts +3.0, to 10 facts +2.0" in text
    assert format_job_fluency([]) == ""


def test_a_stream_reads_the_texts_after_every_job_up_to_its_final_perplexity(
    tiny_loaded, tiny_engine, counterfact_file
):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    cases = load_cases("counterfact", counterfact_file)
    suite = prepare_suite(loaded, "counterfact", cases[:6], neighbours_per_fact=1)
    canaries = pick_canaries(loaded, [case.request for case in cases[6:]])
    yardstick = Yardstick.prepare(loaded, suite, canaries, TEXTS)
    run = run_lifelong(loaded, yardstick, {"memit": engine.settings},
                       statistics=engine.statistics, contexts=engine.contexts,
                       batch_size=2, checkpoint_every=4)

    method = run.methods["memit"]
    assert [r.facts for r in method.job_fluency] == [2, 4, 6]
    last = method.job_fluency[-1]
    tokens = sum(count for _, count in yardstick.base_nlls)
    # The last job's reading is the change the final checkpoint's perplexity ratio says.
    assert math.exp((last.first_token + last.later_tokens) / tokens) == pytest.approx(
        method.final.values["perplexity_ratio"], rel=1e-5)
    assert from_json(to_json(run)).methods["memit"].job_fluency == method.job_fluency
    assert format_fluency_by_job(run).startswith("memit:\nNLL added to the fluency texts "
                                                 "after 6 facts")
