"""Bootstrap intervals over records: coverage of the mean, width, determinism, and ratios
of sums."""

from __future__ import annotations

import numpy as np
import pytest

from factsync.evaluation.intervals import (
    Interval,
    bootstrap_interval,
    format_interval,
    paired_difference_interval,
    ratio_of_sums_interval,
)


def _bernoulli(n: int, p: float, seed: int) -> list[float]:
    return np.random.default_rng(seed).binomial(1, p, size=n).astype(float).tolist()


@pytest.mark.parametrize("n", [5, 40, 400])
def test_the_interval_contains_the_mean(n):
    values = _bernoulli(n, 0.3, seed=n)
    interval = bootstrap_interval(values)
    assert interval.mean == pytest.approx(sum(values) / n)
    assert interval.low <= interval.mean <= interval.high


def test_the_interval_narrows_with_more_records():
    intervals = [bootstrap_interval(_bernoulli(n, 0.5, seed=1)) for n in (25, 100, 400)]
    widths = [i.high - i.low for i in intervals]
    assert widths[0] > widths[1] > widths[2] > 0


def test_the_width_matches_the_normal_approximation_on_many_records():
    # 400 fair coin flips: the mean's standard error is 0.025, so a 95% interval spans
    # about 2 * 1.96 * 0.025 = 0.098; a 50% interval about 2 * 0.674 * 0.025 = 0.034.
    values = _bernoulli(400, 0.5, seed=2)
    wide = bootstrap_interval(values, resamples=4000)
    narrow = bootstrap_interval(values, level=0.5, resamples=4000)
    assert wide.high - wide.low == pytest.approx(2 * 1.96 * 0.025, rel=0.15)
    assert narrow.high - narrow.low == pytest.approx(2 * 0.674 * 0.025, rel=0.2)


def test_the_same_seed_gives_the_same_interval():
    # Continuous values: resampled means of 0/1 values fall on a grid, where two seeds
    # may well give the same quantiles.
    values = np.random.default_rng(3).normal(size=60).tolist()
    assert bootstrap_interval(values, seed=7) == bootstrap_interval(values, seed=7)
    assert bootstrap_interval(values, seed=7) != bootstrap_interval(values, seed=8)


def test_constant_values_give_a_zero_width_interval():
    interval = bootstrap_interval([0.25] * 30)
    assert interval.low == interval.high == pytest.approx(0.25)
    assert interval.mean == pytest.approx(0.25)


def test_many_records_are_resampled_in_chunks():
    values = _bernoulli(5000, 0.5, seed=4)  # more resampled values than one chunk holds
    interval = bootstrap_interval(values, resamples=2000)
    assert interval.low < interval.mean < interval.high
    assert interval.high - interval.low < 0.04  # standard error 0.007


@pytest.mark.parametrize(
    ("values", "options", "message"),
    [
        ([], {}, "no values to bootstrap"),
        ([1.0], {"level": 1.0}, r"level must lie in \(0, 1\), got 1.0"),
        ([1.0], {"level": 0.0}, r"level must lie in \(0, 1\), got 0.0"),
        ([1.0], {"resamples": 0}, "resamples must be at least 1, got 0"),
    ],
)
def test_bad_input_is_refused(values, options, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values, **options)


def test_format_interval():
    assert format_interval(Interval(0.9621, 0.9414, 0.978)) == "0.962 [0.941, 0.978]"


def test_a_paired_difference_is_taken_over_records_scored_by_both():
    interval = paired_difference_interval([1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, None])

    assert interval is not None
    assert interval.mean == pytest.approx(1 / 3)
    assert 0.0 <= interval.low <= interval.mean <= interval.high <= 1.0


def test_pairing_cancels_what_the_records_share():
    # Records differ widely; the second run is the first plus 0.01 on every record.
    base = [float(i % 10) / 10 for i in range(200)]
    shifted = [value + 0.01 for value in base]

    paired = paired_difference_interval(shifted, base)
    apart = bootstrap_interval(shifted)

    assert paired is not None
    assert paired.mean == pytest.approx(0.01)
    assert paired.high - paired.low < 1e-9 < apart.high - apart.low


def test_a_paired_difference_needs_aligned_records():
    with pytest.raises(ValueError, match="one per record"):
        paired_difference_interval([1.0, 0.0], [1.0])
    assert paired_difference_interval([None, 1.0], [0.0, None]) is None


def test_a_signed_interval_shows_its_signs():
    assert format_interval(Interval(0.012, -0.004, 0.028), signed=True) == \
        "+0.012 [-0.004, +0.028]"


def test_a_ratio_of_sums_weighs_records_by_their_denominators():
    # Two long texts with low loss and two short ones with high loss: the per-token mean
    # is the ratio of the sums, not the mean of the per-text ratios.
    interval = ratio_of_sums_interval([10.0, 10.0, 9.0, 9.0], [100, 100, 10, 10])
    assert interval.mean == pytest.approx(38 / 220)
    assert interval.low <= interval.mean <= interval.high
    assert interval.low >= 0.1 and interval.high <= 0.9  # every record's ratio lies within


def test_a_ratio_of_sums_resamples_both_values_of_a_record_together():
    # Every record has the same ratio, so any draw of whole records gives exactly it.
    numerators = np.random.default_rng(5).uniform(1, 50, size=40)
    interval = ratio_of_sums_interval((0.3 * numerators).tolist(), numerators.tolist())
    assert interval.low == pytest.approx(0.3) and interval.high == pytest.approx(0.3)


def test_a_ratio_of_sums_interval_matches_the_mean_interval_for_equal_denominators():
    values = np.random.default_rng(6).normal(size=80).tolist()
    assert ratio_of_sums_interval(values, [1.0] * 80, seed=3) == pytest.approx(
        bootstrap_interval(values, seed=3))


@pytest.mark.parametrize(
    ("numerators", "denominators", "options", "message"),
    [
        ([], [], {}, "need one numerator per denominator, got 0 and 0"),
        ([1.0], [1.0, 2.0], {}, "need one numerator per denominator, got 1 and 2"),
        ([1.0, 2.0], [1.0, 0.0], {}, "denominators must be positive"),
        ([1.0], [1.0], {"level": 1.5}, r"level must lie in \(0, 1\), got 1.5"),
    ],
)
def test_a_bad_ratio_of_sums_is_refused(numerators, denominators, options, message):
    with pytest.raises(ValueError, match=message):
        ratio_of_sums_interval(numerators, denominators, **options)
