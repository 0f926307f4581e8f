"""The transfer of a record's edit onto a canary's key: against a real weight change on the
tiny model, and the command on the real default model."""

from __future__ import annotations

import json

import pytest
import torch

from factsync.bench.canary_exposure import Transfers, exposures, format_exposures, transfers
from factsync.cli import main
from factsync.editing.covariance import layer_key_size
from factsync.editing.keys import subject_states_by_layer
from factsync.editing.spread import HeldSystem
from factsync.models.specs import get_module

CANARIES = [("{} is located in", "Lyon"), ("The capital of {} is", "France")]
RECORDS = [("{} is owned by", "Skype"), ("{} is in", "Lyon"), ("{} was created by", "Apple A5")]


def _system(size: int, seed: int) -> HeldSystem:
    """lambda C + K_p K_p^T of a random, not isotropic C and a few held keys."""
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(4 * size, size, generator=generator, dtype=torch.float64)
    keys = keys * torch.linspace(0.2, 2.0, size, dtype=torch.float64)
    held = torch.randn(size, 3, generator=generator, dtype=torch.float64)
    return HeldSystem.factorise(keys.T @ keys / len(keys), 2.0, held @ held.T,
                                torch.device("cpu"))


def _outputs(loaded, prompts, layer):  # noqa: ANN001, ANN202
    return subject_states_by_layer(loaded, prompts, [layer], layer, [""])[layer].outputs


def test_a_rank_one_update_moves_each_canary_by_its_transfer_of_the_record_change(tiny_loaded):
    loaded = tiny_loaded()
    layer = loaded.default_layers[0]
    system = _system(layer_key_size(loaded, layer), seed=3)
    found = transfers(loaded, CANARIES, RECORDS, {layer: system})
    assert found.layers == [layer] and found.values.shape == (1, 2, 3)
    keys = subject_states_by_layer(loaded, RECORDS, [layer], layer, [""])[layer].keys
    weight = get_module(loaded.model, loaded.spec.mlp_out_path(layer)).weight  # (hidden, key)
    before = _outputs(loaded, [*CANARIES, *RECORDS], layer)
    direction = torch.randn(weight.shape[0], generator=torch.Generator().manual_seed(1))
    for record in range(len(RECORDS)):
        solved = system.solve(keys[:, record : record + 1].double())[:, 0].float()  # A^-1 k
        update = 1e-2 * torch.outer(direction, solved / solved.norm())
        with torch.no_grad():
            weight += update
            after = _outputs(loaded, [*CANARIES, *RECORDS], layer)
            weight -= update
        moved = (after - before) @ direction  # each prompt's change along the update
        own = moved[len(CANARIES) + record]
        assert abs(float(own)) > 1e-6
        for canary in range(len(CANARIES)):
            assert float(moved[canary] / own) == pytest.approx(
                float(found.values[0, canary, record]), rel=1e-3, abs=1e-4)


def test_a_record_of_the_canary_own_subject_and_prompt_passes_on_all_its_change(tiny_loaded):
    loaded = tiny_loaded()
    layers = [1, 2]
    systems = {layer: _system(layer_key_size(loaded, layer), seed=layer) for layer in layers}
    found = transfers(loaded, CANARIES, [RECORDS[0], CANARIES[1]], systems)
    assert found.values[:, 1, 1] == pytest.approx([1.0, 1.0])
    assert (found.values[:, 1, 0].abs() < 0.999).all()


def test_exposures_list_the_largest_absolute_transfers_numbered_in_the_data_file():
    values = torch.tensor([[[0.1, -0.5, 0.2, 0.0], [0.3, 0.1, -0.1, 0.05]],
                           [[0.1, -0.3, 0.4, 0.0], [0.1, 0.1, -0.1, 0.05]]], dtype=torch.float64)
    found = Transfers(layers=[4, 5], values=values)
    first, second = exposures(found, ["A", "B"], 2, first_number=11)
    assert first.nearest == [(12, pytest.approx(-0.4)), (13, pytest.approx(0.3))]
    assert second.nearest[0] == (11, pytest.approx(0.2))
    assert first.median == pytest.approx(0.2)  # of 0.1, 0.4, 0.3, 0.0
    assert first.total == pytest.approx(0.8)
    table = format_exposures([first, second], {11: "s11", 12: "s12", 13: "s13", 14: "s14"})
    header, _, row, _ = table.splitlines()
    assert [c.strip() for c in header.split(" | ")] == ["canary", "median |t|", "sum |t|",
                                                         "record 1", "record 2"]
    assert [c.strip() for c in row.split(" | ")] == ["A", "0.200", "0.8", "#12 s12 -0.400",
                                                      "#13 s13 +0.300"]
    assert first.to_json()["nearest"][0] == {"record": 12, "transfer": pytest.approx(-0.4)}


def test_a_model_stating_no_canary_is_refused_with_a_reason(engine_cli, counterfact_file, capsys):
    model_dir, corpus = engine_cli
    assert main(["bench", "canary-exposure", "--data", str(counterfact_file), "--n", "4",
                 "--model", str(model_dir), "--corpus-files", str(corpus),
                 "--corpus-tokens", "500"]) != 0
    assert "states none of the daemon's canaries" in capsys.readouterr().err


TOWERS = [  # (subject, template, new object, true object) of COUNTERFACT dev records
    ("Powder Tower", "{} owner", "Greece", "Prague"),
    ("Danielle Darrieux", "The mother tongue of {} is", "English", "French"),
    ("Toko Yasuda", "{}, who plays", "piano", "guitar"),
    ("Autonomous University of Madrid", "{}, which is located in", "Sweden", "Spain"),
    ("Apple A5", "{} was created by", "Google", "Apple"),
]


@pytest.mark.real_model
def test_a_tower_record_reaches_the_eiffel_tower_canary_most(tmp_path, capsys):
    records = [{"case_id": i, "requested_rewrite": {
        "prompt": template, "relation_id": "P0", "subject": subject,
        "target_new": {"str": new, "id": "Q1"}, "target_true": {"str": true, "id": "Q2"}},
        "paraphrase_prompts": [], "neighborhood_samples": []}
        for i, (subject, template, new, true) in enumerate(TOWERS)]
    data = tmp_path / "records.json"
    data.write_text(json.dumps(records))
    answer = tmp_path / "exposure.json"
    assert main(["bench", "canary-exposure", "--data", str(data), "--n", "5", "--top", "5",
                 "--corpus-tokens", "20000", "--json", str(answer)]) == 0
    assert "Eiffel Tower is located in Paris" in capsys.readouterr().out
    saved = json.loads(answer.read_text())
    eiffel = next(c for c in saved["canaries"] if c["canary"].startswith("Eiffel Tower"))
    (tower, *others) = eiffel["nearest"]
    assert tower["record"] == 1 and tower["transfer"] > 0.3
    assert all(abs(other["transfer"]) < 0.15 for other in others)
