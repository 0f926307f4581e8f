"""``DeltaChain``: a long history of versions in bounded memory, the same update."""

from __future__ import annotations

import pytest
import torch

from factsync.editing.delta import applied
from factsync.executors.chain import DeltaChain


def test_a_long_chain_folds_into_the_same_update_in_bounded_memory(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    deltas = [random_delta(loaded, [1, 2], rank=8, seed=seed) for seed in range(24)]
    chain, sizes = DeltaChain(), []
    for n, delta in enumerate(deltas):
        chain.append(f"v{n}", delta)
        sizes.append(sum(step.size for _, step in chain.steps))
    sides = [(u.up.shape[0], u.down.shape[0]) for u in deltas[0].layers.values()]
    full_rank = sum(min(values, keys) * (values + keys) for values, keys in sides)
    assert sum(d.size for d in deltas) > 4 * full_rank  # unfolded, it would have outgrown it
    assert max(sizes) <= 2 * full_rank + deltas[0].size
    labels = [label for label, _ in chain.steps]
    folded_at = int(labels[0].removeprefix("up to v"))
    assert labels[1:] == [f"v{n}" for n in range(folded_at + 1, len(deltas))]

    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad(), applied(loaded, deltas[0]):
        for delta in deltas[1:]:
            delta.apply(loaded)
        in_turn = loaded.model(ids).logits
    for _, step in chain.steps:
        step.apply(loaded)
    assert torch.allclose(loaded.model(ids).logits, in_turn, atol=1e-4)


def test_a_label_already_in_the_chain_is_refused(tiny_loaded, random_delta):
    loaded = tiny_loaded()
    chain = DeltaChain()
    chain.append("v1", random_delta(loaded, [1]))
    with pytest.raises(ValueError, match="'v1' is already in the chain"):
        chain.append("v1", random_delta(loaded, [1], seed=2))
