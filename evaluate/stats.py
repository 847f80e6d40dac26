"""Interval estimates and paired tests for accuracies; numpy only, vectorized.

- ``wilson_interval``: a proportion's score interval (independent trials).
- ``clustered_interval``: a proportion over items grouped in samples (elements of a sample are not
  independent): Wilson's interval at the design-effect-adjusted effective size.
- ``mcnemar_exact``: McNemar's exact test, the two-sided binomial test on discordant pairs.
- ``bootstrap_sums`` / ``paired_bootstrap_diff``: a paired bootstrap that resamples samples, with one
  matrix of resample counts per chunk and no Python loop over resamples.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_RESAMPLES = 1000
_CHUNK_CELLS = 4_000_000  # resample-count cells held at once (32 MB of float64)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(count: ArrayLike, total: ArrayLike, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``count / total``; elementwise over arrays, NaN where total is 0."""
    c = np.asarray(count, dtype=float)
    n = np.asarray(total, dtype=float)
    z = _z(confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / n
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = np.where(n > 0, np.where(c <= 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    high = np.where(n > 0, np.where(c >= n, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return low, high


def clustered_interval(correct: ArrayLike, totals: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of ``sum(correct) / sum(totals)`` where ``correct[i]`` of ``totals[i]`` items of sample i are right.

    The ratio's variance is estimated from the spread of the per-sample residuals (the linearization
    used for cluster samples); its ratio to the binomial variance is the design effect, never taken below
    1. Wilson's interval is then taken at ``sum(totals) / design effect`` items. When every item is right
    (or every one wrong) the spread is 0 and the number of samples stands in for the effective size.
    """
    y = np.asarray(correct, dtype=float)
    m = np.asarray(totals, dtype=float)
    total = m.sum()
    if total == 0:
        return float("nan"), float("nan")
    p = y.sum() / total
    k = len(m)
    binomial_var = p * (1 - p) / total
    if binomial_var == 0 or k < 2:
        n_eff = min(float(k), total)
    else:
        cluster_var = k / (k - 1) * np.square(y - p * m).sum() / total**2
        n_eff = total / max(cluster_var / binomial_var, 1.0)
    low, high = wilson_interval(p * n_eff, n_eff, confidence)
    return float(low), float(high)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null each discordant pair goes either way with probability 1/2, so the p-value is
    ``min(1, 2 * P[X <= min(b, c)])`` for X ~ Binomial(b + c, 1/2), summed in log space so that tens of
    thousands of pairs neither overflow nor lose precision.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    k = np.arange(1, min(b, c) + 1, dtype=float)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - k + 1) - np.log(k))))  # log C(n, 0..min)
    log_terms = log_comb - n * np.log(2.0)
    top = log_terms.max()
    tail = float(np.exp(top) * np.exp(log_terms - top).sum())
    return min(1.0, 2.0 * tail)


def bootstrap_sums(values: ArrayLike, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """Column sums of ``values`` (n samples x k quantities) over ``n_resamples`` bootstrap resamples.

    Each resample draws n samples with replacement; resample r's sums are ``counts[r] @ values``, where
    ``counts[r, i]`` is how often sample i was drawn. The count matrix is built in chunks of resamples
    (one index matrix and one bincount each) to bound memory. Deterministic for a given seed, n and
    n_resamples: every quantity of the same call, and every call with the same seed and n, sees the
    same resamples.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    out = np.empty((n_resamples, x.shape[1]))
    if n == 0:
        out.fill(0.0)
        return out
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _CHUNK_CELLS // n))
    for start in range(0, n_resamples, chunk):
        rows = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        idx += np.arange(rows)[:, None] * n
        counts = np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n)
        out[start:start + rows] = counts @ x
    return out


def percentile_interval(draws: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of bootstrap draws (NaN draws ignored)."""
    d = np.asarray(draws, dtype=float)
    if not np.isfinite(d).any():
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(d, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap_diff(reference_correct: ArrayLike, other_correct: ArrayLike, totals: ArrayLike | None = None,
                          n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                          confidence: float = 0.95) -> np.ndarray:
    """Paired bootstrap intervals of accuracy differences ``other - reference``, resampling samples.

    ``reference_correct``: per sample, the number of right items (0/1 for sample-level accuracy,
    0..m for element-level); ``other_correct``: the same for one run (shape n) or several (n x r);
    ``totals``: items per sample (ones when None). Each resample's accuracy is the resampled sum of
    right items over the resampled sum of items, so a sample's elements move together.
    Returns an array (r, 2) of [low, high] (shape (2,) when ``other_correct`` is 1-D).
    """
    ref = np.asarray(reference_correct, dtype=float)
    other = np.asarray(other_correct, dtype=float)
    single = other.ndim == 1
    other = other[:, None] if single else other
    tot = np.ones_like(ref) if totals is None else np.asarray(totals, dtype=float)
    sums = bootstrap_sums(np.column_stack([tot, ref, other]), n_resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        diffs = (sums[:, 2:] - sums[:, [1]]) / sums[:, [0]]
    intervals = np.array([percentile_interval(diffs[:, j], confidence) for j in range(diffs.shape[1])])
    return intervals[0] if single else intervals
