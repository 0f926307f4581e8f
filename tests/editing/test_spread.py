"""Closed-form updates: the strength MEMIT's lambda promises, AlphaEdit's null space."""

from __future__ import annotations

import torch

from factsync.editing.spread import alphaedit_update, memit_update, nullspace_projector


def _covariance(size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(4 * size, size, generator=generator) * torch.linspace(0.05, 2, size)
    return samples.T @ samples / len(samples)


def test_memit_moves_a_single_key_by_the_promised_fraction():
    size = 24
    covariance = _covariance(size)
    key = torch.randn(size, 1)
    residual = torch.randn(10, 1)
    q = float(key.T @ torch.linalg.solve(covariance, key))
    for lam in (0.1 * q, q, 10 * q):
        update = memit_update(key, residual, covariance, lam)
        moved = (update.up @ update.down.T) @ key
        assert torch.allclose(moved, residual * q / (q + lam), atol=1e-4)
        assert update.rank == 1


def test_memit_rank_is_at_most_the_number_of_keys():
    covariance = _covariance(32)
    update = memit_update(torch.randn(32, 3), torch.randn(8, 3), covariance, 1.0)
    assert torch.linalg.matrix_rank(update.up @ update.down.T) == 3


def test_alphaedit_leaves_directions_outside_the_null_space_untouched():
    size = 24
    covariance = _covariance(size)
    projector = nullspace_projector(covariance, threshold=0.05)
    values, vectors = torch.linalg.eigh(covariance.double())
    kept = vectors[:, values >= 0.05 * values.max()].float()  # directions corpus keys use
    assert 0 < kept.shape[1] < size
    keys, residual = torch.randn(size, 2), torch.randn(6, 2)
    update = alphaedit_update(keys, residual, projector, torch.zeros(size, size), l2=1.0)
    dense = update.up @ update.down.T
    assert torch.allclose(dense @ kept, torch.zeros(6, kept.shape[1]), atol=1e-5)
    assert (dense @ projector @ keys).norm() > 0.1 * residual.norm()


def test_alphaedit_preserves_earlier_edit_keys():
    size = 24
    projector = torch.eye(size)  # no corpus constraint: isolate the preserved keys
    earlier = torch.randn(size, 3)
    keys, residual = torch.randn(size, 2), torch.randn(6, 2)
    free = alphaedit_update(keys, residual, projector, torch.zeros(size, size), l2=1e-3)
    kept = alphaedit_update(keys, residual, projector, 1e4 * earlier @ earlier.T, l2=1e-3)
    drift = lambda u: ((u.up @ u.down.T) @ earlier).norm()  # noqa: E731
    assert drift(kept) < 0.01 * drift(free)


def test_memit_holds_preserved_keys_in_place():
    size = 24
    covariance = _covariance(size)
    earlier = torch.randn(size, 3)
    keys, residual = torch.randn(size, 2), torch.randn(6, 2)
    free = memit_update(keys, residual, covariance, 1.0)
    kept = memit_update(keys, residual, covariance, 1.0, 1e4 * earlier @ earlier.T)
    drift = lambda u: ((u.up @ u.down.T) @ earlier).norm()  # noqa: E731
    assert drift(kept) < 0.01 * drift(free)
    # the new keys still move: the constraint binds only the preserved directions
    assert ((kept.up @ kept.down.T) @ keys).norm() > 0.1 * ((free.up @ free.down.T) @ keys).norm()
