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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rspo.game import bt_game, make_game, time_average
from rspo.game import equilibrium as eq
from rspo.game.equilibrium import _kkt_ok, _solve_on_support, best_response, regularized_nash
from rspo.game.games import random_game, rps_game, validate_distribution
from rspo.game.run import check_plot_path
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

    assert empirical_rate([0.5, 0.25, 5e-14], 1) == pytest.approx(2e-13, rel=1e-12, abs=0)
    assert empirical_rate([0.5, 0.25, 1e-15], 1) == pytest.approx(0.5, rel=1e-12)
    assert empirical_rate([2.0, 1.0, 0.5], 1) == pytest.approx(0.5, rel=1e-12)
    # an end at exactly 1e-14 is round-off too: the rate of the last step above 1e-13
    assert empirical_rate([1.0, 0.1, 1e-14], 1) == pytest.approx(0.1, rel=1e-12)


def test_selfplay_divergence_names_the_iteration_that_overflowed():
    import warnings

    from rspo.game.dynamics import selfplay
    from rspo.game.games import rps_game

    with pytest.raises(FloatingPointError) as e, warnings.catch_warnings():
        warnings.simplefilter("error")  # the overflow itself is silent: only this error tells
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


def test_kkt_check_accepts_a_support_mass_below_its_tolerance():
    # p = 0.9 − 1e-13: (p − 0.1)·π₁ = (0.9 − p)·π₀ gives π₁ ≈ 1.25e-13 > 0, still the
    # equilibrium on the full support; only a negative mass below −tol fails.
    chi2, P, sup = get_regularizer("chi2"), _game(0.9 - 1e-13), np.array([True, True])
    pi, c = _solve_on_support(P, REF, chi2, TAU, sup, REF)
    assert 0 < pi[1] < 1e-12
    assert _kkt_ok(P, REF, chi2, TAU, pi, c, sup)


def test_the_lp_equilibrium_is_polished_on_its_support():
    # HiGHS' vertex for random_game(16, 4) leaves (Pπ)_j above ½ by 5.8e-15; solved again on
    # its support by least squares the von Neumann winner is exact to a few ulps.
    P = random_game(16, 4)
    pi = regularized_nash(P, np.full(16, 1 / 16), None, 0.0)
    assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0, abs=4e-16)
    assert (P @ pi).max() <= 0.5 + 1.5e-15
    np.testing.assert_allclose((P @ pi)[pi > 0], 0.5, rtol=0, atol=1.5e-15)
    assert 2 < (pi > 0).sum() < 16  # a mixed equilibrium off some actions


def test_a_failed_lp_names_scipys_message(monkeypatch):
    class Failed:
        success, message = False, "The problem is infeasible."

    monkeypatch.setattr(eq, "linprog", lambda *a, **k: Failed())
    with pytest.raises(RuntimeError) as e:
        regularized_nash(rps_game(), np.full(3, 1 / 3), None, 0.0)
    assert str(e.value) == "linprog failed: The problem is infeasible."


def test_plot_path_errors_name_the_path_and_the_fix(tmp_path):
    d = tmp_path / "figs"
    with pytest.raises(ValueError) as e:
        check_plot_path(str(d / "p.png"))
    assert str(e.value) == f"--plot {d}/p.png: folder {d} does not exist; create it first"
    d.mkdir()
    with pytest.raises(ValueError) as e:
        check_plot_path(str(d))
    assert str(e.value) == f"--plot {d}: is a directory; give a file name such as plot.png"
    with pytest.raises(ValueError) as e:
        check_plot_path(str(d / "p.pnx"))
    kinds = sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())
    assert str(e.value) == (
        f"--plot {d}/p.pnx: unknown image format '.pnx'; use one of "
        + ", ".join("." + k for k in kinds)
    )
    assert ".png, " in str(e.value) and ".svg" in str(e.value)
    for ok in ("p.png", "p.PDF", "p"):
        check_plot_path(str(d / ok))


