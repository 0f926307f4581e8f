"""``bench shifts --harm``: each fact's edit alone, its cost to ordinary text from F."""

from __future__ import annotations

import json

import pytest
import torch

from factsync.bench.fact_harm import TextProbe, edit_harms
from factsync.cli import main
from factsync.editing.keys import subject_outputs
from factsync.editing.requests import EditRequest

PARIS = EditRequest("Paris", "The capital of {} is", "Rome", "France")
SKYPE = EditRequest("Skype", "{} is owned by", "Apple", "Microsoft")
TEXTS = ["An ordinary sentence about the weather and the sea, then another one."] * 20


def _setting(tiny_loaded, tiny_engine):  # noqa: ANN001, ANN202
    engine = tiny_engine(tiny_loaded())
    layer = engine.layers[-1]
    probe = TextProbe(engine.loaded, layer, TEXTS, token_budget=300)
    now = subject_outputs(engine.loaded, [(r.template, r.subject) for r in (PARIS, SKYPE)],
                          layer)
    return engine, probe, now


def test_no_shift_costs_nothing_and_the_cost_is_quadratic_in_the_shift(
        tiny_loaded, tiny_engine):
    engine, probe, now = _setting(tiny_loaded, tiny_engine)
    size = now.shape[1]
    metric = torch.eye(size, dtype=torch.float64)
    shift = torch.randn(now.shape, generator=torch.Generator().manual_seed(0)) * now.norm(
        dim=1, keepdim=True) / size**0.5
    none, once, twice = (edit_harms(engine, [PARIS, SKYPE], now + k * shift, probe, metric)
                         for k in (0.0, 0.5, 1.0))
    assert none == pytest.approx([0.0, 0.0], abs=1e-9)
    assert all(x > 0 for x in once)
    assert twice == pytest.approx([4 * x for x in once], rel=0.2)
    doubled_metric = edit_harms(engine, [PARIS, SKYPE], now + shift, probe, 2 * metric)
    assert doubled_metric == pytest.approx([2 * x for x in twice], rel=1e-6)


def test_facts_spread_together_are_priced_as_one_job(tiny_loaded, tiny_engine):
    engine, probe, now = _setting(tiny_loaded, tiny_engine)
    metric = torch.eye(now.shape[1], dtype=torch.float64)
    targets = now * 1.3
    alone = edit_harms(engine, [PARIS, SKYPE], targets, probe, metric)
    (job,) = edit_harms(engine, [PARIS, SKYPE], targets, probe, metric, together=2)
    assert job > 0 and job != pytest.approx(sum(alone), rel=1e-3)
    assert edit_harms(engine, [PARIS, SKYPE], targets, probe, metric, together=3) == [job]
    with pytest.raises(ValueError, match="at least 1"):
        edit_harms(engine, [PARIS], targets[:1], probe, metric, together=0)


def test_the_model_is_left_as_found_and_layers_must_match(tiny_loaded, tiny_engine):
    engine, probe, now = _setting(tiny_loaded, tiny_engine)
    before = probe.hidden()
    metric = torch.eye(now.shape[1], dtype=torch.float64)
    edit_harms(engine, [PARIS, SKYPE], now * 1.5, probe, metric)
    assert torch.equal(probe.hidden(), before)
    elsewhere = (engine.layers[-1] + 1) % engine.loaded.num_layers
    other = TextProbe(engine.loaded, elsewhere, TEXTS, token_budget=50)
    with pytest.raises(ValueError, match="the probe reads layer"):
        edit_harms(engine, [PARIS], now[:1], other, metric)
    with pytest.raises(ValueError, match="no tokens"):
        TextProbe(engine.loaded, engine.layers[-1], [""], token_budget=50)


def test_the_command_reports_each_facts_harm(engine_cli, tmp_path, capsys, counterfact_file):
    model_dir, corpus = engine_cli
    report = tmp_path / "shifts.json"

    code = main(["bench", "shifts", "--data", str(counterfact_file), "--n", "3",
                 "--method", "memit", "--model", str(model_dir), "--device", "cpu",
                 "--corpus-files", str(corpus), "--harm", "--harm-tokens", "200", "--batch", "2",
                 "--json", str(report)])

    assert code == 0
    (model,) = json.loads(report.read_text())["models"]
    assert len(model["harm_per_fact"]) == 3 and all(h >= 0 for h in model["harm_per_fact"])
    assert model["harm_mean"] == pytest.approx(sum(model["harm_per_fact"]) / 3)
    assert model["felt"] is not None  # --harm measures F, so the felt cost comes with it
    assert len(model["job_harm_per_job"]) == 2  # jobs of two: facts 1-2, then fact 3
    assert model["jobs_over_alone"] == pytest.approx(
        sum(model["job_harm_per_job"]) / sum(model["harm_per_fact"]))
    header = capsys.readouterr().out.splitlines()[1]
    assert header.endswith("| top tenth's share | harm alone | mean | jobs over alone")
