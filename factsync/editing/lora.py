"""Low-rank adapter factors carrying a chain of deltas, for serving engines that take LoRA.

The cumulative update of each edited module is the sum of the chain's deltas. A MEMIT
update has rank at most the number of facts it wrote, so the sum is low rank; above
``max_rank`` it is truncated by SVD, and the relative error that introduces is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from factsync.editing.delta import DeltaError, ModelDelta


@dataclass(frozen=True)
class LoraFactors:
    """One module's adapter: ``B @ A`` approximates its (out, in) weight update.

    Attributes:
        a: (rank, in) factor (PEFT's ``lora_A``).
        b: (out, rank) factor (PEFT's ``lora_B``).
        relative_error: ``|dW - B A|_F / |dW|_F`` (0 when nothing was truncated).
    """

    a: torch.Tensor
    b: torch.Tensor
    relative_error: float

    @property
    def rank(self) -> int:
        """The adapter's rank."""
        return self.a.shape[0]


def lora_factors(chain: Sequence[ModelDelta], *,
                 max_rank: int | None = None) -> dict[str, LoraFactors]:
    """Per module path, factors of the summed update of ``chain``, of its numerical rank
    (singular values above float32 rounding), truncated to ``max_rank`` when given.

    Raises:
        DeltaError: when the chain is empty or mixes weight layouts.
    """
    if not chain:
        raise DeltaError("no deltas to turn into an adapter")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    totals: dict[str, torch.Tensor] = {}
    for delta in chain:
        for path, update in delta.layers.items():
            dense = update.matrix("out_in").double()  # (out, in) whatever the layout
            totals[path] = totals[path] + dense if path in totals else dense
    factors = {}
    for path, total in totals.items():
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        tolerance = s.max() * max(total.shape) * torch.finfo(torch.float32).eps if s.numel() else 0
        rank = max(1, int((s > tolerance).sum()))
        rank = rank if max_rank is None else min(max_rank, rank)
        b = u[:, :rank] * s[:rank]  # (out, rank)
        a = vh[:rank]  # (rank, in)
        norm = torch.linalg.norm(total)
        error = float(torch.linalg.norm(total - b @ a) / norm) if norm > 0 else 0.0
        factors[path] = LoraFactors(a=a.float().contiguous(), b=b.float().contiguous(),
                                    relative_error=error)
    return factors
