"""A ``bench lifelong`` run's preparation, kept and read back by a later run."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from factsync.bench.canary_facts import pick_canaries
from factsync.bench.lifelong import measure_unedited
from factsync.bench.lifelong_scoring import Yardstick
from factsync.bench.norm_growth import NormGrowth
from factsync.bench.prepared_runs import Preparation, PreparationInputs, PreparedRuns
from factsync.evaluation.suites import load_cases, prepare_suite

FLUENCY = [
    "Once upon a time, in 1998, scientists found a new city in the north.",
    "Here is how to write a letter: Dear customer, thank you for your order.",
]


@pytest.fixture
def prepared(tiny_loaded, tiny_engine, counterfact_file):
    """A tiny model, the inputs of a run of four records and their preparation."""
    loaded = tiny_loaded()
    engine = tiny_engine(loaded)
    cases = load_cases("counterfact", counterfact_file)
    inputs = PreparationInputs(
        fingerprint=loaded.fingerprint, device="cpu", dtype="float32",
        dataset="counterfact", cases=cases[:4], neighbours=1,
        canary_candidates=[case.request for case in cases[4:]],
        fluency_texts=FLUENCY, held_out_texts=FLUENCY[::-1], seed=0)
    suite = prepare_suite(loaded, "counterfact", inputs.cases, neighbours_per_fact=1)
    # The tiny model states none of the daemon's canaries; one stands in, to be kept.
    yardstick = Yardstick.prepare(
        loaded, suite, pick_canaries(loaded, inputs.canary_candidates), FLUENCY,
        stated_canaries=[("The capital of France is", "Paris")], held_out_texts=FLUENCY[::-1])
    methods = {"memit": engine.settings}
    return loaded, inputs, Preparation(yardstick, measure_unedited(loaded, yardstick, methods))


def test_a_kept_preparation_reads_back_as_it_was_measured(prepared, tmp_path):
    loaded, inputs, preparation = prepared
    runs = PreparedRuns(tmp_path)
    assert runs.load(inputs) is None
    path = runs.save(inputs, preparation)
    assert path.parent == tmp_path

    again = runs.load(inputs)
    assert again is not None
    kept, made = again.yardstick, preparation.yardstick
    assert kept.suite.requests == made.suite.requests
    assert kept.suite.probes == made.suite.probes
    assert kept.suite.reference == made.suite.reference
    assert any(request.neighbours for request in kept.suite.requests)
    assert kept.canaries == made.canaries
    assert kept.stated_canaries == made.stated_canaries
    assert kept.base_nlls == made.base_nlls
    assert kept.held_out_base_nlls == made.held_out_base_nlls
    assert (kept.fluency_texts, kept.held_out_texts) == (FLUENCY, FLUENCY[::-1])
    assert again.unedited == preparation.unedited
    # What was read back measures the model as what was prepared does.
    growth = NormGrowth(loaded, [0])
    assert kept.measure(loaded, 4, growth, 0.0) == made.measure(loaded, 4, growth, 0.0)


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"neighbours": 2}, {"dtype": "bfloat16"}, {"fingerprint": "other"},
    {"held_out_texts": []}, {"fluency_texts": FLUENCY[:1]},
])
def test_other_inputs_are_prepared_again(prepared, tmp_path, change):
    _, inputs, preparation = prepared
    runs = PreparedRuns(tmp_path)
    runs.save(inputs, preparation)
    assert runs.load(replace(inputs, **change)) is None


def test_other_records_are_prepared_again(prepared, tmp_path):
    _, inputs, preparation = prepared
    runs = PreparedRuns(tmp_path)
    runs.save(inputs, preparation)
    assert runs.load(replace(inputs, cases=inputs.cases[:3])) is None
    first = inputs.cases[0]
    renamed = replace(first, request=replace(first.request, new_object="Tokyo"))
    assert runs.load(replace(inputs, cases=[renamed, *inputs.cases[1:]])) is None
    assert runs.load(replace(inputs, canary_candidates=inputs.canary_candidates[1:])) is None


@pytest.mark.parametrize("damage", [
    lambda saved: "{not json",
    lambda saved: json.dumps(saved | {"key": saved["key"] | {"n": 5}}),
    lambda saved: json.dumps({k: v for k, v in saved.items() if k != "unedited"}),
    lambda saved: json.dumps(saved | {"editing": saved["editing"][:2]}),
])
def test_a_damaged_or_foreign_file_is_prepared_again_with_a_warning(
        prepared, tmp_path, caplog, damage):
    _, inputs, preparation = prepared
    runs = PreparedRuns(tmp_path)
    path = runs.save(inputs, preparation)
    path.write_text(damage(json.loads(path.read_text())))
    with caplog.at_level(logging.WARNING, logger="factsync.bench.prepared_runs"):
        assert runs.load(inputs) is None
    assert f"preparing the records again: cannot use {path}" in caplog.text
