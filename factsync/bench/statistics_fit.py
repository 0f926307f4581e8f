"""How well key statistics stand for a text: the Gaussian fit of the text's own keys.

MEMIT weighs a change to a layer's outputs by C, its keys' second moment over the
statistics corpus, so a direction the served text uses but C holds weak is one the
edits move cheaply, at the served text's expense. Read C as the covariance of a
zero-mean Gaussian: a key k of the text then costs ``(k^T C^-1 k + log det C) / 2``
nats, constants left out. The mean of that per key and key dimension is the fit, lower
is better. Unlike ``k^T C^-1 k`` alone it cannot be lowered by inflating C, and C equal
to the text's own second moment gives the lowest fit of all, so corpora and shrinkages
can be compared on the same text. Each candidate is compared with C as sampled, text by
text, with bootstrap intervals over the texts.

A fit is not yet an edit's harm. For one edit key k, MEMIT's update along ``u = C^-1 k``
changes the outputs of keys whose second moment is T by ``u^T T u / (k^T u)^2`` per unit
of change at k; the least any update making that change can do is ``1 / k^T T^-1 k``,
reached when C stands for T exactly. ``edit_excess`` prices each candidate by the ratio,
1 or more, over the subjects' keys of real edits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from factsync.editing.covariance import (
    KeyStatistics,
    ShrinkageTarget,
    batch_keys,
    lead_ids,
    token_windows,
    window_batches,
)
from factsync.evaluation.intervals import Interval, bootstrap_interval, ratio_of_sums_interval
from factsync.models.loading import LoadedModel


@dataclass(frozen=True)
class Shrinkage:
    """One candidate C: the statistics shrunk toward ``target`` by ``weight``."""

    target: ShrinkageTarget
    weight: float

    @property
    def name(self) -> str:
        """``as sampled`` for weight 0, else the target and the weight."""
        return "as sampled" if self.weight == 0 else f"{self.target} {self.weight:g}"

    def to_json(self) -> dict:
        """The target's name and the weight."""
        return {"target": str(self.target), "weight": self.weight}


AS_SAMPLED = Shrinkage(ShrinkageTarget.ISOTROPIC, 0.0)


@dataclass(frozen=True)
class LayerFit:
    """One candidate's fit to the texts' keys at one layer.

    Attributes:
        layer: the decoder layer.
        shrinkage: the candidate.
        mahalanobis: mean ``k^T C^-1 k`` per key dimension over the texts' keys.
        fit: the Gaussian fit per key and key dimension (nats, lower is better).
        against_sampled: its fit minus that of C as sampled, paired over the texts
            (negative: the candidate fits better).
    """

    layer: int
    shrinkage: Shrinkage
    mahalanobis: float
    fit: Interval
    against_sampled: Interval

    def to_json(self) -> dict:
        """Plain numbers, intervals as ``[mean, low, high]``."""
        return {"layer": self.layer, **self.shrinkage.to_json(),
                "mahalanobis_per_dimension": self.mahalanobis, "fit": self.fit.as_list(),
                "against_sampled": self.against_sampled.as_list()}


@dataclass(frozen=True)
class TextFit:
    """What ``statistics_fit`` reads from the texts.

    Attributes:
        rows: each candidate's fit, by layer, C as sampled first.
        texts: the texts' own key statistics (T) per layer, without a key sample.
    """

    rows: list[LayerFit]
    texts: dict[int, KeyStatistics]


