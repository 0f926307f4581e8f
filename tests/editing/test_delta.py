"""Low-rank deltas: apply, revert, compose, save and load on every family."""

from __future__ import annotations

import math

import pytest
import torch

from factsync.editing.delta import DeltaError, LayerDelta, ModelDelta, applied
from factsync.models.specs import get_module
from factsync.models.text import PromptSpec, encode


def logits(loaded) -> torch.Tensor:
    batch = encode(loaded, [PromptSpec("The capital of {} is", "France")])
    with torch.no_grad():
        return loaded.model(input_ids=batch.input_ids).logits


def state(loaded) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


def test_apply_changes_logits_and_revert_restores_bit_for_bit(
    tiny_loaded, tiny_family, random_delta
):
    loaded = tiny_loaded(tiny_family)
    before_state, before_logits = state(loaded), logits(loaded)
    handle = random_delta(loaded, [1, 2]).apply(loaded)
    assert not torch.allclose(logits(loaded), before_logits)
    handle.revert()
    assert torch.equal(logits(loaded), before_logits)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before_state[name]), name


def test_dense_update_has_the_factor_rank_in_the_weight_orientation(
    tiny_loaded, tiny_family, random_delta
):
    loaded = tiny_loaded(tiny_family)
    path = loaded.spec.mlp_out_path(1)
    weight = get_module(loaded.model, path).weight
    before = weight.detach().clone()
    delta = random_delta(loaded, [1], rank=3)
    with applied(loaded, delta):
        change = weight.detach() - before
    assert change.shape == weight.shape
    assert torch.linalg.matrix_rank(change, atol=1e-5) == 3
    assert torch.equal(weight, before)


def test_subtract_undoes_a_loaded_delta_within_tolerance(tiny_loaded, tmp_path, random_delta):
    loaded = tiny_loaded()
    before = state(loaded)
    delta = random_delta(loaded, [0, 3])
    delta.apply(loaded)
    delta.save(tmp_path / "delta.safetensors")
    ModelDelta.load(tmp_path / "delta.safetensors").subtract(loaded)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.allclose(tensor, before[name], atol=1e-6), name


def test_save_then_load_gives_the_same_delta(tiny_loaded, tmp_path, random_delta):
    loaded = tiny_loaded("gpt2")
    delta = random_delta(loaded, [0, 1])
    delta.save(tmp_path / "d.safetensors")
    loaded_back = ModelDelta.load(tmp_path / "d.safetensors")
    assert loaded_back.layout == delta.layout == "in_out"
    assert loaded_back.metadata == {"k": "v"}
    assert loaded_back.layers.keys() == delta.layers.keys()
    for path, update in delta.layers.items():
        assert torch.equal(loaded_back.layers[path].up, update.up)
        assert torch.equal(loaded_back.layers[path].down, update.down)
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file was renamed into place"


def test_compose_equals_applying_in_turn(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    first, second = random_delta(loaded, [1], seed=1), random_delta(loaded, [1, 2], seed=2)
    with applied(loaded, first), applied(loaded, second):
        in_turn = logits(loaded)
    composed = first.compose(second)
    assert composed.layers[loaded.spec.mlp_out_path(1)].rank == 4
    with applied(loaded, composed):
        assert torch.allclose(logits(loaded), in_turn, atol=1e-5)


def test_non_finite_delta_is_refused_before_any_weight_changes(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    before = state(loaded)
    delta = random_delta(loaded, [0, 1])
    delta.layers[loaded.spec.mlp_out_path(1)].up[0, 0] = math.nan
    with pytest.raises(DeltaError, match="NaN or infinite"):
        delta.apply(loaded)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_delta_for_another_model_is_refused(tiny_loaded, random_delta):
    llama, gpt2 = tiny_loaded("llama"), tiny_loaded("gpt2")
    with pytest.raises(DeltaError, match="does not match"):
        random_delta(gpt2, [0]).apply(llama)
    wide = random_delta(llama, [0])
    path = llama.spec.mlp_out_path(0)
    wide.layers[path] = LayerDelta(up=torch.zeros(7, 1), down=torch.zeros(64, 1))
    with pytest.raises(DeltaError, match="do not fit"):
        wide.apply(llama)


def test_damaged_file_gives_a_clear_error(tmp_path, tiny_loaded, random_delta):
    path = tmp_path / "d.safetensors"
    random_delta(tiny_loaded(), [0]).save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DeltaError, match="cannot read delta file"):
        ModelDelta.load(path)


def test_compacting_keeps_the_update_and_bounds_its_rank(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    path = loaded.spec.mlp_out_path(1)
    narrow = random_delta(loaded, [1], rank=3, seed=1)
    assert narrow.compacted().layers[path] is narrow.layers[path]  # already small: kept
    wide = narrow.compose(random_delta(loaded, [1], rank=40, seed=2))
    compacted = wide.compacted()
    values, keys = wide.layers[path].up.shape[0], wide.layers[path].down.shape[0]
    assert wide.layers[path].rank == 43 > min(values, keys)
    assert compacted.layers[path].rank == min(values, keys)
    assert compacted.size < wide.size
    layout = loaded.spec.weight_layout
    assert torch.allclose(compacted.layers[path].matrix(layout), wide.layers[path].matrix(layout),
                          atol=1e-6)
    with applied(loaded, wide):
        expected = logits(loaded)
    with applied(loaded, compacted):
        assert torch.allclose(logits(loaded), expected, atol=1e-5)


def test_a_delta_composed_with_its_negation_is_no_update(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    delta = random_delta(loaded, [1, 2], rank=3, seed=4)
    undone = delta.compose(delta.negated())
    for path, update in undone.layers.items():
        assert torch.allclose(update.matrix(delta.layout), torch.zeros_like(
            delta.layers[path].matrix(delta.layout)), atol=1e-6), path
