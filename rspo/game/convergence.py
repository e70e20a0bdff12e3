"""Measure last-iterate convergence of tabular self-play (the table in docs/game.md).

Two numbers per setting: the empirical per-iteration contraction of the L1 distance to the
exact equilibrium, and the spectral radius of the linearized update at the equilibrium
(in log coordinates, exact for interior equilibria): < 1 means local linear convergence
at that rate, > 1 means the equilibrium repels the dynamics.
"""

from __future__ import annotations

import math

import numpy as np

from rspo.objectives import Regularizer

from .dynamics import selfplay
from .equilibrium import regularized_nash, resolve_regularizer


def linearized_radius(
    P: np.ndarray,
    ref: np.ndarray,
    regularizer: str | Regularizer,
    tau: float,
    eta: float,
    pi_star: np.ndarray | None = None,
) -> float:
    """Spectral radius of the Jacobian of u ↦ normalize(u + η(Pe^u − τφ'(e^u))) at log π*.

    Only meaningful for interior equilibria (returns nan if min π* < 1e-12).
    """
    reg = resolve_regularizer(regularizer, tau)
    if pi_star is None:
        pi_star = regularized_nash(P, ref, reg, tau)
    if pi_star.min() < 1e-12:
        return float("nan")
    u = np.log(pi_star)
    pi = pi_star
    # d/du of  u + η(P e^u − τ φ'(e^u)),  then the normalization u ↦ u − lse(u)
    inner = np.eye(len(u)) + eta * (P * pi[None, :] - tau * np.diag(reg.hess_log(u, ref)))
    proj = np.eye(len(u)) - np.ones((len(u), 1)) * pi[None, :]
    jac = proj @ inner
    return float(np.max(np.abs(np.linalg.eigvals(jac))))


def empirical_rate(distances: np.ndarray, window: int) -> float:
    """Per-iteration geometric rate exp(Δ log d / window) over the last ``window`` steps."""
    d = np.asarray(distances, float)
    a, b = d[-window - 1], d[-1]
    if b <= 1e-14 or a <= 1e-14:  # converged to round-off before the window ended
        hit = np.flatnonzero(d > 1e-13)
        if len(hit) < 2:
            return 0.0
        last = hit[-1]
        first = max(0, last - window)
        if d[first] <= 0 or last == first:
            return 0.0
        return float(math.exp((math.log(d[last]) - math.log(d[first])) / (last - first)))
    return float(math.exp((math.log(b) - math.log(a)) / window))


def measure(
    P: np.ndarray,
    ref: np.ndarray,
    regularizer: str | Regularizer,
    tau: float,
    eta: float,
    iters: int,
) -> dict:
    """Self-play from ref: final L1 distance, ``converging`` (final < 1e-9 or the max distance
    over the last quarter < ½ that over the quarter before), empirical and linearized rates.
    """
    reg = resolve_regularizer(regularizer, tau)
    pi_star = regularized_nash(P, ref, reg, tau)
    traj = selfplay(P, ref, reg, tau, eta, iters)
    dist = np.abs(traj - pi_star).sum(axis=1)
    window = max(1, iters // 4)
    late, before = dist[-window:].max(), dist[-2 * window : -window].max()
    return {
        "final_distance": float(dist[-1]),
        "converging": bool(dist[-1] < 1e-9 or late < 0.5 * before),
        "max_late_distance": float(late),
        "empirical_rate": empirical_rate(dist, window),
        "linearized_radius": linearized_radius(P, ref, reg, tau, eta, pi_star),
        "min_pi_star": float(pi_star.min()),
    }


def critical_eta(
    P: np.ndarray,
    ref: np.ndarray,
    regularizer: str | Regularizer,
    tau: float,
    lo: float = 1e-4,
    hi: float = 1e3,
) -> float:
    """Largest η with linearized radius < 1 (bisection in log η; nan for boundary equilibria).

    Assumes the stable set is an interval (0, η_crit), which holds in every case measured.
    """
    reg = resolve_regularizer(regularizer, tau)
    pi_star = regularized_nash(P, ref, reg, tau)
    if pi_star.min() < 1e-12:
        return float("nan")

    def stable(eta: float) -> bool:
        return linearized_radius(P, ref, reg, tau, eta, pi_star) < 1.0

    if not stable(lo):
        return float(lo)
    if stable(hi):
        return float(hi)
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return float(lo)


TABLE_GAMES = 5  # random 5×5 games with seeds 0..4, plus RPS(3); all with make_ref(n, seed)


def convergence_table(
    regularizers: tuple[str, ...] = ("reverse_kl", "forward_kl", "chi2", "forward_kl + reverse_kl"),
    taus: tuple[float, ...] = (0.02, 0.1, 0.5),
    etas: tuple[float, ...] = (0.1, 1.0, 5.0),
    iters: int = 4000,
) -> str:
    """The markdown table of docs/game.md (about a minute on 2 cores)."""
    from .games import random_game, rps_game
    from .run import make_ref

    games = [(random_game(5, s), make_ref(5, s)) for s in range(TABLE_GAMES)]
    games.append((rps_game(), make_ref(3, 0)))
    k = len(games)
    head = "| R | τ | " + " | ".join(f"η = {e:g}" for e in etas) + " | η_crit (linearized) |"
    lines = [head, "|" + "---|" * (len(etas) + 3)]
    for reg in regularizers:
        for tau in taus:
            cells = []
            for eta in etas:
                conv, rates, over = 0, [], 0
                for P, ref in games:
                    try:
                        m = measure(P, ref, reg, tau, eta, iters)
                    except FloatingPointError:
                        over += 1
                        continue
                    conv += m["converging"]
                    if m["converging"]:
                        rates.append(m["empirical_rate"])
                cell = f"{conv}/{k}"
                if rates:
                    cell += f", ρ {min(rates):.3f}–{max(rates):.3f}"
                if over:
                    cell += f", {over} overflow"
                cells.append(cell)
            crit = np.array([critical_eta(P, ref, reg, tau) for P, ref in games])
            nb = int(np.isnan(crit).sum())
            c = f"{np.nanmin(crit):.2g}–{np.nanmax(crit):.2g}" if nb < k else "n/a"
            if nb:
                c += f" ({nb} boundary eq.)"
            lines.append(f"| {reg} | {tau:g} | " + " | ".join(cells) + f" | {c} |")
    return "\n".join(lines)
