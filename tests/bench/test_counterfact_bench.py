"""The benchmarks' mechanics on a tiny model with hand-written COUNTERFACT and ZsRE records."""

from __future__ import annotations

import json
import re

import pytest
import torch

from factsync.bench.budget import format_budget_table, run_budget_study
from factsync.bench.counterfact import (
    COLUMNS,
    format_table,
    run_counterfact,
    standard_methods,
    to_json,
)
from factsync.cli import main
from factsync.editing.covariance import compute_key_statistics
from factsync.editing.engine import EngineSettings
from factsync.editing.targets import TargetSettings
from factsync.evaluation.counterfact import load_counterfact
from factsync.evaluation.record_scores import METRICS
from factsync.evaluation.zsre import load_zsre

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


ZSRE_RECORD = {
    "subject": "France",
    "src": "What is the capital of France?",
    "pred": "Paris",
    "rephrase": "Which city is the capital of France?",
    "alt": "Rome",
    "answers": ["Paris"],
    "loc": "nq question: who owns skype",
    "loc_ans": "Microsoft",
    "cond": "Paris >> Rome || What is the capital of France?",
    "neighborhood_samples": [{"subject": "skype", "prompt": "nq question: who owns {}?"}],
}
TEXTS = ["The capital of France is Paris. Skype is in Lyon."] * 10
CELL = re.compile(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]$")


def _cases(tmp_path):
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([RECORD, {**RECORD, "case_id": 8}]))
    return load_counterfact(path)


def _zsre_cases(tmp_path):
    path = tmp_path / "zsre.json"
    other = {**ZSRE_RECORD, "loc": "nq question: where is lyon", "loc_ans": "France",
             "neighborhood_samples": [{"subject": "lyon", "prompt": "nq question: where is {}?"}]}
    path.write_text(json.dumps([ZSRE_RECORD, other]))
    return load_zsre(path)


def _run(loaded, cases, methods, **options):
    layers = loaded.default_layers
    return run_counterfact(
        loaded,
        cases,
        methods,
        statistics=compute_key_statistics(loaded, layers, TEXTS, token_budget=300, progress=False),
        contexts=["", "Once upon a time. "],
        fluency_texts=TEXTS[:2],
        batch_size=1,
        **options,
    )


def test_every_method_gets_a_row_and_the_model_is_restored(tiny_loaded, tmp_path):
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    base = EngineSettings(target=TargetSettings(steps=3, chunk_size=2))
    methods = standard_methods(base, max_iterations=2)
    rows = _run(loaded, _cases(tmp_path), methods)
    assert list(rows) == ["unedited", *methods]
    assert rows["unedited"].perplexity_ratio == 1.0
    assert rows["unedited"].mean("neighbourhood_accuracy") == 1.0
    assert 1.0 <= rows["memit+ime"].iterations_mean <= 2.0
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    for row in rows.values():
        assert all(len(values) == 2 for values in row.values.values())
    report = to_json(rows, 2, dataset="counterfact")
    assert (report["dataset"], report["n"]) == ("counterfact", 2)
    for method in report["methods"].values():
        assert set(method) == {*COLUMNS, "intervals"}
        assert list(method["intervals"]) == [*METRICS, "perplexity_ratio"]
        for metric, (low, high) in method["intervals"].items():
            assert low <= method[metric] <= high, metric
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith("unedited | ")
    cells = table[2].split(" | ")
    assert len(cells) == 1 + len(COLUMNS)
    assert all(CELL.match(cell) for cell in cells[1 : 2 + len(METRICS)]), cells


def test_zsre_records_run_through_the_bench(tiny_loaded, tmp_path):
    loaded = tiny_loaded()
    base = EngineSettings(target=TargetSettings(steps=3, chunk_size=2), neighbours=True)
    rows = _run(loaded, _zsre_cases(tmp_path), {"memit+nme": base}, dataset="zsre")
    assert list(rows) == ["unedited", "memit+nme"]
    for row in rows.values():
        assert row.values["neighbourhood_success"] == [None, None]
        assert row.interval("neighbourhood_success") is None
        assert row.mean("efficacy_accuracy") is not None
    report = to_json(rows, 2, dataset="zsre")
    assert report["methods"]["memit+nme"]["intervals"]["neighbourhood_success"] is None
    assert format_table(rows).splitlines()[2].split(" | ")[5] == "-"


