"""Paired tests shared by the gate (candidate vs champion per eval sample) and the judge (win/tie/loss per pair);
the interval of a proportion (a reward model's held-out accuracy)."""

from __future__ import annotations

import math

import numpy as np


def paired_bootstrap(gain: np.ndarray, n_resamples: int, seed: int, alpha: float) -> tuple[float, float, float]:
    """Percentile interval of mean(gain), and the two-sided bootstrap p-value that the mean is 0."""
    rng = np.random.default_rng(seed)
    n = len(gain)
    if n == 0:  # nothing to resample (a judge that gave no verdict on any pair): no evidence either way
        return 0.0, 0.0, 1.0
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n)  # resample in blocks of ~2M indices (16 MB), whatever the eval size
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        means[start : start + size] = gain[rng.integers(0, n, size=(size, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    tail = min((means <= 0).sum(), (means >= 0).sum())
    return float(low), float(high), min(1.0, 2 * (int(tail) + 1) / (n_resamples + 1))


def mcnemar_exact(gain: np.ndarray) -> tuple[float, int, int]:
    """Exact two-sided McNemar p-value from paired 0/1 outcomes; also (wins, losses) of the candidate."""
    wins, losses = int((gain > 0).sum()), int((gain < 0).sum())
    n = wins + losses
    if n == 0:
        return 1.0, 0, 0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n), wins, losses


def downvote_increase(new_down: int, new_n: int, old_down: int, old_n: int) -> float:
    """One-sided Fisher exact p-value that the new version's downvote rate is higher than the old one's.

    Exact at any n (the guard decides on tens of votes, where a normal approximation misleads); 1.0 when a side
    has no votes."""
    from scipy.stats import fisher_exact

    if new_n == 0 or old_n == 0:
        return 1.0
    table = [[new_down, new_n - new_down], [old_down, old_n - old_down]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def wilson_interval(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion: (0, 1) with no trials; never outside [0, 1], unlike the normal one."""
    from statistics import NormalDist

    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At p = 0 or 1 one bound is exactly 0 or 1; floating point would leave it a hair inside.
    return (0.0 if successes == 0 else max(0.0, center - half)), (1.0 if successes == n else min(1.0, center + half))
