"""Exact tabular games: matrices, equilibria, exploitability, self-play acceptance, run_game."""

import io
import json
import warnings

import numpy as np
import pytest

from rspo.game import (
    best_response,
    bt_game,
    exploitability,
    make_game,
    make_ref,
    random_game,
    regularized_nash,
    rps_game,
    run_game,
    selfplay,
    time_average,
    validate_preference_matrix,
)
from rspo.objectives import Mixture, get_regularizer

SPECS = ["reverse_kl", "forward_kl", "chi2", "forward_kl + reverse_kl", "0.5*chi2 + reverse_kl"]
GAMES = [(random_game(5, s), make_ref(5, s)) for s in range(5)] + [(rps_game(), make_ref(3, 0))]


# ----------------------------------------------------------------------------- matrices
def test_games_are_valid_preference_matrices():
    for P in (random_game(6, 0), rps_game(), rps_game(5, 0.6), rps_game(4), bt_game(7, 1)):
        assert np.allclose(P + P.T, 1.0) and P.min() >= 0 and P.max() <= 1
        assert validate_preference_matrix(P) is not None
    assert np.array_equal(make_game("random", 4, 3), random_game(4, 3))
    assert np.array_equal(make_game("bt", 4, 3), bt_game(4, 3))
    assert rps_game()[0, 1] == 1.0 and rps_game()[1, 0] == 0.0 and rps_game()[2, 0] == 1.0
    with pytest.raises(ValueError, match="unknown game 'chess'; valid: random, rps, bt"):
        make_game("chess", 3, 0)


def test_random_game_is_not_transitive_and_bt_is():
    def has_cycle(P):
        n = len(P)
        return any(
            P[i, j] > 0.5 and P[j, k] > 0.5 and P[k, i] > 0.5
            for i in range(n)
            for j in range(n)
            for k in range(n)
        )

    assert has_cycle(random_game(5, 0)) and has_cycle(rps_game())
    assert not has_cycle(bt_game(8, 0))


@pytest.mark.parametrize(
    "P,match",
    [
        (np.ones((2, 3)) * 0.5, "square"),
        (np.array([[0.5, 1.2], [-0.2, 0.5]]), "in \\[0, 1\\]; P\\[0,1\\] = 1.2"),
        (np.array([[0.5, 0.7], [0.7, 0.5]]), "P \\+ Pᵀ = 1; P\\[0,1\\] \\+ P\\[1,0\\] = 1.4"),
        (np.array([[0.5, np.nan], [0.5, 0.5]]), "non-finite"),
    ],
)
def test_validate_preference_matrix_errors(P, match):
    with pytest.raises(ValueError, match=match):
        validate_preference_matrix(P)


# ----------------------------------------------------------------------------- equilibria
def test_lp_equilibria():
    ref = np.full(3, 1 / 3)
    assert np.allclose(regularized_nash(rps_game(), ref, None, 0.0), 1 / 3, atol=1e-12)
    P = bt_game(6, 2)
    s_best = int(np.argmax(P.sum(1)))
    assert regularized_nash(P, np.full(6, 1 / 6), None, 0)[s_best] == pytest.approx(1.0)
    for P, ref in GAMES:
        pi = regularized_nash(P, ref, "none", 0)
        assert exploitability(pi, P, ref, None, 0) == pytest.approx(0.0, abs=1e-12)
        assert (P @ pi).max() <= 0.5 + 1e-12


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
def test_regularized_nash_kkt_and_zero_gap(spec, tau):
    reg = get_regularizer(spec)
    rng = np.random.default_rng(0)
    for P, ref in GAMES:
        pi = regularized_nash(P, ref, spec, tau)
        assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0, abs=1e-14)
        sup = pi > 0
        kkt = P @ pi - tau * reg.grad(pi, ref)
        assert np.ptp(kkt[sup]) < 1e-12
        if (~sup).any():  # only χ² may drop actions: complementary slackness
            assert not reg.barrier
            assert (P[~sup] @ pi - tau * reg.grad_at_zero(ref[~sup])).max() <= kkt[sup][0] + 1e-12
        assert abs(exploitability(pi, P, ref, spec, tau)) < 1e-12
        for _ in range(5):  # positive anywhere else
            other = rng.dirichlet(np.ones(len(pi)))
            assert exploitability(other, P, ref, spec, tau) > 1e-6
            near = 0.999 * pi + 0.001 * other
            assert exploitability(near, P, ref, spec, tau) > 0


