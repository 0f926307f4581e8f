"""``bench fluency``: saved deltas' perplexity ratios, each paired against the first."""

from __future__ import annotations

import json

import pytest
import torch

from factsync.bench.fluency_compare import compare_fluency, format_fluency
from factsync.cli import main
from factsync.editing.delta import applied
from factsync.evaluation.fluency import perplexity

TEXTS = ["Dear customer, thank you for your order from Paris.",
         "Danielle Darrieux was a French actress whose mother tongue is French.",
         "LinkedIn is owned by Microsoft, and so is Skype."]


@pytest.fixture
def two_deltas(tiny_loaded, random_delta, tmp_path):
    loaded = tiny_loaded()
    paths = [tmp_path / "strong.safetensors", tmp_path / "weak.safetensors"]
    deltas = [random_delta(loaded, [1, 2], scale=0.5), random_delta(loaded, [1], scale=0.1,
                                                                     seed=3)]
    for delta, path in zip(deltas, paths, strict=True):
        delta.save(path)
    return loaded, deltas, paths


def test_each_delta_is_set_against_the_unedited_model_and_the_first(two_deltas):
    loaded, deltas, paths = two_deltas
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    comparison = compare_fluency(loaded, paths, TEXTS)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name

    base = perplexity(loaded, TEXTS)
    measured = []
    for delta in deltas:
        with applied(loaded, delta):
            measured.append(perplexity(loaded, TEXTS))
    first, second = comparison.rows
    assert first.delta == paths[0] and second.delta == paths[1]
    assert first.ratio.mean == pytest.approx(measured[0] / base, rel=1e-5)
    assert second.ratio.mean == pytest.approx(measured[1] / base, rel=1e-5)
    assert first.over_first.mean == pytest.approx(1.0)
    assert second.over_first.mean == pytest.approx(measured[1] / measured[0], rel=1e-5)
    assert second.over_first.low <= second.over_first.mean <= second.over_first.high
    assert comparison.texts == 3 and comparison.tokens > 3
    printed = format_fluency(comparison)
    assert f"3 texts, {comparison.tokens} scored tokens" in printed
    assert printed.count("\n") == 2 + 2


def test_no_deltas_is_an_error(tiny_loaded):
    with pytest.raises(ValueError, match="no deltas"):
        compare_fluency(tiny_loaded(), [], TEXTS)


def test_the_command_prints_the_table_and_writes_json(two_deltas, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    loaded, _, paths = two_deltas
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    fluency = tmp_path / "fluency.json"
    fluency.write_text(json.dumps([{"Text": text} for text in TEXTS]))
    report = tmp_path / "fluency-report.json"
    code = main(["bench", "fluency", *map(str, paths), "--fluency", str(fluency),
                 "--model", str(model_dir), "--device", "cpu", "--json", str(report)])
    assert code == 0
    data = json.loads(report.read_text())
    assert [row["delta"] for row in data["deltas"]] == [str(path) for path in paths]
    assert data["texts"] == 3
    printed = capsys.readouterr().out
    ratio = data["deltas"][1]["perplexity_ratio"][0]
    row = next(line for line in printed.splitlines() if line.startswith(str(paths[1])))
    assert f"| {ratio:.3f} [" in row


def test_a_missing_delta_file_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    assert main(["bench", "fluency", str(tmp_path / "nowhere.safetensors")]) == 1
    error = capsys.readouterr().err
    assert "no such delta files" in error and "nowhere.safetensors" in error
