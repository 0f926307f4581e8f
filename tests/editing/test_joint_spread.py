"""The spread over all edit layers at once: its statistics, its cache and its update."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from factsync.editing import joint_spread
from factsync.editing.covariance import ShrinkageTarget, compute_key_statistics
from factsync.editing.delta import applied
from factsync.editing.engine import EditEngine
from factsync.editing.joint_spread import (
    JointSpread,
    joint_lambda,
    joint_moment_for,
    joint_second_moment,
    shrunk_blocks,
)
from factsync.editing.keys import lead_keys, subject_outputs, subject_states
from factsync.editing.requests import EditRequest, Neighbour
from factsync.editing.spread import HeldSystem, SpreadSettings, held_keys, memit_update

TEXTS = [f"Fact {i}: item {i * 7} is owned by company {i * 13 % 17} since {1900 + i}."
         for i in range(40)]
PROMPTS = [("The capital of {} is", "France"), ("{} is owned by", "Skype")]


def test_the_diagonal_blocks_are_each_layers_own_second_moment(tiny_loaded):
    loaded = tiny_loaded("llama")
    layers = [1, 2]
    joint = joint_second_moment(loaded, layers, TEXTS, token_budget=500, progress=False)
    alone = compute_key_statistics(loaded, layers, TEXTS, token_budget=500, progress=False)
    size = alone[1].key_size
    assert joint.shape == (2 * size, 2 * size)
    for block, layer in ((slice(0, size), 1), (slice(size, None), 2)):
        exact = alone[layer].second_moment
        assert torch.allclose(joint[block, block].double(), exact, rtol=0,
                              atol=1e-5 * float(exact.abs().max()))
    assert torch.allclose(joint, joint.T)
    cross = joint[:size, size:]
    assert cross.abs().max() > 0.1 * joint[:size, :size].abs().max()  # the layers are coupled
    with pytest.raises(ValueError, match="token_budget"):
        joint_second_moment(loaded, layers, TEXTS, token_budget=0)


def test_shrinking_blends_each_layers_block_as_one_layers_statistics_are_blended(tiny_loaded):
    loaded = tiny_loaded("llama")
    joint = joint_second_moment(loaded, [1, 2], TEXTS, token_budget=500, progress=False)
    alone = compute_key_statistics(loaded, [1, 2], TEXTS, token_budget=500, progress=False)
    size = alone[1].key_size
    shrunk = shrunk_blocks(joint, [size, size], 0.25)
    exact = alone[1].shrunk(0.25).second_moment
    assert torch.allclose(shrunk[:size, :size], exact, rtol=0,
                          atol=1e-5 * float(exact.abs().max()))
    assert torch.allclose(shrunk[:size, size:], 0.75 * joint[:size, size:].double())
    toward_diagonal = shrunk_blocks(joint, [size, size], 0.25, ShrinkageTarget.DIAGONAL)
    exact = alone[2].shrunk(0.25, ShrinkageTarget.DIAGONAL).second_moment
    assert torch.allclose(toward_diagonal[size:, size:], exact, rtol=0,
                          atol=1e-5 * float(exact.abs().max()))
    assert torch.allclose(toward_diagonal[:size, size:], 0.75 * joint[:size, size:].double())
    with pytest.raises(ValueError, match="shrinkage weight"):
        shrunk_blocks(joint, [size, size], 1.0)
    with pytest.raises(ValueError, match="do not add up"):
        shrunk_blocks(joint, [size], 0.1)


def test_over_one_layer_the_joint_update_is_the_per_layer_one(tiny_loaded):
    loaded = tiny_loaded("llama")
    layer = 2
    stats = compute_key_statistics(loaded, [layer], TEXTS, token_budget=500, progress=False)
    moment = stats[layer].second_moment
    lam = joint_lambda(stats, moment, 0.3)
    assert lam == pytest.approx(stats[layer].median_mahalanobis() * 0.7 / 0.3, rel=1e-6)
    states = subject_states(loaded, PROMPTS, layer, layer, [""])
    targets = states.outputs * 1.2
    system = HeldSystem.factorise(moment, lam, None, torch.device("cpu"))
    residual = (targets - states.outputs).T
    lead = held_keys(None, lead_keys(loaded, [layer])[layer])
    for hold, held in ((False, None), (True, lead)):
        expected = memit_update(states.keys, residual, system, held)

        joint, _, _ = JointSpread.build(loaded, [layer], moment, lam).spread(
            loaded, PROMPTS, targets, [""], lead_layers=[layer] if hold else [])

        (update,) = joint.layers.values()
        assert torch.allclose(update.up @ update.down.T, expected.up @ expected.down.T,
                              atol=1e-6)


def test_the_joint_spread_holds_the_leading_tokens_at_the_layers_it_is_given(tiny_loaded):
    loaded = tiny_loaded("llama")
    layers = [1, 2]
    moment = joint_second_moment(loaded, layers, TEXTS, token_budget=500, progress=False)
    targets = subject_states(loaded, PROMPTS, layers[-1], layers[-1], [""]).outputs * 1.2
    lead = lead_keys(loaded, layers)
    joint = JointSpread.build(loaded, layers, moment, 1.0)
    moved = {}
    for held in ([], [1], [2]):
        delta, _, _ = joint.spread(loaded, PROMPTS, targets, [""], lead_layers=held)
        for layer in layers:
            change = delta.layers[loaded.spec.mlp_out_path(layer)]
            moved[tuple(held), layer] = (change.up @ (change.down.T @ lead[layer])).norm()
    assert moved[(1,), 1] < 1e-3 * moved[(), 1]
    assert moved[(2,), 2] < 1e-3 * moved[(), 2]
    assert moved[(1,), 2] > 1e-2 * moved[(), 2]  # the other layer is left free


def test_a_weak_lambda_fits_the_residual_over_the_stacked_keys_and_leaves_the_model(
        tiny_loaded):
    loaded = tiny_loaded("llama")
    layers = [1, 2]
    moment = joint_second_moment(loaded, layers, TEXTS, token_budget=500, progress=False)
    states = [subject_states(loaded, PROMPTS, layer, layers[-1], [""]) for layer in layers]
    targets = states[-1].outputs * 1.2
    weights = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}

    delta, _, _ = JointSpread.build(loaded, layers, moment, 1e-4).spread(loaded, PROMPTS,
                                                                         targets, [""])

    moved = sum(update.up @ (update.down.T @ state.keys)
                for update, state in zip(delta.layers.values(), states, strict=True))
    asked = (targets - states[-1].outputs).T
    assert torch.allclose(moved, asked, atol=1e-3 * float(asked.abs().max()))
    assert all(torch.equal(p, weights[name]) for name, p in loaded.model.named_parameters())


def test_the_joint_moment_is_computed_once_and_kept(tiny_loaded, tmp_path, caplog):
    loaded = tiny_loaded("llama")
    caplog.set_level(logging.INFO, logger="factsync.editing.tensor_cache")
    first = joint_moment_for(loaded, [2, 1], TEXTS, tmp_path, token_budget=300)
    (path,) = (tmp_path / loaded.fingerprint).glob("joint-layers1-2-*-300-len256.safetensors")
    second = joint_moment_for(loaded, [1, 2], TEXTS, tmp_path, token_budget=300)
    assert torch.equal(first, second) and "reusing" in caplog.text
    path.write_bytes(b"damaged")
    assert torch.equal(joint_moment_for(loaded, [1, 2], TEXTS, tmp_path, token_budget=300),
                       first)
    assert "unreadable" in caplog.text


REQUESTS = [
    EditRequest("Danielle Darrieux", "The mother tongue of {} is", "Italy", "French",
                (Neighbour("Skype", "The mother tongue of {} is", "French"),)),
    EditRequest("LinkedIn", "{} is owned by", "Apple", "Microsoft"),
    EditRequest("Paris", "The capital of {} is", "Rome", "France"),
]
JOINT = SpreadSettings(joint_layers=True)
LAYERS = (1, 2)  # the tiny models' default window is one layer


def _stacked_product(keys: dict[int, torch.Tensor], layers: list[int]) -> torch.Tensor:
    stacked = torch.cat([keys[layer] for layer in layers]).double()
    return stacked @ stacked.T


def test_a_joint_engine_edits_over_every_layer_and_leaves_the_model(tiny_engine, tiny_loaded,
                                                                    tiny_family):
    loaded = tiny_loaded(tiny_family)
    engine = tiny_engine(loaded, spread=JOINT, layers=LAYERS, max_iterations=3,
                         neighbours=True)
    assert engine.joint is not None and engine.joint.layers == list(LAYERS)
    assert engine.preserved() == {}  # held keys live in the joint system only
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    prompts = [(r.template, r.subject) for r in REQUESTS]
    unedited = subject_outputs(loaded, prompts, LAYERS[-1])

    result = engine.edit(REQUESTS)

    assert all(torch.equal(p, before[name]) for name, p in loaded.model.named_parameters())
    assert set(result.delta.layers) == {loaded.spec.mlp_out_path(x) for x in LAYERS}
    assert all(update.matrix(loaded.spec.weight_layout).abs().max() > 0
               for update in result.delta.layers.values())
    assert result.delta.metadata["lambdas"] == f"joint {engine.joint.context.lam:.1f}"
    assert all(1 <= len(records) <= 3 for records in result.records)
    with applied(loaded, result.delta):
        assert not torch.allclose(subject_outputs(loaded, prompts, LAYERS[-1]), unedited)


def test_the_joint_engine_holds_applied_keys_stacked_and_restores_them(tiny_engine,
                                                                       tiny_loaded):
    engine = tiny_engine(tiny_loaded(), spread=JOINT, layers=LAYERS)
    layers = engine.layers
    first, second = engine.edit(REQUESTS[:1]), engine.edit(REQUESTS[2:])
    held = engine.joint.context
    assert torch.count_nonzero(held.preserved) == 0
    engine.remember(first)
    expected = _stacked_product(first.keys, layers)
    assert torch.allclose(held.preserved, expected)
    size = first.keys[layers[0]].shape[0]
    assert held.preserved[:size, size:].abs().max() > 0  # cross-layer blocks are held too
    engine.remember(second)
    both = held.preserved.clone()
    engine.restore([first.state])  # as after a rollback to the first edit's version
    assert torch.allclose(held.preserved, expected)
    engine.restore([first.state, second.state])
    assert torch.allclose(held.preserved, both)


def test_held_keys_move_less_under_a_later_joint_edit(tiny_engine, tiny_loaded):
    loaded = tiny_loaded()
    holding = tiny_engine(loaded, spread=JOINT, layers=LAYERS)
    forgetting = tiny_engine(loaded, spread=replace(JOINT, preserve_applied=False), layers=LAYERS)
    first = holding.edit(REQUESTS[:1])
    holding.remember(first)
    forgetting.remember(first)
    moved = []
    for engine in (holding, forgetting):
        later = engine.edit(REQUESTS[1:2]).delta
        moved.append(sum(
            (later.layers[loaded.spec.mlp_out_path(layer)].up
             @ (later.layers[loaded.spec.mlp_out_path(layer)].down.T @ first.keys[layer]))
            for layer in engine.layers).norm())
    assert moved[0] < 0.5 * moved[1], moved


def test_a_subject_edited_again_lets_go_of_its_stacked_keys(tiny_engine, tiny_loaded):
    engine = tiny_engine(tiny_loaded(), spread=JOINT, layers=LAYERS)
    first = engine.edit(REQUESTS[:2])
    others = first.state.select([c for c, s in enumerate(first.subjects) if s != "LinkedIn"])
    again = replace(REQUESTS[1], new_object="Google", old_object="Apple")
    engine.remember(first)
    released = engine.edit([again])
    engine.restore([others])  # as if LinkedIn had never been edited
    fresh = engine.edit([again])
    layout = engine.loaded.spec.weight_layout
    for path, layer_delta in fresh.delta.layers.items():
        assert torch.allclose(released.delta.layers[path].matrix(layout),
                              layer_delta.matrix(layout), atol=1e-5)
    engine.restore([first.state])
    engine.remember(released)
    expected = (_stacked_product(others.keys, engine.layers)
                + _stacked_product(released.keys, engine.layers))
    assert torch.allclose(engine.joint.context.preserved, expected)


def test_joint_layers_are_refused_where_they_cannot_run(tiny_engine, tiny_loaded, monkeypatch):
    loaded = tiny_loaded()
    engine = tiny_engine(loaded, layers=LAYERS)
    settings = replace(engine.settings, spread=JOINT)
    with pytest.raises(ValueError, match="joint key statistics"):
        EditEngine(loaded, settings, engine.statistics, engine.contexts)
    with pytest.raises(ValueError, match="AlphaEdit"):
        SpreadSettings(algorithm="alphaedit", joint_layers=True)
    monkeypatch.setattr(joint_spread, "JOINT_MAX_SIZE", 100)
    with pytest.raises(ValueError, match="joint_layers: false"):
        joint_second_moment(loaded, engine.layers, TEXTS, token_budget=100, progress=False)
