"""How much of each record's edit reaches a canary, read from keys alone.

MEMIT's spread changes an edit layer's output projection by ``D = R K^T (A + K K^T)^-1``,
with ``A = lambda C + K_p K_p^T`` (``K_p`` the keys it holds in place). For one fact of
key ``k`` and residual ``r``, Sherman-Morrison gives
``D k_c = r (k^T A^-1 k_c) / (1 + k^T A^-1 k)`` for any other key ``k_c``, and
``D k = r m / (1 + m)`` with ``m = k^T A^-1 k``. So the canary's output at that layer
moves by ``t = k^T A^-1 k_c / m`` times the change the fact's own key receives: the
transfer. While nothing is held, lambda cancels and ``t`` is ``k^T C^-1 k_c / k^T C^-1
k``. A record whose transfer onto a canary is far from zero drags the canary toward its
new object (or away from it, when negative) as surely as it writes its own; records far
apart in A's metric do not touch it. Keys are read on the bare prompt at the subject's
last token, before anything is edited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from factsync.bench.tables import aligned
from factsync.editing.keys import subject_states_by_layer
from factsync.editing.spread import HeldSystem
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class Transfers:
    """Per edit layer, the transfer of each record's edit onto each canary.

    Attributes:
        layers: the edit layers, in the order of ``values``.
        values: (layers, canaries, records) float64.
    """

    layers: list[int]
    values: torch.Tensor

    def mean_over_layers(self) -> torch.Tensor:
        """(canaries, records): the transfer averaged over the edit layers, as a spread
        that shares each residual among them passes it on."""
        return self.values.mean(dim=0)


def transfers(loaded: LoadedModel, canaries: Sequence[tuple[str, str]],
              records: Sequence[tuple[str, str]],
              systems: Mapping[int, HeldSystem]) -> Transfers:
    """The transfer of each of ``records`` onto each of ``canaries``, both given as
    (template, subject), at every layer of ``systems`` (each layer's factored A, as
    ``LayerContext.memit_system`` gives it)."""
    if not canaries or not records:
        raise ValueError("need at least one canary and one record")
    layers = sorted(systems)
    prompts = [*canaries, *records]
    states = subject_states_by_layer(loaded, prompts, layers, max(layers), [""])
    values = []
    for layer in layers:
        system = systems[layer]
        keys = states[layer].keys.to(system.factor.device, torch.float64)  # (key, prompts)
        canary_keys, record_keys = keys[:, : len(canaries)], keys[:, len(canaries):]
        solved = system.solve(record_keys)  # (key, records): A^-1 k
        own = (record_keys * solved).sum(dim=0)  # (records,): k^T A^-1 k
        values.append((canary_keys.T @ solved / own).cpu())  # (canaries, records)
    return Transfers(layers=layers, values=torch.stack(values))


@dataclass(frozen=True)
class CanaryExposure:
    """The records whose edits reach one canary most.

    Attributes:
        canary: the canary's prompt and object.
        median: the median absolute transfer over all records (layer mean).
        total: the absolute transfers summed over all records (layer mean): how far
            the whole stream can drag the canary.
        nearest: (record number, layer-mean transfer), largest absolute transfer first;
            records are numbered by their place in the stream, from 1.
    """

    canary: str
    median: float
    total: float
    nearest: list[tuple[int, float]]

    def to_json(self) -> dict:
        """The exposure as plain JSON values."""
        return {"canary": self.canary, "median_abs_transfer": self.median,
                "total_abs_transfer": self.total,
                "nearest": [{"record": number, "transfer": value}
                            for number, value in self.nearest]}


def exposures(found: Transfers, canary_names: Sequence[str], top: int, *,
              first_number: int = 1) -> list[CanaryExposure]:
    """Per canary, the ``top`` records of ``found`` with the largest absolute transfer,
    numbered from ``first_number`` (the place of the first one in the stream)."""
    mean = found.mean_over_layers()
    answers = []
    for row, name in zip(mean, canary_names, strict=True):
        order = row.abs().argsort(descending=True)[:top]
        answers.append(CanaryExposure(
            canary=name, median=float(torch.quantile(row.abs(), 0.5)),
            total=float(row.abs().sum()),
            nearest=[(int(index) + first_number, float(row[index])) for index in order]))
    return answers


def format_exposures(found: Sequence[CanaryExposure], subjects: Mapping[int, str]) -> str:
    """One row per canary: the median and the sum of absolute transfers, then its nearest
    records as ``#number subject transfer``; ``subjects`` maps record numbers to
    subjects."""
    width = max((len(e.nearest) for e in found), default=0)
    header = ["canary", "median |t|", "sum |t|", *(f"record {i + 1}" for i in range(width))]
    rows = [[e.canary, f"{e.median:.3f}", f"{e.total:.1f}",
             *(f"#{number} {subjects[number]} {value:+.3f}" for number, value in e.nearest)]
            for e in found]
    return aligned(header, rows)