def test_run_game_summary_rows_header_and_defaults(tmp_path, monkeypatch, capsys):
    # Every number recomputed from the public pieces: seeded game and ref, the MPO target
    # (τ = 0 equilibrium) with magnet_every, rows every 100 iterations (the default) plus the
    # last, written to the stdout of the call; the plot gets the rows and a titled figure.
    from rspo.game import run as run_mod
    from rspo.game import selfplay, time_average

    drawn = []
    monkeypatch.setattr(run_mod, "_plot", lambda rows, path, title: drawn.append((path, title)))
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    plot = str(tmp_path / "p.png")
    s = run_mod.run_game("random", 4, "forward_kl", 0.5, 0.2, 250, 3, plot=plot, ref=ref,
                         magnet_every=7)  # fmt: skip
    P = random_game(4, 3)
    reg = get_regularizer("forward_kl")
    nash = regularized_nash(P, ref, None, 0.0)
    traj = selfplay(P, ref, reg, 0.5, 0.2, 250, magnet_every=7)
    avg = time_average(traj)
    rows = [
        {
            "iter": t,
            "exploitability": eq.exploitability(traj[t], P, ref, None, 0.0),
            "distance_to_nash": float(np.abs(traj[t] - nash).sum()),
            "avg_exploitability": eq.exploitability(avg[t], P, ref, None, 0.0),
            "avg_distance_to_nash": float(np.abs(avg[t] - nash).sum()),
        }
        for t in (0, 100, 200, 250)
    ]
    assert s == {
        "game": "random", "n": 4, "regularizer": "forward_kl[is]", "tau": 0.5, "eta": 0.2,
        "iters": 250, "seed": 3, "magnet_every": 7, "ref": ref.tolist(), "nash": nash.tolist(),
        "final_policy": traj[-1].tolist(), "final_exploitability": rows[-1]["exploitability"],
        "final_distance_to_nash": rows[-1]["distance_to_nash"],
        "avg_exploitability": rows[-1]["avg_exploitability"],
        "avg_distance_to_nash": rows[-1]["avg_distance_to_nash"], "history": rows, "plot": plot,
    }  # fmt: skip
    assert drawn == [(plot, "random n=4 forward_kl τ=0.5 η=0.2")]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "game=random n=4 regularizer=forward_kl[is] tau=0.5 eta=0.2 iters=250 seed=3 magnet_every=7"
    )
    assert [int(line.split()[0]) for line in lines[2:]] == [0, 100, 200, 250]
    # τ = 0 drops the regularizer: named "none" in the header, None in the summary
    s0 = run_mod.run_game("random", 4, "reverse_kl", 0.0, 1.0, 3, 3, every=5)
    assert capsys.readouterr().out.splitlines()[0] == (
        "game=random n=4 regularizer=none tau=0 eta=1 iters=3 seed=3"
    )
    assert s0["regularizer"] is None and s0["magnet_every"] is None and s0["plot"] is None
    assert [r["iter"] for r in s0["history"]] == [0, 3]
    with pytest.raises(ValueError) as e:
        run_mod.run_game("rps", 3, "none", 0.0, 1.0, 3, 0, every=0)
    assert str(e.value) == "every must be >= 1, got 0"


def test_bt_game_default_scale_and_aliases():
    s = np.random.default_rng(5).normal(0.0, 1.0, size=4)  # scale 1 by default
    np.testing.assert_array_equal(bt_game(4, 5), 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :]))))
    np.testing.assert_array_equal(make_game("bradley_terry", 4, 5), bt_game(4, 5))
    np.testing.assert_array_equal(make_game("cyclic", 5, 9), rps_game(5))


def test_time_average_is_float64_whatever_the_input_dtype():
    traj = np.array([[0.1, 0.9], [0.7, 0.3], [0.2, 0.8]], dtype=np.float32)
    avg = time_average(traj)
    assert avg.dtype == np.float64
    t64 = traj.astype(np.float64)
    np.testing.assert_array_equal(avg, [t64[0], (t64[0] + t64[1]) / 2, t64.sum(0) / 3])


def test_run_game_plot_is_six_by_four_inches(tmp_path):
    import matplotlib
    import matplotlib.image

    from rspo.game.run import _plot

    keys = ("exploitability", "distance_to_nash", "avg_exploitability", "avg_distance_to_nash")
    rows = [
        {"iter": t, **{k: 0.1 * (i + 1) / (t + 1) for i, k in enumerate(keys)}} for t in (0, 5, 9)
    ]
    _plot(rows, str(tmp_path / "p.png"), "t")
    dpi = matplotlib.rcParams["savefig.dpi"]
    dpi = matplotlib.rcParams["figure.dpi"] if dpi == "figure" else dpi
    assert matplotlib.image.imread(tmp_path / "p.png").shape[:2] == (4 * dpi, 6 * dpi)


