"""The precision policy: in a bf16 model, the edit layers' weights stay in float32, so an
edit adds exactly, comes off exactly, and every copy of the model computes the same."""

from __future__ import annotations

import copy

import torch

from factsync.editing.delta import ModelDelta
from factsync.models.precision import held_in_float32, keep_edit_layers_in_float32
from factsync.models.specs import get_module

LAYERS = [1, 2]


def bf16(tiny_loaded):  # noqa: ANN001, ANN201
    loaded = tiny_loaded()
    loaded.model.to(torch.bfloat16)
    return loaded


def weights(loaded, delta: ModelDelta) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {path: get_module(loaded.model, path).weight.detach().clone() for path in delta.layers}


def test_a_small_edit_adds_exactly_only_where_float32_is_kept(tiny_loaded, random_delta):
    plain, kept = bf16(tiny_loaded), bf16(tiny_loaded)
    assert len(keep_edit_layers_in_float32(kept, LAYERS)) == len(LAYERS)
    delta = random_delta(kept, LAYERS, scale=1e-3)  # updates below bf16's resolution
    before = {"plain": weights(plain, delta), "kept": weights(kept, delta)}
    delta.apply(plain)
    delta.apply(kept)
    for path, update in delta.layers.items():
        wanted = update.matrix(delta.layout)
        assert torch.equal(get_module(kept.model, path).weight, before["kept"][path] + wanted)
        lost = (get_module(plain.model, path).weight.float() - before["plain"][path].float()
                - wanted).abs().max()
        assert lost >= wanted.abs().max() / 2, path  # bf16 weights round the update away
    delta.subtract(kept)
    for path, weight in before["kept"].items():
        assert torch.allclose(get_module(kept.model, path).weight, weight, rtol=0, atol=1e-6)


def test_the_rest_of_the_model_runs_as_loaded_and_copies_compute_the_same(tiny_loaded):
    loaded = bf16(tiny_loaded)
    keep_edit_layers_in_float32(loaded, LAYERS)
    assert keep_edit_layers_in_float32(loaded, LAYERS) == []  # held already
    path = loaded.spec.mlp_out_path(LAYERS[0])
    assert get_module(loaded.model, path).weight.dtype == torch.float32
    assert held_in_float32(get_module(loaded.model, path))
    other = loaded.spec.mlp_out_path(0)
    assert get_module(loaded.model, other).weight.dtype == torch.bfloat16
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits
        served = copy.deepcopy(loaded.model)  # how the daemon makes its served copy
        assert torch.equal(served(input_ids=ids).logits, logits)
    assert logits.dtype == torch.bfloat16


def test_a_float32_model_is_left_alone(tiny_loaded):
    loaded = tiny_loaded()
    assert keep_edit_layers_in_float32(loaded, None) == []
    assert not held_in_float32(get_module(loaded.model, loaded.spec.mlp_out_path(1)))