def statistics_fit(
    loaded: LoadedModel,
    statistics: dict[int, KeyStatistics],
    texts: list[str],
    shrinkages: Sequence[Shrinkage],
    *,
    max_length: int = 256,
    batch_size: int = 8,
) -> TextFit:
    """The fit of each layer's statistics, as sampled and under each of ``shrinkages``,
    to the keys of every token of ``texts`` (windowed as the statistics were: the
    leading tokens are not counted), and the texts' own key statistics from the same
    pass."""
    if not texts:
        raise ValueError("no texts to fit")
    candidates = [AS_SAMPLED, *(s for s in shrinkages if s.weight > 0)]
    layers = sorted(statistics)
    factors = {
        (layer, candidate): statistics[layer].shrunk(candidate.weight, candidate.target)
        .cholesky_factor(device=loaded.device)
        for layer in layers for candidate in candidates
    }
    # Per text: its tokens, and per (layer, candidate) its keys' summed k^T C^-1 k.
    tokens = torch.zeros(len(texts), dtype=torch.float64)
    mahalanobis = {key: torch.zeros(len(texts), dtype=torch.float64) for key in factors}
    moments = {layer: torch.zeros((statistics[layer].key_size,) * 2, dtype=torch.float64,
                                  device=loaded.device) for layer in layers}
    lead = lead_ids(loaded)
    windows = [(index, window) for index, text in enumerate(texts)
               for window in token_windows(loaded, [text], lead, max_length)]
    for batch in tqdm(list(window_batches(windows, batch_size)), desc="text keys",
                      unit="batch"):
        owners = torch.tensor([index for index, window in batch for _ in window[len(lead):]])
        tokens.index_add_(0, owners, torch.ones(len(owners), dtype=torch.float64))
        keys = batch_keys(loaded, layers, [window for _, window in batch], len(lead))
        for layer in layers:
            columns = keys[layer].T.to(torch.float64)  # (key, tokens)
            moments[layer] += columns @ columns.T
            for candidate in candidates:
                whitened = torch.linalg.solve_triangular(
                    factors[layer, candidate], columns, upper=False)  # L^-1 k per column
                mahalanobis[layer, candidate].index_add_(0, owners,
                                                         whitened.square().sum(0).cpu())
    rows = []
    for layer in layers:
        size = statistics[layer].key_size

        def per_text(candidate: Shrinkage, layer: int = layer, size: int = size) -> torch.Tensor:
            log_det = 2 * float(factors[layer, candidate].diagonal().log().sum())
            return 0.5 * (mahalanobis[layer, candidate] + tokens * log_det) / size

        sampled = per_text(AS_SAMPLED)
        for candidate in candidates:
            fits = per_text(candidate)
            rows.append(LayerFit(
                layer=layer, shrinkage=candidate,
                mahalanobis=float(mahalanobis[layer, candidate].sum() / tokens.sum()) / size,
                fit=ratio_of_sums_interval(fits.tolist(), tokens.tolist()),
                against_sampled=ratio_of_sums_interval((fits - sampled).tolist(),
                                                       tokens.tolist())))
    count = int(tokens.sum())
    own = {layer: KeyStatistics(second_moment=(moment / count).cpu(), count=count,
                                sample=torch.empty((0, statistics[layer].key_size)))
           for layer, moment in moments.items()}
    return TextFit(rows=rows, texts=own)


TOKENS_PER_KEY_DIMENSION = 10
"""Text tokens per key dimension ``edit_excess`` needs for T to stand for its text: T^-1
enters the reading, and with fewer tokens T is close to singular."""


@dataclass(frozen=True)
class EditExcess:
    """One candidate's excess harm at one layer over the edit keys.

    Attributes:
        layer: the decoder layer.
        shrinkage: the candidate.
        excess: the geometric mean over the keys of the harm of C's update over the least
            harm, 1 or more, with its 95% bootstrap interval over the keys.
        against_sampled: that ratio's geometric mean over C as sampled's, paired key by
            key (below 1: the candidate's updates harm the text less).
    """

    layer: int
    shrinkage: Shrinkage
    excess: Interval
    against_sampled: Interval

    def to_json(self) -> dict:
        """Plain numbers, intervals as ``[mean, low, high]``."""
        return {"layer": self.layer, **self.shrinkage.to_json(),
                "excess": self.excess.as_list(), "against_sampled": self.against_sampled.as_list()}


Row = TypeVar("Row", LayerFit, EditExcess)