def test_convergence_table_default_iterations_and_an_all_boundary_cell(monkeypatch):
    from rspo.game import convergence as cv

    iters = []

    def measure(P, ref, reg, tau, eta, n_iter):
        iters.append(n_iter)
        return {"converging": True, "empirical_rate": 0.5}

    monkeypatch.setattr(cv, "measure", measure)
    monkeypatch.setattr(cv, "critical_eta", lambda *a: float("nan"))  # every eq. on the boundary
    rows = cv.convergence_table(("chi2",), (0.1,), etas=(1.0,)).splitlines()
    k = cv.TABLE_GAMES + 1
    assert set(iters) == {4000} and len(iters) == k
    assert rows[2] == f"| chi2 | 0.1 | {k}/{k}, ρ 0.500–0.500 | n/a ({k} boundary eq.) |"


def test_active_set_pivots_to_the_equilibrium_without_the_exhaustive_fallback(monkeypatch):
    # π₁ ≈ 6.25e-14 at p = 0.9 − 5e-14: a positive mass under the pivot's 1e-13 tolerance for
    # negatives stays in the support; the pivots alone (4n + 20 of them) find it.
    monkeypatch.setattr(eq, "_kkt_ok", lambda *a: pytest.fail("exhaustive fallback used"))
    pi = regularized_nash(_game(0.9 - 5e-14), REF, "chi2", TAU)
    assert pi[1] == pytest.approx(5e-14 / 0.8, rel=1e-3, abs=0)
    for p in (0.8, 0.95):  # one interior, one pure equilibrium (a pivot drops action 1)
        want = [7 / 8, 1 / 8] if p == 0.8 else [1.0, 0.0]
        np.testing.assert_allclose(regularized_nash(_game(p), REF, "chi2", TAU), want, atol=1e-12)


def test_a_polished_candidate_that_is_no_equilibrium_is_rejected():
    # Equilibria: π = (1 − a, a, 0) for a ∈ [0, 4/9] (row 2 gives 0.1 + 0.9a ≤ ½). HiGHS'
    # vertex has support {0, 1}, where P_SS·x = ½, Σx = 1 has the least-squares solution
    # (½, ½): row 2 then scores 0.55 > ½, so the LP's own solution must be returned.
    P = np.array([[0.5, 0.5, 0.9], [0.5, 0.5, 0.0], [0.1, 1.0, 0.5]])
    pi = regularized_nash(P, np.full(3, 1 / 3), None, 0.0)
    assert pi.min() >= 0 and pi.sum() == pytest.approx(1.0, abs=1e-15)
    assert pi[2] == 0 and pi[1] <= 4 / 9 + 1e-12
    assert (P @ pi).max() <= 0.5 + 1e-12


@pytest.mark.parametrize("seed", [55, 206])
def test_active_set_adds_back_an_action_whose_slack_turns_positive(monkeypatch, seed):
    # χ² at τ = 0.02 on random_game(5, seed): the pivots drop actions (5 → 4 → 3 → ...) and
    # then add one back, on the slack P_i·π − τφ'(0+; ref_i) − c > 0; no exhaustive fallback.
    from rspo.game.run import make_ref

    P, ref = random_game(5, seed), make_ref(5, seed)
    sizes, solve = [], eq._solve_on_support

    def spy(P, ref, reg, tau, support, pi0):
        sizes.append(int(support.sum()))
        return solve(P, ref, reg, tau, support, pi0)

    monkeypatch.setattr(eq, "_solve_on_support", spy)
    monkeypatch.setattr(eq, "_kkt_ok", lambda *a: pytest.fail("exhaustive fallback used"))
    pi = regularized_nash(P, ref, "chi2", 0.02)
    assert any(b > a for a, b in zip(sizes, sizes[1:]))
    assert eq.exploitability(pi, P, ref, "chi2", 0.02) < 1e-12
    assert pi.min() == 0 and pi.sum() == pytest.approx(1.0, abs=1e-15)


