"""``bench shifts``: the sizes and shared direction of the optimisation's target shifts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from factsync.bench.target_shifts import measure_shifts
from factsync.cli import main
from factsync.editing.requests import EditRequest

PARIS = EditRequest("Paris", "The capital of {} is", "Rome", "France")
SKYPE = EditRequest("Skype", "{} is owned by", "Apple", "Microsoft")


def _measure(engine, requests, label="unedited"):  # noqa: ANN001, ANN202
    return measure_shifts(engine.loaded, requests, engine.layers[-1], engine.contexts,
                          engine.settings.target, label=label)


def test_one_fact_asked_three_times_shifts_along_one_direction(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded())
    same = _measure(engine, [PARIS, PARIS, PARIS])
    assert same.cosine.mean == pytest.approx(1.0, abs=1e-4)
    assert same.shared_energy == pytest.approx(1.0, abs=1e-4)
    different = _measure(engine, [PARIS, SKYPE])
    assert different.cosine.mean < 0.99 and different.shared_energy < 0.999
    assert different.shift_norm > 0 and different.hidden_norm > 0
    assert different.shift_ratio == pytest.approx(different.shift_norm / different.hidden_norm,
                                                  rel=0.5)


def test_shifts_need_two_facts(tiny_loaded, tiny_engine):
    with pytest.raises(ValueError, match="at least two"):
        _measure(tiny_engine(tiny_loaded()), [PARIS])


def test_facts_that_needed_no_shift_have_no_direction_to_compare(tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded())
    reached = replace(engine.settings.target, stop_nll=1e6)  # every target likely at once
    with pytest.raises(ValueError, match="needed a shift"):
        measure_shifts(engine.loaded, [PARIS, SKYPE], engine.layers[-1], engine.contexts,
                       reached, label="unedited")


def _saved_model(loaded, tmp_path: Path, monkeypatch) -> Path:  # noqa: ANN001
    """``loaded`` saved as a model directory, with FACTSYNC_HOME in ``tmp_path``."""
    model_dir = tmp_path / "model"
    loaded.model.save_pretrained(model_dir)
    loaded.tokenizer.save_pretrained(model_dir)
    monkeypatch.setenv("FACTSYNC_HOME", str(tmp_path / "home"))
    return model_dir


def test_the_command_measures_the_model_as_loaded_and_with_each_delta(
    tiny_loaded, random_delta, tmp_path, monkeypatch, capsys, counterfact_file
):
    loaded = tiny_loaded()
    model_dir = _saved_model(loaded, tmp_path, monkeypatch)
    delta = tmp_path / "edits.delta.safetensors"
    random_delta(loaded, range(loaded.num_layers), rank=4, scale=0.3).save(delta)
    report = tmp_path / "shifts.json"

    code = main(["bench", "shifts", "--data", str(counterfact_file), "--n", "4",
                 "--method", "memit", "--model", str(model_dir), "--device", "cpu",
                 "--delta", str(delta), "--json", str(report)])

    assert code == 0
    numbers = json.loads(report.read_text())
    assert numbers["n"] == 4
    unedited, edited = numbers["models"]
    assert (unedited["label"], edited["label"]) == ("unedited", str(delta))
    assert unedited["hidden_norm"] != edited["hidden_norm"]  # the delta was applied
    for model in numbers["models"]:
        mean, low, high = model["cosine"]
        assert -1 <= low <= mean <= high <= 1
        assert 0 < model["shared_energy"] <= 1
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("model | |h| | |z-h|")


def test_the_command_measures_several_methods_side_by_side(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir = _saved_model(tiny_loaded(), tmp_path, monkeypatch)
    policy = tmp_path / "long-steps.yaml"
    policy.write_text("editing:\n  target: {step_rule: normalised, learning_rate: 0.5, "
                      "refine_steps: 4}\n")
    report = tmp_path / "shifts.json"

    code = main(["bench", "shifts", "--data", str(counterfact_file), "--n", "3",
                 "--method", f"memit,{policy}", "--model", str(model_dir), "--device", "cpu",
                 "--json", str(report)])

    assert code == 0
    models = json.loads(report.read_text())["models"]
    assert [m["label"] for m in models] == ["memit, unedited", f"{policy}, unedited"]
    assert models[0]["shift_norm"] != models[1]["shift_norm"]
    assert all(m["seconds_per_fact"] > 0 for m in models)
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row.split(" | ")[0] for row in rows] == ["memit, unedited", f"{policy}, unedited"]


def test_the_felt_cost_is_half_the_squared_shift_in_the_sensitivity_metric(
        tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded())
    size = engine.loaded.model.config.hidden_size
    report = measure_shifts(engine.loaded, [PARIS, SKYPE, PARIS], engine.layers[-1],
                            engine.contexts, engine.settings.target, label="unedited",
                            sensitivity=3 * torch.eye(size, dtype=torch.float64))
    assert report.felt == pytest.approx(0.5 * 3 * report.shift_norm**2, rel=1e-4)
    paris, skype, paris_again = report.felt_per_fact
    assert paris == pytest.approx(paris_again, rel=1e-4) and paris != skype
    assert report.felt_mean == pytest.approx((paris + skype + paris_again) / 3)
    assert report.felt_top_share == pytest.approx(max(paris, skype) / (2 * paris + skype))
    unmeasured = _measure(engine, [PARIS, SKYPE])
    assert (unmeasured.felt, unmeasured.felt_mean, unmeasured.felt_per_fact) == (None,) * 3


def test_the_command_reports_the_felt_cost_over_the_statistics_corpus(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir = _saved_model(tiny_loaded(), tmp_path, monkeypatch)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Text {i} about the city number {i}." for i in range(100)))

    code = main(["bench", "shifts", "--data", str(counterfact_file), "--n", "3",
                 "--method", "memit", "--model", str(model_dir), "--device", "cpu",
                 "--corpus-files", str(corpus), "--sensitivity"])

    assert code == 0
    assert list((tmp_path / "home" / "stats").glob("*/sensitivity-layer*"))
    header, _, row = capsys.readouterr().out.splitlines()[1:4]
    assert header.endswith("| s^T F s / 2 | mean | top tenth's share")
    median, mean, share = (float(cell) for cell in row.split(" | ")[-3:])
    assert median > 0 and mean > 0 and 1 / 3 <= share <= 1  # the top tenth is one of three


def test_skipped_records_are_left_out_of_the_command(
        tiny_loaded, tmp_path, monkeypatch, capsys, counterfact_file):
    model_dir = _saved_model(tiny_loaded(), tmp_path, monkeypatch)

    def shifts(skip: int) -> dict:
        report = tmp_path / f"skip{skip}.json"
        assert main(["bench", "shifts", "--data", str(counterfact_file), "--n", "2",
                     "--skip", str(skip), "--method", "memit", "--model", str(model_dir),
                     "--device", "cpu", "--json", str(report)]) == 0
        return json.loads(report.read_text())

    first, later = shifts(0), shifts(2)
    assert (first["skip"], later["skip"]) == (0, 2)
    assert first["models"][0]["hidden_norm"] != later["models"][0]["hidden_norm"]
    assert "records 3-4, memit targets" in capsys.readouterr().out
    held = len(json.loads(counterfact_file.read_text()))
    assert main(["bench", "shifts", "--data", str(counterfact_file), "--n", "2",
                 "--skip", str(held - 1), "--model", str(model_dir)]) == 1
    assert f"--skip {held - 1} and --n 2 ask for {held + 1}" in capsys.readouterr().err