def edit_excess(
    statistics: dict[int, KeyStatistics],
    texts: dict[int, KeyStatistics],
    edit_keys: dict[int, torch.Tensor],
    shrinkages: Sequence[Shrinkage],
) -> list[EditExcess]:
    """The excess harm on the text of each layer's updates at ``edit_keys`` (layer ->
    (keys, key size)), as sampled and under each of ``shrinkages``; ``texts``: the
    statistics of the text's own keys (T), over at least ``TOKENS_PER_KEY_DIMENSION``
    tokens per key dimension. Rows by layer, C as sampled first."""
    candidates = [AS_SAMPLED, *(s for s in shrinkages if s.weight > 0)]
    rows = []
    for layer in sorted(statistics):
        text = texts[layer]
        if text.count < TOKENS_PER_KEY_DIMENSION * text.key_size:
            raise ValueError(
                f"the texts give {text.count} keys at layer {layer}; pricing edits needs "
                f"{TOKENS_PER_KEY_DIMENSION * text.key_size} ({TOKENS_PER_KEY_DIMENSION} per "
                "key dimension) for their second moment to stand for them")
        keys = edit_keys[layer].T.to(torch.float64)  # (key, n)
        moment = text.second_moment.to(torch.float64)
        least = (keys * torch.cholesky_solve(keys, text.cholesky_factor())).sum(0)  # k'T^-1k
        logs = {}
        for candidate in candidates:
            shrunk = statistics[layer].shrunk(candidate.weight, candidate.target)
            along = torch.cholesky_solve(keys, shrunk.cholesky_factor())  # u = C^-1 k
            harm = (along * (moment @ along)).sum(0) / (keys * along).sum(0).square()
            logs[candidate] = (harm * least).log()
        for candidate in candidates:
            rows.append(EditExcess(
                layer=layer, shrinkage=candidate,
                excess=_exp(bootstrap_interval(logs[candidate].tolist())),
                against_sampled=_exp(bootstrap_interval(
                    (logs[candidate] - logs[AS_SAMPLED]).tolist()))))
    return rows


def _exp(interval: Interval) -> Interval:
    """A mean of logs and its bounds, back on the ratio scale (a geometric mean)."""
    return Interval(mean=math.exp(interval.mean), low=math.exp(interval.low),
                    high=math.exp(interval.high))


def format_fit(rows: list[LayerFit]) -> str:
    """A table of the fits, one row per layer and candidate; ``*`` marks each layer's
    best fit."""
    best = _least_per_layer(rows, lambda row: row.fit.mean)
    lines = [f"{'layer':<5} | {'C':<15} | {'k^T C^-1 k / d':>14} | {'fit (nats)':<28} | "
             "against as sampled",
             f"{'-' * 5}-|-{'-' * 15}-|-{'-' * 14}-|-{'-' * 28}-|-{'-' * 26}"]
    for row in rows:
        mark = " *" if best[row.layer] is row else ""
        lines.append(f"{row.layer:<5} | {row.shrinkage.name:<15} | {row.mahalanobis:>14.3f} | "
                     f"{_interval(row.fit, '.4f')}{mark:<2} | "
                     f"{_interval(row.against_sampled, '+.4f')}")
    return "\n".join(lines)


def format_excess(rows: list[EditExcess]) -> str:
    """A table of the excess harms, one row per layer and candidate; ``*`` marks each
    layer's least."""
    least = _least_per_layer(rows, lambda row: row.excess.mean)
    lines = [f"{'layer':<5} | {'C':<15} | {'excess harm':<22} | against as sampled",
             f"{'-' * 5}-|-{'-' * 15}-|-{'-' * 22}-|-{'-' * 20}"]
    for row in rows:
        mark = " *" if least[row.layer] is row else ""
        lines.append(f"{row.layer:<5} | {row.shrinkage.name:<15} | "
                     f"{_interval(row.excess, '.3f')}{mark:<2} | "
                     f"{_interval(row.against_sampled, '.3f')}")
    return "\n".join(lines)


def _least_per_layer(rows: Sequence[Row], value: Callable[[Row], float]) -> dict[int, Row]:
    """Each layer's row with the least ``value``."""
    least: dict[int, Row] = {}
    for row in rows:
        if row.layer not in least or value(row) < value(least[row.layer]):
            least[row.layer] = row
    return least


def _interval(interval: Interval, spec: str) -> str:
    """``mean [low, high]``, each in the format ``spec``."""
    return f"{interval.mean:{spec}} [{interval.low:{spec}}, {interval.high:{spec}}]"