def test_active_set_cycling_raises_above_16_actions_and_falls_back_at_16(monkeypatch):
    # A solve that alternates: a negative mass on the full support (dropped), then a large
    # slack without it (added back): the pivots revisit the full support.
    def solve(P, ref, reg, tau, support, pi0):
        if support.all():
            return np.where(np.arange(len(support)) == 0, -1.0, 1.0), 0.0
        return np.where(support, 1.0 / support.sum(), 0.0), -1e9

    monkeypatch.setattr(eq, "_solve_on_support", solve)
    monkeypatch.setattr(eq, "_kkt_ok", lambda *a: True)  # the fallback's first support passes
    with pytest.raises(RuntimeError) as e:
        eq._active_set(np.full((17, 17), 0.5), np.full(17, 1 / 17), get_regularizer("chi2"), 0.1)
    assert str(e.value) == "active-set solver cycled for chi2[is] (n=17)"
    pi = eq._active_set(np.full((16, 16), 0.5), np.full(16, 1 / 16), get_regularizer("chi2"), 0.1)
    np.testing.assert_allclose(pi, [0.0] + [1 / 15] * 15)  # the fallback's full support, clipped


def test_finish_clips_negatives_and_normalizes():
    np.testing.assert_array_equal(eq._finish(np.array([-1e-14, 0.25, 0.25])), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(eq._finish(np.array([0.2, 0.2])), [0.5, 0.5])


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5, 2.0])
def test_rps_strength_outside_0_1_is_refused(strength):
    with pytest.raises(ValueError) as e:
        rps_game(3, strength)
    assert str(e.value) == f"strength must lie in (0, 1], got {strength}"
    np.testing.assert_array_equal(rps_game(3, 1.0)[0], [0.5, 1.0, 0.0])  # the edge 1 is valid


def test_make_ref_kinds():
    from rspo.game.run import make_ref

    np.testing.assert_array_equal(make_ref(4, 0, "uniform"), [0.25] * 4)
    z = np.random.default_rng([7, 1]).normal(size=3)
    np.testing.assert_allclose(make_ref(3, 7), np.exp(z) / np.exp(z).sum(), rtol=1e-15)
    np.testing.assert_array_equal(make_ref(2, 0, [0.25, 0.75]), [0.25, 0.75])
    with pytest.raises(ValueError) as e:
        make_ref(3, 0, "flat")
    assert str(e.value) == "unknown ref 'flat'; valid: uniform, random, or an array"
    with pytest.raises(ValueError) as e:
        make_ref(2, 0, [1.0, 0.0])  # π_ref must be positive: the KL terms divide by it
    assert str(e.value) == "ref must be finite and > 0: [1. 0.]"
    with pytest.raises(ValueError) as e:
        make_ref(3, 0, [0.5, 0.5])
    assert str(e.value) == "ref must have shape (3,), got (2,)"


def test_even_rps_ties_the_opposite_action():
    P = rps_game(4)
    np.testing.assert_array_equal(P[0], [0.5, 1.0, 0.5, 0.0])
    np.testing.assert_array_equal(P + P.T, np.ones((4, 4)))


def test_critical_eta_bisects_between_its_default_bounds(monkeypatch):
    from rspo.game import convergence as cv

    P, ref = random_game(3, 0), np.full(3, 1 / 3)
    monkeypatch.setattr(cv, "linearized_radius", lambda P, ref, reg, tau, eta, pi: eta / 2)
    assert cv.critical_eta(P, ref, "chi2", 0.5) == pytest.approx(2.0, rel=1e-14)
    monkeypatch.setattr(cv, "linearized_radius", lambda *a: 0.5)  # stable up to `hi`
    assert cv.critical_eta(P, ref, "chi2", 0.5) == 1000.0
    monkeypatch.setattr(cv, "linearized_radius", lambda *a: 2.0)  # unstable down to `lo`
    assert cv.critical_eta(P, ref, "chi2", 0.5) == 1e-4


@pytest.mark.parametrize("n", [0, -1, 2.5, "3"])
def test_the_number_of_actions_must_be_a_positive_integer(n):
    with pytest.raises(ValueError) as e:
        random_game(n, 0)
    assert str(e.value) == f"number of actions n must be a positive integer, got {n!r}"
    assert random_game(np.int64(2), 0).shape == (2, 2)


