"""Intervals and paired tests."""
from __future__ import annotations

import math

import numpy as np
import pytest

from patent_risk.evaluate.stats import (bootstrap_sums, clustered_interval, mcnemar_exact, paired_bootstrap_diff,
                            percentile_interval, wilson_interval)


def exact_mcnemar(b: int, c: int) -> float:
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


@pytest.mark.parametrize("b, c, p", [(1, 6, 0.125), (0, 5, 0.0625), (6, 1, 0.125), (0, 0, 1.0), (3, 3, 1.0),
                                     (0, 1, 1.0), (2, 10, 0.0385742)])
def test_mcnemar_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-5)


@pytest.mark.parametrize("b, c", [(13, 30), (200, 260), (1000, 1100)])
def test_mcnemar_matches_exact_integer_sum(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(exact_mcnemar(b, c), rel=1e-9)


def test_mcnemar_huge_counts_do_not_overflow():
    p = mcnemar_exact(20_000, 21_000)
    assert 0 < p < 1e-5 and math.isfinite(p)
    assert mcnemar_exact(5_000, 5_000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_wilson_interval():
    low, high = wilson_interval(135, 147)
    p, n, z = 135 / 147, 147, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert float(low) == pytest.approx(centre - half) and float(high) == pytest.approx(centre + half)
    assert low < p < high
    lows, highs = wilson_interval([0, 10, 0], [10, 10, 0])
    assert lows[0] == 0.0 and highs[1] == 1.0 and 0 < highs[0] < 0.35 and 0.65 < lows[1] < 1
    assert np.isnan(lows[2]) and np.isnan(highs[2])


def test_clustered_interval_is_wider_when_elements_move_together():
    rng = np.random.default_rng(0)
    right_sample = rng.random(200) < 0.8
    totals = np.full(200, 5)
    correct = np.where(right_sample, 5, 0)  # all elements of a sample right or wrong together
    low, high = clustered_interval(correct, totals)
    w_low, w_high = wilson_interval(correct.sum(), totals.sum())
    p = correct.sum() / totals.sum()
    assert low <= p <= high
    assert high - low > 1.8 * (w_high - w_low)  # about sqrt(5) wider
    i_low, i_high = clustered_interval(rng.binomial(5, 0.8, 200), totals)  # independent elements: about Wilson
    assert i_high - i_low == pytest.approx(float(w_high - w_low), rel=0.35)
    assert clustered_interval(np.full(10, 4), np.full(10, 4))[1] == 1.0
    assert all(math.isnan(x) for x in clustered_interval(np.zeros(0), np.zeros(0)))


def test_bootstrap_sums_resample_whole_samples():
    values = np.column_stack([np.ones(50), np.arange(50)])
    sums = bootstrap_sums(values, n_resamples=300, seed=1)
    assert sums.shape == (300, 2)
    assert np.all(sums[:, 0] == 50)  # every resample draws n samples
    assert np.allclose(sums[:, 1].mean(), np.arange(50).sum(), rtol=0.05)
    assert np.array_equal(sums, bootstrap_sums(values, n_resamples=300, seed=1))
    assert not np.array_equal(sums, bootstrap_sums(values, n_resamples=300, seed=2))


def test_bootstrap_chunks_do_not_change_the_draws(monkeypatch):
    import patent_risk.evaluate.stats as stats

    values = np.arange(40, dtype=float)
    whole = bootstrap_sums(values, n_resamples=100, seed=3)
    monkeypatch.setattr(stats, "_CHUNK_CELLS", 40 * 7)
    assert np.array_equal(whole, bootstrap_sums(values, n_resamples=100, seed=3))


def test_paired_bootstrap_contains_point_estimate_and_is_deterministic():
    rng = np.random.default_rng(0)
    n = 400
    ref = rng.random(n) < 0.80
    run = np.where(rng.random(n) < 0.9, ref, ~ref) | (rng.random(n) < 0.1)
    diff = run.mean() - ref.mean()
    low, high = paired_bootstrap_diff(ref, run, seed=7)
    assert low <= diff <= high and high - low < 0.15
    assert np.array_equal(paired_bootstrap_diff(ref, run, seed=7), paired_bootstrap_diff(ref, run, seed=7))
    assert not np.array_equal(paired_bootstrap_diff(ref, run, seed=7), paired_bootstrap_diff(ref, run, seed=8))
    both = paired_bootstrap_diff(ref, np.column_stack([run, ref]), seed=7)
    assert np.allclose(both[0], [low, high]) and np.allclose(both[1], [0, 0])


def test_paired_bootstrap_element_level_uses_sample_totals():
    totals = np.array([1, 1, 1, 1, 10])
    ref = np.array([1, 1, 1, 1, 0])
    run = np.array([1, 1, 1, 1, 10])
    point = (run.sum() - ref.sum()) / totals.sum()
    low, high = paired_bootstrap_diff(ref, run, totals, n_resamples=2000, seed=0)
    assert 0 <= low <= point <= high <= 1
    assert high > 0.6  # resamples drawing the big sample often swing the difference far up


def test_percentile_interval_ignores_nan():
    assert percentile_interval([np.nan, 1.0, 2.0, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    assert all(math.isnan(x) for x in percentile_interval([np.nan, np.nan]))
