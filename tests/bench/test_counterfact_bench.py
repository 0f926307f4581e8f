"""The benchmarks' mechanics on a tiny model with a hand-written COUNTERFACT record."""

from __future__ import annotations

import json

import torch

from factsync.bench.budget import format_budget_table, run_budget_study
from factsync.bench.counterfact import (
    COLUMNS,
    format_table,
    run_counterfact,
    split_neighbours,
    standard_methods,
    to_json,
)
from factsync.editing.covariance import compute_key_statistics
from factsync.editing.engine import EngineSettings
from factsync.editing.targets import TargetSettings
from factsync.evaluation.counterfact import load_counterfact

RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The capital of {} is",
        "relation_id": "P36",
        "subject": "France",
        "target_new": {"str": "Rome", "id": "Q220"},
        "target_true": {"str": "Paris", "id": "Q90"},
    },
    "paraphrase_prompts": ["France's capital city is"],
    "neighborhood_samples": [
        {"subject": "Lyon", "prompt": "{} is near"},
        {"subject": "Skype", "prompt": "{} is in"},
        {"subject": "Microsoft", "prompt": "{}, near"},
    ],
}


def _cases(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([RECORD, {**RECORD, "case_id": 8}]))
    return load_counterfact(path)


def test_editing_and_scoring_neighbours_are_disjoint(tiny_loaded, tmp_path):
    loaded = tiny_loaded()
    cases = _cases(tmp_path)
    split = split_neighbours(loaded, cases, per_fact=1)
    for editing, probe in zip(split.editing, split.probes, strict=True):
        used = {template.format(subject) for subject, template in editing}
        assert len(editing) <= 1
        assert used.isdisjoint(probe.neighbourhood)
        assert len(used) + len(probe.neighbourhood) == 3


def test_every_method_gets_a_row_and_the_model_is_restored(tiny_loaded, tmp_path):
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    base = EngineSettings(target=TargetSettings(steps=3, chunk_size=2))
    methods = standard_methods(base, max_iterations=2)
    layers = loaded.spec.default_layers(loaded.num_layers)
    texts = ["The capital of France is Paris. Skype is in Lyon."] * 10
    rows = run_counterfact(
        loaded,
        _cases(tmp_path),
        methods,
        statistics=compute_key_statistics(loaded, layers, texts, token_budget=300, progress=False),
        contexts=["", "Once upon a time. "],
        fluency_texts=texts[:2],
        batch_size=1,
    )
    assert list(rows) == ["unedited", *methods]
    assert rows["unedited"].perplexity_ratio == 1.0
    assert rows["unedited"].scores.neighbourhood_accuracy == 1.0
    assert 1.0 <= rows["memit+ime"].iterations_mean <= 2.0
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    report = to_json(rows, 2)
    assert report["n"] == 2 and set(report["methods"]["memit"]) == set(COLUMNS)
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("unedited | ")


def test_budget_study_reports_every_budget_against_the_largest(tiny_loaded, tmp_path):
    loaded = tiny_loaded()
    texts = ["The capital of France is Paris. Skype is in Lyon, near Microsoft."] * 20
    rows = run_budget_study(
        loaded,
        _cases(tmp_path)[:1],
        [150, 400],
        texts=texts,
        settings=EngineSettings(target=TargetSettings(steps=2)),
        contexts=[""],
        fluency_texts=texts[:1],
        batch_size=1,
    )
    assert [r.budget for r in rows] == [150, 400]
    assert rows[-1].moment_error == 0.0 < rows[0].moment_error
    assert all(r.lambda_mean > 0 for r in rows)
    assert len(format_budget_table(rows).splitlines()) == 4