@pytest.mark.parametrize(
    "dist,late,before,converging",
    [
        # 8 iterations: window 2, late = max of the last 2, before = max of the 2 before them
        ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], 0.2, 0.4, False),  # 0.2 not < ½·0.4
        ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1, 0.05], 0.1, 0.4, True),
        ([0.9, 0.8, 0.7, 0.6, 0.4, 0.4, 0.4, 0.4, 1e-10], 0.4, 0.4, True),  # final < 1e-9
        ([0.9, 0.8, 0.7, 0.6, 0.4, 0.4, 0.4, 0.4, 1e-9], 0.4, 0.4, False),
        ([0.9, 0.5, 0.3, 0.4], 0.4, 0.3, False),  # 3 iterations: window 1
    ],
)
def test_measure_compares_the_last_quarter_with_the_one_before(
    monkeypatch, dist, late, before, converging
):
    from rspo.game import convergence as cv

    iters = len(dist) - 1
    monkeypatch.setattr(cv, "regularized_nash", lambda *a: np.zeros(2))  # a stand-in π*
    traj = np.array([[d, 0.0] for d in dist])  # L1 distance exactly d
    monkeypatch.setattr(cv, "selfplay", lambda P, ref, reg, tau, eta, n: traj[: n + 1])
    monkeypatch.setattr(cv, "linearized_radius", lambda *a: 0.75)
    m = cv.measure(_game(0.8), REF, "chi2", TAU, 1.0, iters)
    window = max(1, iters // 4)
    assert m == {
        "final_distance": dist[-1],
        "converging": converging,
        "max_late_distance": late,
        "empirical_rate": cv.empirical_rate(np.array(dist), window),
        "linearized_radius": 0.75,
        "min_pi_star": 0.0,
    }
    assert before == max(dist[-2 * window : -window])


def test_empirical_rate_is_zero_when_under_two_points_exceed_round_off():
    from rspo.game.convergence import empirical_rate

    assert empirical_rate([0.5, 1e-15, 0.0], 1) == 0.0  # one point above 1e-13
    assert empirical_rate([1e-15, 1e-16, 0.0], 2) == 0.0  # none


def test_selfplay_starts_from_init_when_given():
    from rspo.game import selfplay

    init = np.array([0.2, 0.3, 0.5])
    traj = selfplay(rps_game(), np.full(3, 1 / 3), None, 0.0, 1.0, 2, init=init)
    np.testing.assert_array_equal(traj[0], init)
    with pytest.raises(ValueError) as e:
        selfplay(rps_game(), np.full(3, 1 / 3), None, 0.0, 1.0, 2, init=[0.5, 0.5, 0.0])
    assert str(e.value) == "init must be finite and > 0: [0.5 0.5 0. ]"


@pytest.mark.parametrize("every", [1, 2])
def test_the_magnet_moves_to_the_current_policy_every_magnet_every_steps(every):
    # Hand-rolled steps: log π ← log π + η(Pπ − τ∇R(π; magnet)), normalized; the magnet is
    # ref until step `every`, then π_t at each t = every, 2·every, ... (never at t = 0).
    from scipy.special import logsumexp

    from rspo.game import selfplay

    P, ref, init = random_game(3, 1), np.full(3, 1 / 3), np.array([0.6, 0.3, 0.1])
    reg, tau, eta = get_regularizer("reverse_kl"), 0.5, 0.7
    traj = selfplay(P, ref, reg, tau, eta, 4, init=init, magnet_every=every)
    log_pi, magnet, want = np.log(init), ref, [init]
    for t in range(4):
        pi = np.exp(log_pi)
        if t > 0 and t % every == 0:
            magnet = pi
        log_pi = log_pi + eta * (P @ pi - tau * reg.grad_log(log_pi, magnet))
        log_pi -= logsumexp(log_pi)
        want.append(np.exp(log_pi))
    np.testing.assert_allclose(traj, want, rtol=1e-13)


@pytest.mark.parametrize("spec", ["forward_kl", "chi2", "reverse_kl"])
def test_best_response_computes_in_float64_whatever_the_payoff_dtype(spec):
    g = np.array([0.7, 0.2, 0.45], dtype=np.float32)
    reg, ref = get_regularizer(spec), np.array([0.2, 0.3, 0.5])
    s32, v32 = best_response(g, ref, reg, 0.1)
    s64, v64 = best_response(g.astype(np.float64), ref, reg, 0.1)
    assert s32.dtype == np.float64
    np.testing.assert_array_equal(s32, s64)
    assert v32 == v64


def test_best_response_without_regularization_is_the_pure_argmax():
    g, ref = np.array([0.2, 0.7, 0.4]), np.array([0.5, 0.25, 0.25])
    for reg, tau in ((None, 0.1), (get_regularizer("forward_kl"), 0.0)):
        sigma, v = best_response(g, ref, reg, tau)
        np.testing.assert_array_equal(sigma, [0.0, 1.0, 0.0])
        assert v == 0.7


def test_reverse_kl_best_response_is_the_closed_form_softmax():
    from scipy.special import logsumexp

    g, ref, tau = np.array([0.2, 0.7, 0.4]), np.array([0.5, 0.25, 0.25]), 0.05
    z = np.log(ref) + g / tau
    sigma, v = best_response(g, ref, get_regularizer("reverse_kl"), tau)
    np.testing.assert_array_equal(sigma, np.exp(z - logsumexp(z)))
    assert v == tau * logsumexp(z)


@pytest.mark.parametrize("spec", ["forward_kl", "chi2"])
def test_best_response_with_no_bracket_width_is_the_common_point(spec):
    # equal payoffs and a uniform ref: every action has the same multiplier, the answer is
    # uniform, with no root to find (6 actions: Σσ − 1 = −1.1e-16 there, no sign change)
    sigma, _ = best_response(np.full(6, 0.4), np.full(6, 1 / 6), get_regularizer(spec), 0.1)
    np.testing.assert_allclose(sigma, 1 / 6, rtol=1e-15)


def test_exploitability_at_tau_0_is_the_plain_duality_gap():
    # τ = 0 drops R(π) even where it is infinite (forward KL of a π with a zero entry)
    P, pi = random_game(4, 2), np.array([0.5, 0.3, 0.2, 0.0])
    want = 2 * (P @ pi).max() - 1  # best response value max_i (Pπ)_i, no R terms
    for reg in (None, "forward_kl", "chi2"):
        assert eq.exploitability(pi, P, np.full(4, 0.25), reg, 0.0) == pytest.approx(
            want, abs=1e-15
        )


def test_a_failed_first_newton_solve_is_named(monkeypatch):
    monkeypatch.setattr(eq, "_newton", lambda *a, **k: None)
    with pytest.raises(RuntimeError) as e:
        regularized_nash(rps_game(), np.full(3, 1 / 3), "reverse_kl", 0.1)
    assert str(e.value) == "Newton failed for reverse_kl[is] at tau=1.0"
    # solvable at τ_0 = 1 only: the homotopy's step factor grows to 1 and it gives up
    monkeypatch.setattr(eq, "_newton", lambda P, ref, reg, tau, u: u if tau == 1.0 else None)
    with pytest.raises(RuntimeError) as e:
        regularized_nash(rps_game(), np.full(3, 1 / 3), "reverse_kl", 0.1)
    assert str(e.value) == "Newton homotopy stalled for reverse_kl[is] at tau=1.0"


def test_distribution_check_refuses_non_finite_and_negative_entries():
    for bad, shown in (([float("nan"), 1.0], "[nan  1.]"), ([-0.1, 1.1], "[-0.1  1.1]")):
        with pytest.raises(ValueError) as e:
            validate_distribution(bad, 2)
        assert str(e.value) == f"policy must be finite and ≥ 0: {shown}"


def test_preference_matrix_check_messages_and_dtype():
    from rspo.game import validate_preference_matrix as check

    assert check(np.array([[0.5, 0.25], [0.75, 0.5]], dtype=np.float32)).dtype == np.float64
    np.testing.assert_array_equal(check([[0.5]]), [[0.5]])  # one action is a game
    cases = [
        (np.zeros((0, 0)), "preference matrix must be square n×n with n ≥ 1, got shape (0, 0)"),
        ([[0.5, float("inf")], [0.5, 0.5]], "preference matrix has non-finite entries"),
        # the first entry outside [0, 1] is named, not the first at its bound
        ([[0.5, 0.0], [1.2, 0.5]], "preference matrix entries must lie in [0, 1]; P[1,0] = 1.2"),
        ([[0.5, 1.0], [-0.2, 0.5]], "preference matrix entries must lie in [0, 1]; P[1,0] = -0.2"),
    ]
    for P, msg in cases:
        with pytest.raises(ValueError) as e:
            check(P)
        assert str(e.value) == msg


@pytest.mark.parametrize("solver", ["selfplay", "exploitability", "regularized_nash"])
def test_game_solvers_need_a_positive_reference(solver):
    from rspo.game import selfplay

    zero = np.array([0.5, 0.5, 0.0])
    call = {
        "selfplay": lambda: selfplay(rps_game(), zero, None, 0.0, 1.0, 3),
        "exploitability": lambda: eq.exploitability(
            np.full(3, 1 / 3), rps_game(), zero, "chi2", 0.1
        ),
        "regularized_nash": lambda: regularized_nash(rps_game(), zero, "chi2", 0.1),
    }[solver]
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == "ref must be finite and > 0: [0.5 0.5 0. ]"
