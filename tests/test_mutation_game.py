"""The χ² equilibrium's KKT check (used by the active-set solver's exhaustive fallback) on a
2-action game solved by hand, and the distribution checks' messages.

P = [[½, p], [1−p, ½]], ref = (½, ½), χ²: φ'(σ) = 2(σ/r − 1), φ'(0+) = −2, τ = 0.1.
Support {0,1}: the KKT rows give (p − 0.1)·π₁ = (0.9 − p)·π₀, so p = 0.8 → π = (7/8, 1/8).
Support {0}: π = (1, 0), c = ½ − τ·φ'(1) = ½ − 2τ; the slack of action 1 is
(1 − p) − τ·φ'(0+) − c = ½ − p + 4τ: 0.1 at p = 0.8 (action 1 wants mass: not a KKT
point), −0.05 at p = 0.95 (the equilibrium is the pure action 0).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from rspo.game.equilibrium import _kkt_ok, _solve_on_support, regularized_nash
from rspo.game.games import validate_distribution
from rspo.objectives import get_regularizer

REF = np.array([0.5, 0.5])
TAU = 0.1


def _game(p):
    return np.array([[0.5, p], [1.0 - p, 0.5]])


def test_kkt_check_accepts_only_the_equilibrium_support():
    chi2 = get_regularizer("chi2")
    P = _game(0.8)
    np.testing.assert_allclose(regularized_nash(P, REF, "chi2", TAU), [7 / 8, 1 / 8], atol=1e-12)
    ok = {}
    for sup in ([True, True], [True, False], [False, True]):
        sup = np.array(sup)
        pi, c = _solve_on_support(P, REF, chi2, TAU, sup, REF)
        ok[tuple(sup)] = _kkt_ok(P, REF, chi2, TAU, pi, c, sup)
        if sup.all():
            np.testing.assert_allclose(pi, [7 / 8, 1 / 8], atol=1e-12)
        if tuple(sup) == (True, False):
            assert c == pytest.approx(0.5 - 2 * TAU, abs=1e-12)
    assert ok == {(True, True): True, (True, False): False, (False, True): False}


@pytest.mark.parametrize("p,slack", [(0.8, 0.1), (0.95, -0.05), (0.875, 0.025)])
def test_kkt_check_uses_the_slack_with_tau_times_the_gradient_at_zero(p, slack):
    chi2 = get_regularizer("chi2")
    P, sup = _game(p), np.array([True, False])
    pi, c = np.array([1.0, 0.0]), 0.5 - 2 * TAU
    assert _kkt_ok(P, REF, chi2, TAU, pi, c, sup) is (slack <= 0)
    # the tolerance is on that slack: shifting c by it flips the answer at the boundary
    assert _kkt_ok(P, REF, chi2, TAU, pi, c + slack + 1e-9, sup)
    assert not _kkt_ok(P, REF, chi2, TAU, pi, c + slack - 1e-9, sup)
    if slack <= 0:
        np.testing.assert_allclose(regularized_nash(P, REF, "chi2", TAU), [1.0, 0.0], atol=1e-12)
    # a negative mass on the support fails whatever the slack
    assert not _kkt_ok(P, REF, chi2, TAU, np.array([-1e-9, 1.0]), c, np.array([True, True]))


def test_distribution_checks_name_the_problem():
    with pytest.raises(ValueError) as e:
        validate_distribution([0.5, 0.6], 2, "ref")
    assert re.fullmatch(r"ref must sum to 1, sums to (np\.float64\()?1\.1\)?", str(e.value))
    with pytest.raises(ValueError) as e:
        validate_distribution([0.5, 0.5], 3)
    assert str(e.value) == "policy must have shape (3,), got (2,)"
    with pytest.raises(ValueError) as e:
        validate_distribution([1.0, 0.0], 2, "ref", positive=True)
    assert str(e.value) == "ref must be finite and > 0: [1. 0.]"
    np.testing.assert_array_equal(validate_distribution([1, 0], 2), [1.0, 0.0])


@pytest.mark.parametrize("p,want", [(0.8, [7 / 8, 1 / 8]), (0.95, [1.0, 0.0])])
def test_the_exhaustive_fallback_finds_the_hand_solved_equilibrium(monkeypatch, p, want):
    """When principal pivoting cycles, ``_active_set`` tries every support, largest first,
    and returns the first KKT point. Pivoting is made to cycle (full support -> π₀ < 0, drop
    action 0 -> {1} -> action 0 has slack, add it back -> full support again); the fallback
    then runs the real solver and check and must land on the equilibrium solved by hand."""
    from rspo.game import equilibrium as eq

    real = eq._solve_on_support
    fallback = []

    def cycling(P, ref, reg, tau, support, pi0):
        if pi0 is ref:  # the fallback's calls (start at ref itself)
            fallback.append(tuple(support))
            return real(P, ref, reg, tau, support, pi0)
        if support.all():
            return np.array([-1.0, 2.0]), 0.0
        return np.array([0.0, 1.0]), -10.0

    monkeypatch.setattr(eq, "_solve_on_support", cycling)
    chi2 = get_regularizer("chi2")
    np.testing.assert_allclose(eq._active_set(_game(p), REF, chi2, TAU), want, atol=1e-12)
    # largest support first: both actions (the answer at p = 0.8); at 0.95 then {0}
    assert fallback == ([(True, True)] if p == 0.8 else [(True, True), (True, False)])
    monkeypatch.setattr(eq, "_kkt_ok", lambda *a: False)  # no support passes the check
    with pytest.raises(RuntimeError) as e:
        eq._active_set(_game(p), REF, chi2, TAU)
    assert str(e.value) == "no KKT point found for chi2[is]"


def _docs_table_rows() -> dict[tuple[str, str], str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "game.md").read_text()
    start = text.index("| R | τ | η = 0.1 | η = 1 | η = 5 | η_crit (linearized) |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[(cells[0], cells[1])] = line
    return rows


def test_convergence_table_reproduces_the_documented_rows():
    """docs/game.md's convergence table, cells recomputed (4000 iterations on the six games):
    reverse KL at τ = 0.5, η = 5 (every game overflows) and χ² at τ = 0.02, η ∈ {1, 5}
    (rates, and η_crit's note on boundary equilibria)."""
    from rspo.game.convergence import convergence_table

    docs = _docs_table_rows()
    got = convergence_table(("reverse_kl",), (0.5,), etas=(5.0,), iters=4000).splitlines()
    want = docs[("reverse_kl", "0.5")].split(" | ")
    assert got == [
        "| R | τ | η = 5 | η_crit (linearized) |",
        "|---|---|---|---|",
        " | ".join(want[:2] + want[4:]),  # "0/6, 6 overflow | 3.2–3.9 |"
    ]
    got = convergence_table(("chi2",), (0.02,), etas=(1.0, 5.0), iters=4000).splitlines()
    want = docs[("chi2", "0.02")].split(" | ")
    assert got == [
        "| R | τ | η = 1 | η = 5 | η_crit (linearized) |",
        "|---|---|---|---|---|",
        " | ".join(want[:2] + want[3:]),  # "... | 1.2–6.4 (4 boundary eq.) |"
    ]


def test_bt_game_scale_multiplies_the_strengths():
    """P(i ≻ j) = σ(s_i − s_j) with s = scale·z, z ~ N(0, 1) from the seed's generator: the
    logits log(P/(1−P)) are s_i − s_j, so scale 3 triples scale 1's with the same seed."""
    from rspo.game.games import bt_game

    z = np.random.default_rng(7).normal(0.0, 1.0, size=5)
    for scale in (1.0, 3.0, 0.25):
        P = bt_game(5, 7, scale=scale)
        logit = np.log(P / (1.0 - P))
        want = scale * (z[:, None] - z[None, :])
        assert np.allclose(logit, want, rtol=0, atol=1e-9), scale


def test_measure_reports_the_smallest_equilibrium_probability():
    """Rock-paper-scissors from a uniform π_ref: the regularized equilibrium is uniform (by
    symmetry), so its smallest probability is 1/3."""
    from rspo.game import rps_game
    from rspo.game.convergence import measure

    out = measure(rps_game(3), np.full(3, 1 / 3), "reverse_kl", TAU, 0.5, 40)
    assert set(out) == {
        "final_distance", "converging", "max_late_distance", "empirical_rate",
        "linearized_radius", "min_pi_star",
    }  # fmt: skip
    assert out["min_pi_star"] == pytest.approx(1 / 3, abs=1e-9)


def test_newton_keeps_a_point_within_tolerance_when_its_line_search_stalls(monkeypatch):
    """Near the solution rounding can make every trial point of the line search look worse
    (simulated here: once the residual is below 1e-12 it only grows). The stall ends the
    iteration, not the solve: the point reached meets the 1e-11 tolerance, so it is returned
    (χ² at p = 0.8: π = (7/8, 1/8), solved by hand in this module's docstring)."""
    from rspo.game import equilibrium as eq

    real = eq._kkt_residual_log
    stuck: list[np.ndarray] = []

    def rounding_floor(*a):
        r = real(*a)
        if not stuck and np.abs(r).max() < 1e-12:
            stuck.append(r)  # the point Newton reaches: accepted as it is
        elif stuck:
            stuck.append(stuck[0] * (1 + 1e-3 * len(stuck)))  # any later trial: worse
        return stuck[-1] if stuck else r

    monkeypatch.setattr(eq, "_kkt_residual_log", rounding_floor)
    u = eq._newton(_game(0.8), REF, get_regularizer("chi2"), TAU, np.log(REF))
    assert u is not None
    np.testing.assert_allclose(np.exp(u), [7 / 8, 1 / 8], rtol=0, atol=1e-12)
    assert np.exp(u).sum() == pytest.approx(1.0, abs=1e-15)
    assert len(stuck) == 48  # the stalled search: its 47 halvings of α, from 1 to 1e-14


def test_run_game_plot_draws_the_three_curves_under_their_labels(tmp_path, monkeypatch):
    """_plot: one semilog curve per measure (|value|, floored at 1e-16), labelled."""
    import matplotlib.pyplot as plt

    from rspo.game.run import _plot

    figs = []
    close = plt.close
    monkeypatch.setattr(plt, "close", figs.append)  # keep the figure to look at it
    rows = [
        {"iter": 0, "exploitability": 0.5, "avg_exploitability": 0.25, "distance_to_nash": 1.0},
        {"iter": 10, "exploitability": -1e-3, "avg_exploitability": 0.0, "distance_to_nash": 1e-20},
    ]  # fmt: skip
    _plot(rows, str(tmp_path / "p.png"), "T")
    (fig,) = figs
    try:
        (ax,) = fig.axes
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "exploitability (last)", "exploitability (average)", "L1 to equilibrium (last)"
        ]  # fmt: skip
        assert [(ln.get_label(), list(ln.get_ydata())) for ln in ax.get_lines()] == [
            ("exploitability (last)", [0.5, 1e-3]),
            ("exploitability (average)", [0.25, 1e-16]),
            ("L1 to equilibrium (last)", [1.0, 1e-16]),
        ]
        assert list(ax.get_lines()[0].get_xdata()) == [0, 10]
        assert (ax.get_title(), ax.get_xlabel(), ax.get_yscale()) == ("T", "iteration", "log")
        assert (tmp_path / "p.png").stat().st_size > 0
    finally:
        close(fig)


