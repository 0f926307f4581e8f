"""``bench fluency``: saved deltas' perplexity ratios, each paired against the first."""

from __future__ import annotations

import json

import pytest
import torch

from factsync.bench.fluency_compare import (
    compare_fluency,
    format_fluency,
    lead_outputs,
    lead_outputs_held,
)
from factsync.cli import main
from factsync.editing.delta import applied
from factsync.evaluation.fluency import perplexity, perplexity_ratio, summed_nlls, token_nlls

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


@pytest.mark.parametrize("layers", [[1], [1, 2]])
def test_held_start_positions_leave_the_first_token_as_the_unedited_model_has_it(
        tiny_loaded, random_delta, tmp_path, layers):
    loaded = tiny_loaded()
    delta = random_delta(loaded, layers, scale=0.5)
    path = tmp_path / "delta.safetensors"
    delta.save(path)
    base = token_nlls(loaded, TEXTS)
    unedited = lead_outputs(loaded, layers)
    with applied(loaded, delta):
        edited = token_nlls(loaded, TEXTS)
        assert any(abs(float(a.nlls[0] - b.nlls[0])) > 1e-3
                   for a, b in zip(edited, base, strict=True))
        with lead_outputs_held(loaded, unedited):
            held = token_nlls(loaded, TEXTS)
    # The first scored token is predicted from the start positions alone: held, it reads
    # as unedited, while later tokens still see the delta.
    for before, after in zip(base, held, strict=True):
        assert float(after.nlls[0]) == pytest.approx(float(before.nlls[0]), abs=1e-5)
    assert any(not torch.allclose(a.nlls[1:], b.nlls[1:]) for a, b in zip(held, base, strict=True))

    (row,) = compare_fluency(loaded, [path], TEXTS, lead=True).rows
    assert row.lead.first_token_change == pytest.approx(
        sum(float(a.nlls[0] - b.nlls[0]) for a, b in zip(edited, base, strict=True)), abs=1e-4)
    assert row.lead.later_change == pytest.approx(
        sum(float(a.nlls[1:].sum() - b.nlls[1:].sum()) for a, b in zip(edited, base, strict=True)),
        abs=1e-3)
    assert row.lead.held.mean == pytest.approx(
        perplexity_ratio(summed_nlls(held), summed_nlls(base)).mean, rel=1e-6)
    assert "start token held" in format_fluency(compare_fluency(loaded, [path], TEXTS,
                                                                lead=True))


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