def test_chi2_equilibrium_can_drop_actions():
    P, ref = random_game(5, 0), make_ref(5, 0)
    pi = regularized_nash(P, ref, "chi2", 0.02)
    assert np.count_nonzero(pi == 0) == 3
    assert abs(exploitability(pi, P, ref, "chi2", 0.02)) < 1e-14


def test_reverse_kl_fixed_point_and_closed_form_gap():
    for P, ref in GAMES:
        for tau in (0.5, 0.05):
            pi = regularized_nash(P, ref, "reverse_kl", tau)
            fp = ref * np.exp(P @ pi / tau)
            assert np.abs(fp / fp.sum() - pi).sum() < 1e-12
            x = 0.7 * pi + 0.3 * np.full(len(pi), 1 / len(pi))
            kl = float(np.sum(x * np.log(x / ref)))
            closed = 2 * tau * np.log(np.sum(ref * np.exp(P @ x / tau))) - 1 + 2 * tau * kl
            assert exploitability(x, P, ref, "reverse_kl", tau) == pytest.approx(closed, abs=1e-13)
            # the generic 1-D root path (a one-component Mixture) agrees with the closed form
            generic = Mixture([(1.0, "reverse_kl")])
            assert exploitability(x, P, ref, generic, tau) == pytest.approx(closed, abs=1e-12)


def test_best_response_is_the_max():
    P, ref = random_game(5, 1), make_ref(5, 1)
    g = P @ np.full(5, 0.2)
    rng = np.random.default_rng(1)
    for spec in SPECS:
        reg = get_regularizer(spec)
        sigma, v = best_response(g, ref, reg, 0.1)
        assert v == pytest.approx(sigma @ g - 0.1 * reg.value(sigma, ref), abs=1e-14)
        for _ in range(20):
            other = rng.dirichlet(np.ones(5))
            assert other @ g - 0.1 * reg.value(other, ref) <= v + 1e-14


@pytest.mark.parametrize("r0", [1e-15, 1e-17, 1e-19, 1e-200])
def test_forward_kl_best_response_with_a_tiny_ref_entry(r0):
    # Forward KL: σ_j = ref_j·τ/(c − g_j). As ref_0 → 0 the multiplier c → g_0 from above,
    # so σ_j → ref_j·τ/(g_0 − g_j) for j ≠ 0 and σ_0 takes the rest. g = Pπ = (0.78, 0.46,
    # 0.40), τ = 0.1: σ = (1 − 0.05/0.32 − 0.05/0.38, 0.05/0.32, 0.05/0.38). The root lies
    # within ulps of g_0, so a c solved at g_0's scale gives σ_0 = 0.51 at 1e-15 and no
    # bracket below.
    P = np.array([[0.5, 0.9, 0.8], [0.1, 0.5, 0.6], [0.2, 0.4, 0.5]])
    pi, ref, tau = np.array([0.2, 0.4, 0.4]), np.array([r0, 0.5, 0.5 - r0]), 0.1
    reg = get_regularizer("forward_kl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, division or deprecation on the way
        sigma, v = best_response(P @ pi, ref, reg, tau)
    s1, s2 = 0.05 / 0.32, 0.05 / 0.38
    np.testing.assert_allclose(sigma, [1 - s1 - s2, s1, s2], rtol=1e-12)
    assert v == pytest.approx(sigma @ (P @ pi) - tau * reg.value(sigma, ref), abs=1e-14)
    gap = exploitability(pi, P, ref, reg, tau)
    assert gap == pytest.approx(2 * v + 2 * tau * reg.value(pi, ref) - 1, abs=1e-14)


def test_small_tau_approaches_lp_equilibrium():
    for s in (2, 3, 4):  # games with a mixed LP equilibrium
        P, ref = random_game(5, s), make_ref(5, s)
        lp = regularized_nash(P, ref, None, 0)
        d = [
            np.abs(regularized_nash(P, ref, "reverse_kl", t) - lp).sum()
            for t in (1e-1, 1e-2, 1e-3, 1e-4)
        ]
        assert all(a > b for a, b in zip(d, d[1:]))
        assert d[2] < 0.02 and 5 < d[2] / d[3] < 20  # O(τ)


def test_errors():
    P, ref = rps_game(), np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="needs a regularizer"):
        regularized_nash(P, ref, None, 0.1)
    with pytest.raises(ValueError, match="tau"):
        regularized_nash(P, ref, "reverse_kl", -1.0)
    with pytest.raises(ValueError, match="ref must have shape"):
        regularized_nash(P, np.ones(4) / 4, "reverse_kl", 0.1)
    with pytest.raises(ValueError, match="sum to 1"):
        exploitability(np.array([0.5, 0.5, 0.5]), P, ref, "reverse_kl", 0.1)
    with pytest.raises(ValueError, match="eta"):
        selfplay(P, ref, "reverse_kl", 0.1, 0.0, 10)
    with pytest.raises(FloatingPointError, match="diverged"):
        selfplay(random_game(5, 0), make_ref(5, 0), "reverse_kl", 0.5, 5.0, 3000)