def test_empirical_rate_uses_the_window_ends_unless_one_is_round_off():
    """Both ends above 1e-14: exp(log(b/a)/window), even when a ≤ 1 and b is under 1e-13
    (b = 5e-14 counts, so the rate over the last step is 5e-14/0.25 = 2e-13); an end at
    round-off falls back to the last window ending at a distance above 1e-13."""
    from rspo.game.convergence import empirical_rate

    assert empirical_rate([0.5, 0.25, 5e-14], 1) == pytest.approx(2e-13, rel=1e-12)
    assert empirical_rate([0.5, 0.25, 1e-15], 1) == pytest.approx(0.5, rel=1e-12)
    assert empirical_rate([2.0, 1.0, 0.5], 1) == pytest.approx(0.5, rel=1e-12)
    # an end at exactly 1e-14 is round-off too: the rate of the last step above 1e-13
    assert empirical_rate([1.0, 0.1, 1e-14], 1) == pytest.approx(0.1, rel=1e-12)


def test_selfplay_divergence_names_the_iteration_that_overflowed():
    from rspo.game.dynamics import selfplay
    from rspo.game.games import rps_game

    with pytest.raises(FloatingPointError) as e:
        selfplay(rps_game(3), np.array([0.2, 0.3, 0.5]), "reverse_kl", 1.0, 1e300, 5)
    assert str(e.value) == (
        "self-play diverged at iteration 2 (eta=1e+300, tau=1.0); "
        "the step size is too large for this regularizer/game"
    )


