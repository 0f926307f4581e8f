"""How far edits have moved each edited layer's MLP output weight from where it started."""

from __future__ import annotations

import torch

from factsync.models.loading import LoadedModel
from factsync.models.specs import get_module


class NormGrowth:
    """Relative growth ``||W - W0||_F / ||W0||_F`` of the MLP output weight of ``layers``.

    ``W0`` is each weight as it was when the object was made; ``measure`` compares the
    model's weights now against that snapshot.
    """

    def __init__(self, loaded: LoadedModel, layers: list[int]) -> None:
        self._paths = {layer: loaded.spec.mlp_out_path(layer) for layer in layers}
        self._base = {
            layer: get_module(loaded.model, path).weight.detach().clone()
            for layer, path in self._paths.items()
        }

    def measure(self, loaded: LoadedModel) -> dict[int, float]:
        """Per layer, the relative Frobenius norm of the change since the snapshot."""
        growth = {}
        for layer, path in self._paths.items():
            base = self._base[layer].float()
            now = get_module(loaded.model, path).weight.detach().float()
            change = torch.linalg.matrix_norm(now - base)
            growth[layer] = float(change / torch.linalg.matrix_norm(base))
        return growth


def growth_summary(growth: dict[int, float]) -> tuple[float, float]:
    """(max, mean) over layers of a ``NormGrowth.measure`` result."""
    if not growth:
        raise ValueError("no layers measured")
    values = list(growth.values())
    return max(values), sum(values) / len(values)
