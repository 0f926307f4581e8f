"""Closed-form updates: the strength MEMIT's lambda promises, AlphaEdit's null space."""

from __future__ import annotations

import pytest
import torch

from factsync.editing.covariance import KeyStatistics
from factsync.editing.spread import (
    HeldSystem,
    LayerContext,
    LeadHold,
    SpreadSettings,
    alphaedit_update,
    holds_lead,
    lead_is_cheap,
    memit_update,
    nullspace_projector,
)

CPU = torch.device("cpu")


def memit(keys, residual, covariance, lam, preserved=None, held_keys=None):  # noqa: ANN001, ANN201
    """``memit_update`` with ``lam C + preserved`` factored for it."""
    held = HeldSystem.factorise(covariance, lam, preserved, CPU)
    return memit_update(keys, residual, held, held_keys)


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
        update = memit(key, residual, covariance, lam)
        moved = (update.up @ update.down.T) @ key
        assert torch.allclose(moved, residual * q / (q + lam), atol=1e-4)
        assert update.rank == 1


def test_memit_rank_is_at_most_the_number_of_keys():
    covariance = _covariance(32)
    update = memit(torch.randn(32, 3), torch.randn(8, 3), covariance, 1.0)
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
    free = memit(keys, residual, covariance, 1.0)
    kept = memit(keys, residual, covariance, 1.0, 1e4 * earlier @ earlier.T)
    drift = lambda u: ((u.up @ u.down.T) @ earlier).norm()  # noqa: E731
    assert drift(kept) < 0.01 * drift(free)
    # the new keys still move: the constraint binds only the preserved directions
    assert ((kept.up @ kept.down.T) @ keys).norm() > 0.1 * ((free.up @ free.down.T) @ keys).norm()


def direct(keys, residual, covariance, lam, preserved, held_keys):  # noqa: ANN001, ANN201
    """``R K^T (lam C + K_p K_p^T + H H^T + K K^T)^-1`` by one solve of the key size."""
    system = lam * covariance.double() + preserved + held_keys @ held_keys.T + keys @ keys.T
    return residual.double() @ torch.linalg.solve(system, keys).T


def test_memit_through_the_held_factor_equals_the_direct_solve():
    size = 40
    covariance = _covariance(size)
    earlier = torch.randn(size, 5, dtype=torch.float64)
    keys = torch.randn(size, 3, dtype=torch.float64)
    neighbours = torch.randn(size, 4, dtype=torch.float64)
    residual = torch.randn(12, 3)
    update = memit(keys, residual, covariance, 0.7, earlier @ earlier.T, neighbours)
    expected = direct(keys, residual, covariance, 0.7, earlier @ earlier.T, neighbours)
    torch.testing.assert_close((update.up @ update.down.T).double(), expected,
                               rtol=1e-4, atol=1e-5)


def test_releasing_held_keys_equals_a_solve_that_never_held_them():
    size = 40
    covariance = _covariance(size)
    kept, released = torch.randn(size, 5, dtype=torch.float64), torch.randn(size, 2,
                                                                           dtype=torch.float64)
    earlier = torch.cat([kept, released], dim=1)
    keys, residual = torch.randn(size, 3, dtype=torch.float64), torch.randn(12, 3)
    held = HeldSystem.factorise(covariance, 0.7, earlier @ earlier.T, CPU)
    update = memit_update(keys, residual, held, released_keys=released)
    expected = direct(keys, residual, covariance, 0.7, kept @ kept.T,
                      torch.zeros(size, 0, dtype=torch.float64))
    torch.testing.assert_close((update.up @ update.down.T).double(), expected,
                               rtol=1e-4, atol=1e-5)


def test_a_singular_held_system_falls_back_to_lu():
    size = 16
    flat = torch.zeros(size, size)
    flat[0, 0] = -1.0  # not positive definite: Cholesky refuses it
    flat += torch.eye(size) * 0.5
    held = HeldSystem.factorise(flat, 1.0, None, CPU)
    assert held.pivots is not None
    right = torch.randn(size, 2, dtype=torch.float64)
    torch.testing.assert_close(flat.double() @ held.solve(right), right)


def test_the_held_factor_is_made_again_only_after_the_held_keys_change():
    size = 24
    context = LayerContext(second_moment=_covariance(size), lam=1.0,
                           preserved=torch.zeros(size, size, dtype=torch.float64))
    first = context.memit_system(CPU)
    assert context.memit_system(CPU) is first
    earlier = torch.randn(size, 2, dtype=torch.float64)
    context.hold(earlier)
    second = context.memit_system(CPU)
    assert second is not first
    torch.testing.assert_close(second.factor @ second.factor.T,
                               _covariance(size).double() + earlier @ earlier.T)
    context.hold(earlier, -1.0)  # the keys no longer stand
    torch.testing.assert_close(context.memit_system(CPU).factor, first.factor)
    context.hold(earlier)
    context.forget_held()
    torch.testing.assert_close(context.memit_system(CPU).factor, first.factor)


def test_a_leading_key_is_cheap_where_c_holds_it_more_weakly_than_a_typical_key():
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 1.0, 1.0, 0.01])  # C barely sees the last direction
    sample = torch.randn(400, 4, generator=generator) * scales
    statistics = KeyStatistics(second_moment=(sample.T @ sample / 400).double(), count=400,
                               sample=sample)
    along_weak = torch.tensor([[0.0], [0.0], [0.0], [0.05]])
    large_but_seen = torch.tensor([[3.0], [0.0], [0.0], [0.0]])
    small = torch.tensor([[0.1], [0.1], [0.0], [0.0]])
    # Cheapness is k'C^-1k against the sampled keys', not the key's norm.
    assert lead_is_cheap(statistics, along_weak)
    assert lead_is_cheap(statistics, large_but_seen)
    assert not lead_is_cheap(statistics, small)
    assert lead_is_cheap(statistics, torch.cat([small, along_weak], dim=1))
    assert not lead_is_cheap(statistics, None)
    assert not lead_is_cheap(statistics, torch.zeros(4, 0))


def test_where_the_leading_tokens_are_held_follows_the_rule_and_the_layer():
    cheap = LayerContext(second_moment=torch.eye(2), lam=1.0, lead_cheap=True)
    dear = LayerContext(second_moment=torch.eye(2), lam=1.0)
    assert [holds_lead(LeadHold.NEVER, c) for c in (cheap, dear)] == [False, False]
    assert [holds_lead(LeadHold.EVERY_LAYER, c) for c in (cheap, dear)] == [True, True]
    assert [holds_lead(LeadHold.WHERE_CHEAP, c) for c in (cheap, dear)] == [True, False]
    assert SpreadSettings(hold_lead="where_cheap").hold_lead is LeadHold.WHERE_CHEAP
    with pytest.raises(ValueError, match="hold_lead must be one of never, every_layer, "
                                         "where_cheap, got True"):
        SpreadSettings(hold_lead=True)
