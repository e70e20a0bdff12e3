"""Exact equilibria and duality gaps of the regularized preference game.

Game: max_π min_π' πᵀPπ' − τR(π) + τR(π'), with P + Pᵀ = 1 and R separable convex. The
symmetric equilibrium π* solves the KKT system Pπ − τ∇R(π) = c·1 on supp(π*), ≤ c off it,
Σπ = 1. Since Pᵀπ = 1 − Pπ, player 2's conditions are the same, and the duality gap of a
symmetric profile (π, π) is

    gap(π) = 2·max_{σ∈Δ}[σᵀPπ − τR(σ)] + 2τR(π) − 1   (≥ 0, = 0 exactly at π*),

which for reverse KL is 2τ log Σ_i ref_i e^{(Pπ)_i/τ} + 2τ KL(π‖ref) − 1 (method.md §1).
The solvers here (Newton on the KKT system, an active set when R allows zero mass, an LP
for τ = 0) are independent of the self-play dynamics they are used to check.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq, linprog
from scipy.special import logsumexp

from rspo.objectives import Regularizer, ReverseKL, get_regularizer

from .games import validate_distribution, validate_preference_matrix


def resolve_regularizer(regularizer: str | Regularizer | None, tau: float) -> Regularizer | None:
    """Check τ ≥ 0 and turn a spec into a Regularizer (None allowed only when τ = 0)."""
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a finite float >= 0, got {tau!r}")
    reg = get_regularizer(regularizer)
    if tau > 0 and reg is None:
        raise ValueError(f"tau = {tau} > 0 needs a regularizer")
    return reg


def best_response(
    g: np.ndarray, ref: np.ndarray, regularizer: Regularizer | None, tau: float
) -> tuple[np.ndarray, float]:
    """argmax and max over σ ∈ Δ of σᵀg − τR(σ) (a separable concave problem).

    KKT: g_i − τφ'(σ_i) = c on the support; σ_i(c) = (φ')⁻¹((g_i − c)/τ) is decreasing in
    c, so the multiplier c is a 1-D root of Σσ_i(c) = 1 (closed form for reverse KL).
    """
    g = np.asarray(g, float)
    n = g.shape[0]
    if tau == 0 or regularizer is None:
        i = int(np.argmax(g))
        sigma = np.zeros(n)
        sigma[i] = 1.0
        return sigma, float(g[i])
    if type(regularizer) is ReverseKL:
        z = np.log(ref) + g / tau
        lse = logsumexp(z)
        return np.exp(z - lse), float(tau * lse)

    # Solve for c relative to max g: near a tiny ref_i the root sits within ulps of g_i
    # (σ_i = ref_i·τ/(c − g_i) for forward KL), which c − g_i cannot resolve at g_i's scale.
    d = g - g.max()
    base = d - tau * regularizer.grad(np.full(n, 1.0 / n), ref)
    c_lo, c_hi = float(base.min()), float(base.max())

    def excess(c: float) -> float:
        return float(regularizer.grad_inv((d - c) / tau, ref, upper=2.0).sum() - 1.0)

    if c_hi - c_lo > 0:
        # xtol as small as floats go: a root near 0 needs relative, not absolute, precision
        c = brentq(excess, c_lo, c_hi, xtol=np.finfo(float).tiny, rtol=4 * np.finfo(float).eps,
                   maxiter=500)  # fmt: skip
    else:
        c = c_lo
    sigma = regularizer.grad_inv((d - c) / tau, ref)
    sigma = sigma / sigma.sum()
    return sigma, float(sigma @ g - tau * regularizer.value(sigma, ref))


def exploitability(
    pi: np.ndarray,
    P: np.ndarray,
    ref: np.ndarray,
    regularizer: str | Regularizer | None,
    tau: float,
) -> float:
    """Duality gap 2·max_σ[σᵀPπ − τR(σ)] + 2τR(π) − 1 of the symmetric profile (π, π)."""
    P = validate_preference_matrix(P)
    n = P.shape[0]
    pi = validate_distribution(pi, n, "pi")
    ref = validate_distribution(ref, n, "ref", positive=True)
    reg = resolve_regularizer(regularizer, tau)
    _, v = best_response(P @ pi, ref, reg, tau)
    r_pi = reg.value(pi, ref) if (reg is not None and tau > 0) else 0.0
    return float(2.0 * v + 2.0 * tau * r_pi - 1.0)


def regularized_nash(
    P: np.ndarray, ref: np.ndarray, regularizer: str | Regularizer | None, tau: float
) -> np.ndarray:
    """Exact symmetric equilibrium of the τ-regularized game (to ~1e-12; LP winner if τ = 0).

    Barrier regularizers (reverse/forward KL and mixtures containing them): damped Newton on
    the KKT system with a homotopy in τ. Others (χ²): active-set Newton (exact for χ²,
    whose equilibrium may put zero mass on some actions). τ = 0: linprog + support polish.
    """
    P = validate_preference_matrix(P)
    n = P.shape[0]
    ref = validate_distribution(ref, n, "ref", positive=True)
    reg = resolve_regularizer(regularizer, tau)
    if tau == 0:
        return _lp_nash(P)
    if reg.barrier:
        return _homotopy_newton(P, ref, reg, float(tau))
    return _active_set(P, ref, reg, float(tau))


# --------------------------------------------------------------------------- τ = 0
def _lp_nash(P: np.ndarray) -> np.ndarray:
    """von Neumann winner: max v s.t. (Pᵀπ)_j ≥ v ∀j, π ∈ Δ (value ½), polished on its support."""
    n = P.shape[0]
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-P.T, np.ones((n, 1))])
    a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    res = linprog(
        c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)], method="highs",
    )  # fmt: skip
    if not res.success:
        raise RuntimeError(f"linprog failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    pi /= pi.sum()
    support = pi > 1e-9
    a = np.vstack([P[np.ix_(support, support)], np.ones((1, support.sum()))])
    b = np.concatenate([np.full(support.sum(), 0.5), [1.0]])
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cand = np.zeros(n)
    cand[support] = sol
    if cand.min() >= 0 and np.abs(a @ sol - b).max() < 1e-12 and (P @ cand).max() <= 0.5 + 1e-12:
        return cand / cand.sum()
    return pi


# --------------------------------------------------------------------------- barrier: Newton
def _kkt_residual_log(P, ref, reg, tau, u, c):
    return np.concatenate([P @ np.exp(u) - tau * reg.grad_log(u, ref) - c, [np.exp(u).sum() - 1]])


def _newton(P, ref, reg, tau, u, max_iter=200):
    """Damped Newton on F(u, c) = [Pπ − τφ'(π) − c; Σπ − 1] in u = log π; None on failure.

    Log coordinates keep π > 0 and stay well conditioned (and representable via
    ``grad_log``) when reverse-KL equilibria put e^{−Δ/τ}-small mass on bad actions.
    Returns log π.
    """
    n = P.shape[0]
    u = u - logsumexp(u)
    c = float(np.mean(P @ np.exp(u) - tau * reg.grad_log(u, ref)))
    f = _kkt_residual_log(P, ref, reg, tau, u, c)
    norm = np.abs(f).max()
    ones = np.ones((n, 1))
    for _ in range(max_iter):
        pi = np.exp(u)
        jac = np.block(
            [
                [P * pi[None, :] - tau * np.diag(reg.hess_log(u, ref)), -ones],
                [pi[None, :], np.zeros((1, 1))],
            ]
        )
        try:
            step = np.linalg.solve(jac, -f)
        except np.linalg.LinAlgError:
            return None
        du, dc = step[:n], step[n]
        alpha = min(1.0, 2.0 / max(np.abs(du).max(), 1e-300))  # at most e^2 change per step
        while alpha > 1e-14:
            new_u, new_c = u + alpha * du, c + alpha * dc
            new_f = _kkt_residual_log(P, ref, reg, tau, new_u, new_c)
            new_norm = np.abs(new_f).max()
            if new_norm <= (1 - 1e-4 * alpha) * norm or new_norm < 1e-15:
                break
            alpha *= 0.5
        else:
            break
        done = alpha == 1.0 and np.abs(du).max() < 1e-14
        u, c, f, norm = new_u, new_c, new_f, new_norm
        if done or norm < 1e-16:
            break
    if not np.isfinite(norm) or norm > 1e-11:
        return None
    return u - logsumexp(u)


def _homotopy_newton(P, ref, reg, tau):
    """Follow the equilibrium path from τ_0 = max(τ, 1) (near ref) down to τ."""
    cur_tau = max(tau, 1.0)
    u = _newton(P, ref, reg, cur_tau, np.log(ref))
    if u is None:
        raise RuntimeError(f"Newton failed for {reg.spec} at tau={cur_tau}")
    factor = 0.25
    while cur_tau > tau:
        nxt = max(tau, cur_tau * factor)
        cand = _newton(P, ref, reg, nxt, u)
        if cand is None:
            factor = math.sqrt(factor)
            if factor > 0.999:
                raise RuntimeError(f"Newton homotopy stalled for {reg.spec} at tau={cur_tau}")
            continue
        u, cur_tau = cand, nxt
    pi = np.exp(u)
    return pi / pi.sum()


# --------------------------------------------------------------------------- χ²: active set
def _solve_on_support(P, ref, reg, tau, support, pi0):
    """Newton on the KKT equalities restricted to ``support`` (π = 0 elsewhere)."""
    pi = np.where(support, pi0, 0.0)
    if pi.sum() <= 0:
        pi = np.where(support, 1.0 / support.sum(), 0.0)
    k = int(support.sum())
    ps = P[np.ix_(support, support)]
    c = 0.0
    for _ in range(100):
        f = np.concatenate(
            [P[support] @ pi - tau * reg.grad(pi[support], ref[support]) - c, [pi.sum() - 1]]
        )
        jac = np.block(
            [
                [ps - tau * np.diag(reg.hess(pi[support], ref[support])), -np.ones((k, 1))],
                [np.ones((1, k)), np.zeros((1, 1))],
            ]
        )
        step = np.linalg.solve(jac, -f)
        pi[support] += step[:k]
        c += step[k]
        if np.abs(step).max() < 1e-15:
            break
    return pi, c


def _kkt_ok(P, ref, reg, tau, pi, c, support, tol=1e-12):
    if pi[support].min() < -tol:
        return False
    off = ~support
    if off.any():
        slack = P[off] @ pi - tau * reg.grad_at_zero(ref[off]) - c
        if slack.max() > tol:
            return False
    return True


def _active_set(P, ref, reg, tau):
    """Principal-pivoting active set on the (monotone) KKT complementarity system."""
    n = P.shape[0]
    support = np.ones(n, dtype=bool)
    pi = ref.copy()
    seen = set()
    for _ in range(4 * n + 20):
        key = support.tobytes()
        if key in seen:
            break
        seen.add(key)
        pi, c = _solve_on_support(P, ref, reg, tau, support, pi)
        if pi[support].min() < -1e-13:
            support[np.flatnonzero(support)[np.argmin(pi[support])]] = False
            continue
        off = ~support
        if off.any():
            slack = np.full(n, -np.inf)
            slack[off] = P[off] @ pi - tau * reg.grad_at_zero(ref[off]) - c
            if slack.max() > 1e-13:
                support[int(np.argmax(slack))] = True
                continue
        return _finish(pi)
    if n > 16:
        raise RuntimeError(f"active-set solver cycled for {reg.spec} (n={n})")
    for size in range(n, 0, -1):  # exhaustive fallback for small n
        for mask in range(1 << n):
            if bin(mask).count("1") != size:
                continue
            sup = np.array([(mask >> i) & 1 == 1 for i in range(n)])
            cand, c = _solve_on_support(P, ref, reg, tau, sup, ref)
            if _kkt_ok(P, ref, reg, tau, cand, c, sup):
                return _finish(cand)
    raise RuntimeError(f"no KKT point found for {reg.spec}")


def _finish(pi):
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()
