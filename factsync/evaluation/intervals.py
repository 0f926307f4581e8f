"""Percentile bootstrap intervals of statistics over benchmark records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# Resampled values drawn per chunk, so that many records times many resamples stay
# within a few tens of megabytes.
_CHUNK_VALUES = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A mean and its confidence interval.

    Attributes:
        mean: the mean of the values.
        low: the interval's lower bound.
        high: the interval's upper bound.
    """

    mean: float
    low: float
    high: float

    def as_list(self) -> list[float]:
        """``[mean, low, high]``, as JSON reports write an interval."""
        return [self.mean, self.low, self.high]


def bootstrap_interval(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> Interval:
    """The mean of ``values`` with its percentile bootstrap interval at ``level``.

    Records are resampled with replacement ``resamples`` times; the bounds are the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means. The same
    ``seed`` gives the same interval. Raises ``ValueError`` on no values, a ``level``
    outside (0, 1) or fewer than one resample.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    low, high = _percentile_bounds(data.size, lambda picks: data[picks].mean(axis=1),
                                   level=level, resamples=resamples, seed=seed)
    return Interval(mean=float(data.mean()), low=low, high=high)


def ratio_of_sums_interval(
    numerators: Sequence[float], denominators: Sequence[float], *, level: float = 0.95,
    resamples: int = 1000, seed: int = 0,
) -> Interval:
    """``sum(numerators) / sum(denominators)`` over records, with its percentile bootstrap
    interval at ``level``; a resample draws both values of a record together.

    For a per-token mean over texts of different lengths: the numerator a text's summed
    loss, the denominator its tokens. Raises ``ValueError`` on no records, lists of
    different lengths, a denominator that is not positive, or ``bootstrap_interval``'s
    bad ``level`` and ``resamples``.
    """
    top = np.asarray(numerators, dtype=np.float64)
    bottom = np.asarray(denominators, dtype=np.float64)
    if top.size == 0 or top.shape != bottom.shape:
        raise ValueError(f"need one numerator per denominator, got {top.size} and "
                         f"{bottom.size}")
    if (bottom <= 0).any():
        raise ValueError("denominators must be positive")
    low, high = _percentile_bounds(
        top.size, lambda picks: top[picks].sum(axis=1) / bottom[picks].sum(axis=1),
        level=level, resamples=resamples, seed=seed)
    return Interval(mean=float(top.sum() / bottom.sum()), low=low, high=high)


def _percentile_bounds(
    records: int, statistic: Callable[[np.ndarray], np.ndarray], *, level: float,
    resamples: int, seed: int,
) -> tuple[float, float]:
    """The percentile bounds at ``level`` of ``statistic`` over ``resamples`` draws of
    ``records`` record indices with replacement; ``statistic`` maps the indices
    (resamples, records) to one value per resample."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    generator = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_VALUES // records)
    values = []
    for start in range(0, resamples, per_chunk):
        count = min(per_chunk, resamples - start)
        values.append(statistic(generator.integers(0, records, size=(count, records))))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(values), [tail, 1.0 - tail])
    return float(low), float(high)


def paired_difference_interval(
    values: Sequence[float | None], reference: Sequence[float | None], *, level: float = 0.95,
    resamples: int = 1000, seed: int = 0,
) -> Interval | None:
    """The mean of ``values[i] - reference[i]`` over records with both, and its bootstrap
    interval; ``None`` when no record has both.

    Both runs scored the same records, so resampling records keeps each pair together:
    what the records share cancels, and the interval is much narrower than either run's
    own. Raises ``ValueError`` when the two do not have one value per record each.
    """
    if len(values) != len(reference):
        raise ValueError(f"paired values need one per record each, got {len(values)} "
                         f"and {len(reference)}")
    differences = [a - b for a, b in zip(values, reference, strict=True)
                   if a is not None and b is not None]
    if not differences:
        return None
    return bootstrap_interval(differences, level=level, resamples=resamples, seed=seed)


def format_interval(interval: Interval, *, signed: bool = False) -> str:
    """``interval`` as ``0.962 [0.941, 0.978]``, or ``+0.012 [-0.004, +0.028]`` when
    ``signed`` (a difference)."""
    spec = "+.3f" if signed else ".3f"
    return (f"{interval.mean:{spec}} [{interval.low:{spec}}, {interval.high:{spec}}]")