def test_the_command_benches_zsre_records_with_named_fluency_texts(
    tiny_loaded, tmp_path, monkeypatch, capsys
):
    model_dir = tmp_path / "model"
    loaded = tiny_loaded()
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([ZSRE_RECORD] * 2))
    fluency = tmp_path / "texts.json"
    fluency.write_text(json.dumps([{"Text": text} for text in TEXTS[:2]]))
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    report = tmp_path / "report.json"
    code = main([
        "bench", "counterfact", "--dataset", "zsre", "--data", str(data),
        "--fluency", str(fluency), "--n", "2", "--batch", "1", "--methods", "memit",
        "--model", str(model_dir), "--device", "cpu", "--corpus-tokens", "1000",
        "--json", str(report),
    ])
    assert code == 0
    numbers = json.loads(report.read_text())
    assert (numbers["dataset"], numbers["n"]) == ("zsre", 2)
    assert list(numbers["methods"]) == ["unedited", "memit"]
    assert numbers["methods"]["memit"]["intervals"]["neighbourhood_success"] is None
    assert capsys.readouterr().out.startswith("ZsRE, 2 records, batches of 1")


def test_the_command_names_a_missing_fluency_file(tmp_path, capsys):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([ZSRE_RECORD]))
    code = main([
        "bench", "counterfact", "--dataset", "zsre", "--data", str(data),
        "--fluency", str(tmp_path / "missing.json"), "--model", str(tmp_path / "none"),
    ])
    assert code == 1 and "missing.json" in capsys.readouterr().err


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


def _bench_counterfact(tiny_loaded, tmp_path, monkeypatch, *options: str) -> dict:
    """Run ``bench counterfact`` on the tiny model and two records; its JSON report."""
    model_dir = tmp_path / "model"
    loaded = tiny_loaded()
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([RECORD, {**RECORD, "case_id": 8}]))
    fluency = tmp_path / "texts.json"
    fluency.write_text(json.dumps([{"Text": text} for text in TEXTS[:2]]))
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    report = tmp_path / "report.json"
    code = main([
        "bench", "counterfact", "--data", str(data), "--fluency", str(fluency), "--n", "2",
        "--batch", "1", "--model", str(model_dir), "--device", "cpu",
        "--corpus-tokens", "1000", "--json", str(report), *options,
    ])
    assert code == 0
    return json.loads(report.read_text())


def test_methods_are_compared_record_by_record_against_a_named_one(
    tiny_loaded, tmp_path, monkeypatch, capsys
):
    numbers = _bench_counterfact(tiny_loaded, tmp_path, monkeypatch,
                                 "--methods", "memit,memit+ime", "--max-iterations", "2",
                                 "--paired-against", "memit")

    paired = numbers["paired_against"]
    assert paired["method"] == "memit"
    assert list(paired["differences"]) == ["unedited", "memit+ime"]
    for name, differences in paired["differences"].items():
        for metric in METRICS:
            mean, low, high = differences[metric]
            mine = numbers["methods"][name][metric]
            assert mean == pytest.approx(mine - numbers["methods"]["memit"][metric]), metric
            assert low <= mean <= high
        mean, low, high = differences["perplexity_over_reference"]  # paired over the texts
        mine, theirs = (numbers["methods"][m]["perplexity_ratio"] for m in (name, "memit"))
        assert mean == pytest.approx(mine / theirs) and low <= mean <= high
    out = capsys.readouterr().out
    table = out[out.index("against memit in float32"):].splitlines()
    assert [line.split(" | ")[0] for line in table[3:5]] == ["unedited", "memit+ime"]


def test_a_second_dtype_is_compared_record_by_record_with_the_first(
    tiny_loaded, tmp_path, monkeypatch, capsys
):
    numbers = _bench_counterfact(tiny_loaded, tmp_path, monkeypatch, "--methods", "memit",
                                 "--dtype", "bfloat16", "--against-dtype", "float32")

    assert numbers["dtype"] == "bfloat16" and numbers["against"]["dtype"] == "float32"
    differences = numbers["against"]["differences"]
    assert list(differences) == ["unedited", "memit"]
    for name, metrics in differences.items():
        mean, low, high = metrics["efficacy_success"]
        ours, theirs = (numbers["methods"][name], numbers["against"]["methods"][name])
        assert mean == pytest.approx(ours["efficacy_success"] - theirs["efficacy_success"])
        assert low <= mean <= high
        assert metrics["perplexity_ratio"] == pytest.approx(
            ours["perplexity_ratio"] - theirs["perplexity_ratio"])
    assert "bfloat16 against float32, the same records paired" in capsys.readouterr().out


def test_a_comparison_with_a_method_not_run_is_refused(tmp_path, capsys):
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([RECORD]))
    code = main([
        "bench", "counterfact", "--data", str(data), "--n", "1",
        "--methods", "memit", "--paired-against", "memit+ime",
        "--model", str(tmp_path / "none"),
    ])
    assert code == 1
    assert "--paired-against 'memit+ime' is not among the methods run" in capsys.readouterr().err


def test_a_fluency_file_of_another_shape_is_named(tmp_path, capsys):
    data = tmp_path / "cf.json"
    data.write_text(json.dumps([RECORD]))
    code = main([
        "bench", "counterfact", "--data", str(data), "--fluency", str(data), "--n", "1",
        "--model", str(tmp_path / "none"),
    ])
    assert code == 1
    assert f"{data}: fluency texts must be a JSON list" in capsys.readouterr().err
