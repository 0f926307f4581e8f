"""The spread over all edit layers at once: its statistics, its cache and its update."""

from __future__ import annotations

import logging

import pytest
import torch

from factsync.editing.covariance import compute_key_statistics
from factsync.editing.joint_spread import (
    JointSpread,
    joint_lambda,
    joint_moment_for,
    joint_second_moment,
    shrunk_blocks,
)
from factsync.editing.keys import subject_states
from factsync.editing.spread import HeldSystem, memit_update

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
    expected = memit_update(states.keys, (targets - states.outputs).T,
                            HeldSystem.factorise(moment, lam, None, torch.device("cpu")))

    joint = JointSpread.build(loaded, [layer], moment, lam).delta(loaded, PROMPTS, targets, [""])

    (update,) = joint.layers.values()
    assert torch.allclose(update.up @ update.down.T, expected.up @ expected.down.T, atol=1e-6)


def test_a_weak_lambda_fits_the_residual_over_the_stacked_keys_and_leaves_the_model(
        tiny_loaded):
    loaded = tiny_loaded("llama")
    layers = [1, 2]
    moment = joint_second_moment(loaded, layers, TEXTS, token_budget=500, progress=False)
    states = [subject_states(loaded, PROMPTS, layer, layers[-1], [""]) for layer in layers]
    targets = states[-1].outputs * 1.2
    weights = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}

    delta = JointSpread.build(loaded, layers, moment, 1e-4).delta(loaded, PROMPTS, targets, [""])

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
