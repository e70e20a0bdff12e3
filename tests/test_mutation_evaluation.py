"""The bootstrap intervals are exactly numpy's percentiles of the seeded resamples: the
resamples are redrawn here from the same generator and the bounds compared exactly."""

from __future__ import annotations

import numpy as np

from rspo.evaluation.length_control import lc_win_rate
from rspo.evaluation.winrate import win_rate

P = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.25, 0.75, 1.0, 0.0, 1.0])


def test_win_rate_interval_is_the_percentiles_of_the_seeded_resampled_means():
    wr = win_rate(P, n_boot=400, seed=11)
    rng = np.random.default_rng(11)
    means = P[rng.integers(0, P.size, size=(400, P.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (wr.mean, wr.lo, wr.hi, wr.n) == (P.mean(), min(lo, P.mean()), max(hi, P.mean()), 12)
    assert wr.lo < wr.mean < wr.hi
    other = win_rate(P, n_boot=400, seed=12)
    assert (other.lo, other.hi) != (wr.lo, wr.hi)  # the seed is used


def test_win_rate_chunks_give_the_same_resamples():
    # chunk = 2_000_000 // n: a huge set is resampled in pieces from one generator stream
    big = np.tile(P, 200_000)[: 2_000_000 // 3 + 1]  # chunk = 2 rows per draw
    wr = win_rate(big, n_boot=5, seed=3)
    rng = np.random.default_rng(3)
    means = np.concatenate(
        [big[rng.integers(0, big.size, size=(k, big.size))].mean(axis=1) for k in (2, 2, 1)]
    )
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (wr.lo, wr.hi) == (min(lo, big.mean()), max(hi, big.mean()))


def test_lc_interval_is_the_percentiles_of_the_seeded_refits():
    from rspo.evaluation.length_control import _features, _sigmoid, fit_length_glm

    lp = np.array([10, 20, 5, 30, 12, 8, 25, 14, 9, 40, 11, 16], dtype=float)
    lb = np.full(12, 15.0)
    r = lc_win_rate(P, lp, lb, n_boot=50, seed=5)
    f = _features(lp - lb, float((lp - lb).std()))
    counts = np.random.default_rng(5).multinomial(12, np.full(12, 1 / 12), size=50)
    bb, _, _ = fit_length_glm(P, f, weights=counts.astype(np.float64), l2=1e-5)
    lo, hi = np.percentile(_sigmoid(bb[:, 0]), [2.5, 97.5])
    assert (r.lo, r.hi) == (float(lo), float(hi))
    assert r.scale == float((lp - lb).std()) and r.n == 12 and r.raw == P.mean()
