"""Win-rate estimation from a K×K matrix against exact values and a naive loop."""

import numpy as np
import pytest

from rspo.selfplay.estimate import best_worst, win_rates


def _naive(P, include_self):
    K = len(P)
    out = []
    for k in range(K):
        vals = [P[k][j] if j != k else 0.5 for j in range(K) if include_self or j != k]
        out.append(sum(vals) / len(vals))
    return out


def test_hand_values():
    P = [[0.5, 0.8, 0.6], [0.2, 0.5, 0.9], [0.4, 0.1, 0.5]]
    assert win_rates(P, True) == pytest.approx(
        [(0.5 + 0.8 + 0.6) / 3, (0.2 + 0.5 + 0.9) / 3, 1.0 / 3]
    )
    assert win_rates(P, False) == pytest.approx([0.7, 0.55, 0.25])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("include_self", [True, False])
def test_vectorised_matches_loop(seed, include_self):
    rng = np.random.default_rng(seed)
    K = 6
    U = rng.uniform(size=(K, K))
    P = np.triu(U, 1) + np.tril(1 - U.T, -1) + 0.5 * np.eye(K)
    assert win_rates(P, include_self) == pytest.approx(_naive(P.tolist(), include_self))
    # win rates of a valid matrix average to exactly 1/2
    assert np.mean(win_rates(P, include_self)) == pytest.approx(0.5)


def test_estimate_converges_to_exact_win_rate_against_policy():
    """p̂ from K samples of π approaches P(y ≻ π) as K grows (exactly known P)."""
    rng = np.random.default_rng(0)
    n = 4
    A = rng.uniform(size=(n, n))
    Pm = np.triu(A, 1) + np.tril(1 - A.T, -1) + 0.5 * np.eye(n)
    pi = np.array([0.1, 0.2, 0.3, 0.4])
    exact = Pm @ pi
    K = 4000
    ys = rng.choice(n, size=K, p=pi)
    phat = np.array(win_rates(Pm[np.ix_(ys, ys)], include_self_match=False))
    emp = np.bincount(ys, minlength=n) / K
    for i in range(n):
        # exact identity against the empirical distribution of the K samples ...
        assert phat[ys == i] == pytest.approx((K * (Pm @ emp)[i] - 0.5) / (K - 1))
        # ... which is within sampling error (sd <= 0.5/sqrt(K) ~ 0.008) of P(y ≻ π)
        assert phat[ys == i].mean() == pytest.approx(exact[i], abs=0.03)


def test_best_worst_and_ties():
    assert best_worst([0.2, 0.9, 0.1]) == (1, 2)
    assert best_worst([0.5, 0.5]) == (0, 1)
    with pytest.raises(ValueError):
        win_rates([[0.5]])
