"""``bench coupling``: each fact spread layer by layer and jointly, priced and compared."""

from __future__ import annotations

import json
import math

import pytest
import torch

from factsync.bench.fact_harm import TextProbe
from factsync.bench.layer_coupling import (
    SpreadCost,
    coupling_rows,
    saved_method_costs,
    spread_costs,
)
from factsync.cli import main
from factsync.editing.delta import ModelDelta
from factsync.editing.keys import subject_outputs
from factsync.editing.spread import spread

PROMPTS = [("The capital of {} is", "France"), ("{} is owned by", "Skype")]
TEXTS = ["An ordinary sentence about the weather and the sea, then another one."] * 20


def test_an_update_is_priced_by_its_harm_and_the_share_of_the_shift_it_makes(
        tiny_loaded, tiny_engine):
    engine = tiny_engine(tiny_loaded())
    loaded, layers = engine.loaded, engine.layers
    probe = TextProbe(loaded, layers[-1], TEXTS, token_budget=300)
    targets = subject_outputs(loaded, PROMPTS, layers[-1]) * 1.5
    before = probe.hidden()

    def per_layer(prompt, target):  # noqa: ANN001, ANN202
        return spread(loaded, [prompt], target.unsqueeze(0), layers, engine.contexts,
                      engine.layer_contexts, engine.settings.spread)[0]

    costs = spread_costs(loaded, PROMPTS, targets, probe,
                         torch.eye(targets.shape[1], dtype=torch.float64),
                         {"layer by layer": per_layer,
                          "nothing": lambda *_: ModelDelta(layers={},
                                                           layout=loaded.spec.weight_layout)},
                         progress=False)

    assert all(c.harm > 0 and 0 < c.achieved < 1.5 for c in costs["layer by layer"])
    assert costs["nothing"] == [SpreadCost(0.0, 0.0)] * 2
    assert torch.equal(probe.hidden(), before)  # the model is left as found


def test_spreads_are_compared_on_harm_per_squared_share_against_the_first():
    first = [SpreadCost(1e-4, 0.5), SpreadCost(2e-4, 1.0), SpreadCost(3e-4, 0.2)]
    costs = {"first": first,
             "twice the harm": [SpreadCost(2 * c.harm, c.achieved) for c in first],
             "half the shift": [SpreadCost(c.harm / 4, c.achieved / 2) for c in first],
             "moved nothing once": [SpreadCost(1e-4, 0.0), *first[1:]]}
    rows = {row.name: row for row in coupling_rows(costs)}
    assert rows["first"].against_first.as_list() == pytest.approx([1.0, 1.0, 1.0])
    assert rows["twice the harm"].against_first.mean == pytest.approx(2.0)
    assert rows["half the shift"].against_first.mean == pytest.approx(1.0)
    assert rows["moved nothing once"].facts == 2 and rows["first"].facts == 3
    assert rows["first"].harm == pytest.approx(2e-4) and rows["first"].achieved == 0.5
    assert math.isinf(SpreadCost(1e-4, 0.0).harm_per_shift)
    with pytest.raises(ValueError, match="no spreads"):
        coupling_rows({})


def test_the_command_prints_a_row_per_spread_and_writes_each_facts_costs(
        engine_cli, tmp_path, capsys, counterfact_file):
    model_dir, corpus = engine_cli
    report = tmp_path / "coupling.json"
    arguments = ["bench", "coupling", "--data", str(counterfact_file), "--n", "2",
                 "--method", "memit", "--model", str(model_dir), "--device", "cpu",
                 "--corpus-files", str(corpus), "--scales", "1,4", "--joint-tokens", "600",
                 "--harm-tokens", "200", "--json", str(report)]

    assert main(arguments) == 0

    written = json.loads(report.read_text())
    names = [s["name"] for s in written["spreads"]]
    assert names == ["memit, layer by layer", "joint, lambda x1", "joint, lambda x4"]
    assert all(len(s["per_fact"]) == 2 for s in written["spreads"])
    assert written["spreads"][0]["against_first"] == [1.0, 1.0, 1.0]
    weak, strong = (written["spreads"][i]["per_fact"] for i in (2, 1))
    assert all(w["achieved"] < s["achieved"] for w, s in zip(weak, strong, strict=True))
    assert "joint, lambda x4" in capsys.readouterr().out
    assert main([*arguments[:-2], "--scales", "0"]) == 1  # refused with a clear error

    own_only = tmp_path / "own-only.json"
    assert main([*arguments[:-2], "--scales", "none", "--json", str(own_only)]) == 0
    alone = json.loads(own_only.read_text())
    assert [s["name"] for s in alone["spreads"]] == ["memit, layer by layer"]
    assert alone["joint_lambda"] is None
    assert alone["spreads"][0]["per_fact"] == written["spreads"][0]["per_fact"]

    capsys.readouterr()
    assert main(["bench", "coupling-report", str(report), str(own_only)]) == 0
    table = capsys.readouterr().out
    assert f"{own_only} | " in table and "1.000 [1.000, 1.000]" in table


def _saved_run(costs: list[SpreadCost], *, skip: int = 0) -> dict:
    return {"dataset": "counterfact", "skip": skip, "n": len(costs), "layers": [4, 5],
            "spreads": [{"name": "m, layer by layer",
                         "per_fact": [{"harm": c.harm, "achieved": c.achieved} for c in costs]},
                        {"name": "joint, lambda x1", "per_fact": [{"harm": 1.0, "achieved": 1.0}]
                         * len(costs)}]}


def test_saved_runs_are_compared_on_their_methods_own_spread_fact_by_fact():
    first = [SpreadCost(1e-4, 0.5), SpreadCost(2e-4, 1.0)]
    later_layers = [SpreadCost(3 * c.harm, c.achieved) for c in first]
    costs = saved_method_costs({"a.json": _saved_run(first),
                                "b.json": _saved_run(later_layers)})
    assert costs == {"a.json": first, "b.json": later_layers}
    rows = coupling_rows(costs)
    assert rows[1].against_first.mean == pytest.approx(3.0)


def test_saved_runs_of_other_records_are_refused():
    costs = [SpreadCost(1e-4, 0.5)]
    with pytest.raises(ValueError, match="different records.*b.json"):
        saved_method_costs({"a.json": _saved_run(costs), "b.json": _saved_run(costs, skip=250)})
    with pytest.raises(ValueError, match="no saved runs"):
        saved_method_costs({})