# ----------------------------------------------------------------------------- dynamics
def test_reverse_kl_last_iterate_reaches_equilibrium():
    """Acceptance: L1 ≤ 1e-6 of regularized_nash on seeded random 5×5 games and on RPS."""
    for P, ref in GAMES:
        star = regularized_nash(P, ref, "reverse_kl", 0.1)
        traj = selfplay(P, ref, "reverse_kl", 0.1, 1.0, 600)
        assert traj.shape == (601, len(ref))
        assert np.abs(traj[-1] - star).sum() <= 1e-6
        assert exploitability(traj[-1], P, ref, "reverse_kl", 0.1) < 1e-10


def test_sppo_tau_zero_cycles_on_rps_but_average_converges():
    P, ref = rps_game(), make_ref(3, 0)
    nash = np.full(3, 1 / 3)
    traj = selfplay(P, ref, None, 0.0, 0.1, 6000)
    avg = time_average(traj)
    last = np.abs(traj - nash).sum(1)
    assert last[-2000:].min() > 0.3  # last iterate keeps cycling far from uniform
    assert np.abs(avg[-1] - nash).sum() < 0.02
    ex = [exploitability(avg[t], P, ref, None, 0) for t in (600, 6000)]
    assert ex[1] < 0.25 * ex[0]
    assert exploitability(traj[-1], P, ref, None, 0) > 0.3


def test_mpo_magnet_converges_to_unregularized_equilibrium():
    P, ref = rps_game(), make_ref(3, 0)
    traj = selfplay(P, ref, "reverse_kl", 0.1, 0.5, 3000, magnet_every=20)
    assert np.abs(traj[-1] - 1 / 3).sum() < 1e-9
    no_magnet = selfplay(P, ref, "reverse_kl", 0.1, 0.5, 3000)
    assert np.abs(no_magnet[-1] - 1 / 3).sum() > 0.1  # plain RSPO stops at its biased eq.
    every_step = selfplay(P, ref, "reverse_kl", 0.1, 0.5, 3000, magnet_every=1)
    assert np.abs(every_step[-1] - 1 / 3).sum() > 1.0  # magnet at π_t: no damping, cycles


def test_time_average():
    traj = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert np.allclose(time_average(traj), [[1, 0], [0.5, 0.5], [1 / 3, 2 / 3]])


# ----------------------------------------------------------------------------- run_game
def test_run_game_json_table_and_plot(tmp_path):
    buf = io.StringIO()
    plot = tmp_path / "conv.png"
    summary = run_game("random", 5, "reverse_kl", 0.1, 1.0, 300, seed=0, every=100,
                       as_json=True, plot=str(plot), out=buf)  # fmt: skip
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [r["iter"] for r in lines] == [0, 100, 200, 300]
    for r in lines:
        assert {"iter", "exploitability", "distance_to_nash"} <= set(r)
    assert lines[-1]["exploitability"] < 1e-10 and lines[-1]["distance_to_nash"] < 1e-6
    assert lines[0]["exploitability"] > 1e-3
    assert plot.exists() and plot.stat().st_size > 1000
    assert summary["final_distance_to_nash"] == lines[-1]["distance_to_nash"]
    assert len(summary["nash"]) == 5 and summary["regularizer"] == "reverse_kl[is]"

    buf = io.StringIO()
    s2 = run_game("rps", 3, "none", 0.0, 0.1, 250, seed=0, every=100, out=buf)
    text = buf.getvalue().splitlines()
    assert "exploitability" in text[1] and len(text) == 2 + 4  # iters 0, 100, 200, 250
    assert s2["final_exploitability"] > 0.05 and s2["regularizer"] is None