def test_solve_on_support_starts_uniform_when_pi0_has_no_mass_there():
    chi2 = get_regularizer("chi2")
    pi, c = _solve_on_support(_game(0.8), REF, chi2, TAU, np.array([True, True]), np.zeros(2))
    np.testing.assert_allclose(pi, [7 / 8, 1 / 8], atol=1e-12)
    assert c == pytest.approx(0.3875, abs=1e-12)
    pi, c = _solve_on_support(
        _game(0.8), REF, chi2, TAU, np.array([True, False]), np.array([0.0, 1.0])
    )
    np.testing.assert_allclose(pi, [1.0, 0.0], atol=1e-12)
    assert c == pytest.approx(0.5 - 2 * TAU, abs=1e-12)


def test_exploitability_names_pi_in_its_distribution_check():
    from rspo.game.equilibrium import exploitability
    from rspo.game.games import rps_game

    with pytest.raises(ValueError) as e:
        exploitability([0.5, 0.6, 0.0], rps_game(3), np.array([0.2, 0.3, 0.5]), "chi2", 0.1)
    assert re.fullmatch(r"pi must sum to 1, sums to (np\.float64\()?1\.1\)?", str(e.value))


def test_run_game_text_table_has_its_documented_header(tmp_path):
    """The text output: a settings line, then the column header iter, exploitability,
    L1_to_nash, avg_exploit (fixed widths), then one row per reported iteration."""
    import io

    from rspo.game.run import run_game

    out = io.StringIO()
    run_game("rps", 3, "reverse_kl", 0.1, 1.0, 2, 0, every=1, out=out)
    lines = out.getvalue().splitlines()
    header = ("iter".rjust(8), "exploitability".rjust(14), "L1_to_nash".rjust(12),
              "avg_exploit".rjust(12))  # fmt: skip
    assert lines[1] == "  ".join(header)
    assert lines[1].split() == ["iter", "exploitability", "L1_to_nash", "avg_exploit"]


