"""Win rate and its bootstrap interval against hand-derived values."""

import math

import numpy as np
import pytest

from rspo.evaluation import WinRate, as_preferences, win_rate


def test_mean_and_ties_count_half():
    assert win_rate([1, 0, 0.5, 1], n_boot=0) == WinRate(0.625, 0.625, 0.625, 4)
    assert win_rate(["win", "loss", "tie", "win"], n_boot=0).mean == 0.625
    assert win_rate([True, False], n_boot=0).mean == 0.5
    assert win_rate(np.array([0.2, 0.4]), n_boot=0).mean == pytest.approx(0.3)


def test_bootstrap_deterministic_and_contains_mean():
    p = np.random.default_rng(1).random(50)
    a, b = win_rate(p, n_boot=500, seed=3), win_rate(p, n_boot=500, seed=3)
    assert a == b
    assert win_rate(p, n_boot=500, seed=4) != a
    assert a.lo <= a.mean <= a.hi and a.lo < a.hi
    assert a.n == 50


def test_bootstrap_two_point_hand_case():
    # n = 2, p = [0, 1]: resampled means are 0, 0.5, 1 with prob 1/4, 1/2, 1/4, so with
    # many replicates the 2.5% / 97.5% percentiles are exactly 0 and 1.
    r = win_rate([0, 1], n_boot=4000, seed=0)
    assert (r.lo, r.mean, r.hi) == (0.0, 0.5, 1.0)


def test_constant_preferences_give_degenerate_interval():
    r = win_rate([0.7] * 10, n_boot=200)
    assert r.lo == pytest.approx(0.7) and r.hi == pytest.approx(0.7)


def test_interval_width_matches_normal_approximation():
    # 400 Bernoulli(0.3) labels: the bootstrap half-width should be close to the CLT value
    # 1.96 * sqrt(p(1-p)/n) = 0.0449; 15% slack covers bootstrap Monte Carlo error.
    y = (np.random.default_rng(0).random(400) < 0.3).astype(float)
    r = win_rate(y, n_boot=2000, seed=0)
    clt = 1.96 * math.sqrt(r.mean * (1 - r.mean) / 400)
    assert (r.hi - r.lo) / 2 == pytest.approx(clt, rel=0.15)


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [1.2], [-0.1], ["maybe"]])
def test_invalid_preferences_rejected(bad):
    with pytest.raises(ValueError):
        as_preferences(bad)
