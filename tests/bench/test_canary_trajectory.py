"""Canary readings along a stream's saved deltas, on the tiny model."""

from __future__ import annotations

import pytest
import torch

from factsync.bench.canary_trajectory import canary_trajectory, format_trajectory
from factsync.editing.delta import applied
from factsync.models.scoring import score_targets
from factsync.models.text import PromptSpec, object_ids

CANARIES = [("The capital of France is", "Paris"), ("Skype is owned by", "Microsoft")]


def _scores(loaded):  # noqa: ANN001, ANN202
    return score_targets(loaded, [PromptSpec("{}", p, object_ids(loaded, o)) for p, o in CANARIES])


def test_each_reading_is_the_model_with_that_delta_alone(tiny_loaded, random_delta, tmp_path):
    loaded = tiny_loaded()
    layers = loaded.default_layers
    deltas = []
    for facts, seed in ((10, 1), (20, 2)):
        path = tmp_path / f"facts{facts}.safetensors"
        random_delta(loaded, layers, scale=1.0, seed=seed).save(path)
        deltas.append((facts, path))
    before = {name: t.clone() for name, t in loaded.model.state_dict().items()}
    readings = canary_trajectory(loaded, CANARIES, deltas)
    assert [r.facts for r in readings] == [0, 10, 20]
    assert readings[0].nll == pytest.approx([s.mean_nll for s in _scores(loaded)])
    for reading, seed in zip(readings[1:], (1, 2), strict=True):
        with applied(loaded, random_delta(loaded, layers, scale=1.0, seed=seed)):
            scores = _scores(loaded)
        assert reading.nll == pytest.approx([s.mean_nll for s in scores])
        assert reading.stated == [s.exact for s in scores]
        assert reading.nll != pytest.approx(readings[0].nll)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    header, rule, first, second, stated = format_trajectory(CANARIES, readings).splitlines()
    assert [c.strip() for c in header.split(" | ")] == ["canary", "0", "10", "20"]
    assert first.split(" | ")[0].strip() == "The capital of France is Paris"
    assert first.split(" | ")[1].strip().rstrip("*") == f"{readings[0].nll[0]:.2f}"
    assert stated.split(" | ")[1].strip() == f"{sum(readings[0].stated)}/2"


def test_a_delta_of_another_model_is_refused(tiny_loaded, random_delta, tmp_path):
    loaded = tiny_loaded()
    delta = random_delta(loaded, loaded.default_layers)
    delta.metadata["model_fingerprint"] = "another"
    delta.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="was made on another model"):
        canary_trajectory(loaded, CANARIES, [(10, tmp_path / "other.safetensors")])