@pytest.mark.parametrize("iters", [-1, 1.5])
def test_selfplay_refuses_a_negative_or_fractional_iteration_count(iters):
    from rspo.game.dynamics import selfplay
    from rspo.game.games import rps_game

    ref = np.full(3, 1 / 3)
    with pytest.raises(ValueError) as e:
        selfplay(rps_game(3), ref, "reverse_kl", 0.1, 1.0, iters)
    assert str(e.value) == f"iters must be a non-negative integer, got {iters!r}"
    with pytest.raises(ValueError) as e:
        selfplay(rps_game(3), ref, "reverse_kl", 0.1, 1.0, 1, magnet_every=0)
    assert str(e.value) == "magnet_every must be a positive integer or None, got 0"
    # 0 iterations is allowed: the trajectory is the initial policy alone
    traj = selfplay(rps_game(3), ref, "reverse_kl", 0.1, 1.0, 0)
    assert traj.shape == (1, 3) and list(traj[0]) == list(ref)


def test_selfplay_names_ref_in_its_distribution_check():
    from rspo.game.dynamics import selfplay
    from rspo.game.games import rps_game

    with pytest.raises(ValueError) as e:
        selfplay(rps_game(3), np.array([0.5, 0.5]), "reverse_kl", 0.1, 1.0, 1)
    assert str(e.value) == "ref must have shape (3,), got (2,)"


