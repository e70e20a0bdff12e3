"""Pinned findings of the last-iterate measurements in docs/game.md.

Finding: forward KL, χ² and the forward + reverse mixture all converge in the last iterate
(linearly) once η is below a game- and τ-dependent threshold η_crit, exactly as the
linearization at the equilibrium predicts, and cycle or diverge above it — the same
qualitative picture as reverse KL, whose guarantee covers only small η.
"""

import numpy as np
import pytest

from rspo.game import make_ref, random_game, regularized_nash, rps_game, selfplay
from rspo.game.convergence import critical_eta, linearized_radius, measure

GAMES = [(random_game(5, s), make_ref(5, s)) for s in range(5)] + [(rps_game(), make_ref(3, 0))]
OTHERS = ["forward_kl", "chi2", "forward_kl + reverse_kl"]


@pytest.mark.parametrize("spec", OTHERS)
def test_last_iterate_converges_for_moderate_eta(spec):
    for P, ref in GAMES:
        star = regularized_nash(P, ref, spec, 0.1)
        traj = selfplay(P, ref, spec, 0.1, 1.0, 600)
        assert np.abs(traj[-1] - star).sum() <= 1e-6


THRESHOLD_CASES = [
    (spec, game, tau)
    for spec in OTHERS + ["reverse_kl"]
    for game in (1, 5)  # random seed 1, RPS
    for tau in (0.1, 0.02)
    if (spec, game, tau) != ("chi2", 1, 0.02)  # boundary equilibrium: no linearization
]


@pytest.mark.parametrize("spec,game,tau", THRESHOLD_CASES)
def test_linearized_threshold_separates_convergence_from_cycling(spec, game, tau):
    P, ref = GAMES[game]
    eta_c = critical_eta(P, ref, spec, tau)
    assert 0.3 < eta_c <= 2.0 / tau + 1e-6  # reverse KL: η_crit ≤ 2/τ (the 1 − ητ mode)
    below = measure(P, ref, spec, tau, 0.5 * eta_c, 1500)
    assert below["converging"] and below["empirical_rate"] < 1
    try:
        above = measure(P, ref, spec, tau, 2.0 * eta_c, 1500)
        assert not above["converging"] and above["max_late_distance"] > 1e-2
    except FloatingPointError:
        pass  # diverged outright


def test_empirical_rate_matches_linearization():
    P, ref = GAMES[2]
    for spec in OTHERS + ["reverse_kl"]:
        m = measure(P, ref, spec, 0.1, 1.0, 600)
        assert m["empirical_rate"] == pytest.approx(m["linearized_radius"], abs=0.02)


def test_reverse_kl_small_step_rate_is_one_minus_eta_tau():
    for P, ref in GAMES:
        assert linearized_radius(P, ref, "reverse_kl", 0.5, 0.1) == pytest.approx(0.95, abs=2e-3)


def test_boundary_equilibrium_has_no_linearization():
    P, ref = GAMES[1]
    assert np.isnan(critical_eta(P, ref, "chi2", 0.02))


def test_chi2_boundary_equilibrium_is_reached():
    P, ref = GAMES[0]
    star = regularized_nash(P, ref, "chi2", 0.02)
    assert (star == 0).sum() == 3
    traj = selfplay(P, ref, "chi2", 0.02, 1.0, 2000)
    assert np.abs(traj[-1] - star).sum() < 1e-9