def test_run_game_json_reports_the_last_iterate_as_the_final_policy():
    """final_policy is the policy after the last iteration: selfplay's last row."""
    import io
    import json

    from rspo.game.dynamics import selfplay
    from rspo.game.games import rps_game
    from rspo.game.run import run_game

    out = io.StringIO()
    got = run_game("rps", 3, "reverse_kl", 0.1, 1.0, 3, 0, every=1, as_json=True, out=out)
    got = json.loads(json.dumps(got))  # as written to JSON
    traj = selfplay(rps_game(3), np.array(got["ref"]), "reverse_kl", 0.1, 1.0, 3)
    assert got["final_policy"] == traj[-1].tolist() != traj[-2].tolist()
    assert got["magnet_every"] is None and got["game"] == "rps"
    assert [r["iter"] for r in got["history"]] == [0, 1, 2, 3]
    got = run_game("rps", 3, "reverse_kl", 0.1, 1.0, 2, 0, magnet_every=2, as_json=True,
                   out=io.StringIO())  # fmt: skip
    assert got["magnet_every"] == 2


def test_empirical_rate_is_zero_when_the_window_starts_at_an_exact_zero():
    """The last two distances are round-off, and the window before them starts at a
    distance of exactly 0: no rate (0.0), not log(0)."""
    from rspo.game.convergence import empirical_rate

    assert empirical_rate([0.0, 0.5, 0.25, 1e-15], 2) == 0.0


def test_the_active_set_drops_negative_actions_without_the_exhaustive_fallback():
    """χ² on a 17-action Bradley–Terry game (too large for the fallback, n > 16): the
    uniform start gives some actions negative mass, and the solver must drop them one by
    one to reach the equilibrium (8 actions in its support), checked by its KKT conditions."""
    from rspo.game.games import bt_game

    P, ref = bt_game(17, 0, scale=3.0), np.full(17, 1 / 17)
    pi = regularized_nash(P, ref, "chi2", 0.05)
    sup = pi > 0
    assert sup.sum() == 8 and pi.sum() == pytest.approx(1.0, abs=1e-12)
    reg = get_regularizer("chi2")
    kkt = P[sup] @ pi - 0.05 * reg.grad(pi[sup], ref[sup])
    assert kkt.max() - kkt.min() < 1e-10  # equal payoff on the support
    assert (P[~sup] @ pi - 0.05 * reg.grad_at_zero(ref[~sup])).max() <= kkt[0] + 1e-12


def test_game_checks_accept_one_action_and_return_float64():
    """n = 1 is a valid (trivial) game; an integer distribution comes back as float64; an
    entry above 1 is named even when no entry is negative."""
    from rspo.game.games import random_game, validate_distribution, validate_preference_matrix

    assert random_game(1, 0).tolist() == [[0.5]]
    got = validate_distribution([0, 1], 2)
    assert got.dtype == np.float64 and got.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError) as e:
        validate_preference_matrix(np.array([[0.5, 1.5], [0.5, 0.5]]))
    assert str(e.value) == "preference matrix entries must lie in [0, 1]; P[0,1] = 1.5"
