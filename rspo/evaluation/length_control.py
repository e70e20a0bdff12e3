"""Length-controlled (LC) win rate in the manner of AlpacaEval 2.

AlpacaEval 2 (Dubois et al., 2024) debiases a judge's preference for longer answers by
fitting a logistic GLM and reporting its prediction with the length term switched off.
Here, per evaluation prompt i with preference p_i = P(policy ≻ baseline | x_i):

    logit P(policy ≻ baseline | x_i) = θ + φ · tanh(Δlen_i / scale),
    Δlen_i = len_policy_i − len_baseline_i,   scale = std(Δlen) by default,

fitted by maximum likelihood with soft labels, i.e. minimising the mean cross-entropy
−[p log q + (1−p) log(1−q)]; LC win rate = σ(θ). AlpacaEval's third term (an
instruction-difficulty effect γ_x estimated from a leaderboard of many models) is omitted:
with one policy and one baseline it is not identifiable. A tiny L2 penalty (l2/2)·φ² on the
length coefficient keeps the fit finite when preferences are perfectly separable by length;
θ is not penalised, so with no length variation LC equals the raw win rate. The degenerate
case where every preference is 1 (or every one is 0) has no finite θ: LC = raw there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rspo.evaluation.winrate import as_preferences

__all__ = ["LCResult", "fit_length_glm", "lc_win_rate"]


@dataclass(frozen=True)
class LCResult:
    """Result of the length-controlled GLM fit.

    ``lc_win_rate`` = σ(θ); ``raw`` = mean preference; ``scale`` the Δlen normaliser used;
    ``lo``/``hi`` a percentile-bootstrap 95% interval of the LC win rate (``None`` unless
    requested); ``converged``/``n_iter`` describe the Newton solve of the full-data fit.
    """

    lc_win_rate: float
    raw: float
    theta: float
    phi: float
    scale: float
    n: int
    converged: bool
    n_iter: int
    l2: float
    lo: float | None = None
    hi: float | None = None

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _objective(beta: np.ndarray, p: np.ndarray, f: np.ndarray, w: np.ndarray, l2: float):
    """Weighted mean soft cross-entropy plus (l2/2)·φ², batched over rows of ``beta``/``w``."""
    z = beta[:, :1] + beta[:, 1:] * f[None, :]
    ce = np.logaddexp(0.0, z) - p[None, :] * z
    return (w * ce).sum(axis=1) / w.sum(axis=1) + 0.5 * l2 * beta[:, 1] ** 2


def fit_length_glm(
    p: np.ndarray,
    f: np.ndarray,
    weights: np.ndarray | None = None,
    l2: float = 1e-5,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit (θ, φ) of logit q = θ + φ·f to soft labels ``p`` by damped Newton.

    ``weights`` is ``(B, n)`` (e.g. bootstrap counts); B fits run in one vectorised solve.
    Returns ``beta`` ``(B, 2)`` (θ = ±inf, φ = 0 for rows whose weighted preferences are all
    1 or all 0), a ``converged`` mask ``(B,)`` and the iterations used. The objective is
    strictly convex (its Hessian has determinant ≥ mean(w·σ(1−σ))·l2 > 0), so Newton with
    Armijo backtracking converges to the unique minimiser.
    """
    p = np.asarray(p, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    w = np.ones((1, p.size)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != p.size:
        raise ValueError("weights must have shape (B, n)")
    wsum = w.sum(axis=1)
    pbar = (w * p[None, :]).sum(axis=1) / wsum
    beta = np.zeros((w.shape[0], 2))
    live = (w * (p[None, :] < 1.0)).sum(axis=1) > 0
    live &= (w * (p[None, :] > 0.0)).sum(axis=1) > 0
    beta[~live, 0] = np.where(pbar[~live] >= 0.5, np.inf, -np.inf)
    converged = ~live
    pc = np.clip(pbar, 1e-6, 1 - 1e-6)
    beta[live, 0] = np.log(pc[live] / (1 - pc[live]))
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        act = live & ~converged
        if not act.any():
            n_iter -= 1
            break
        b, wa = beta[act], w[act]
        q = _sigmoid(b[:, :1] + b[:, 1:] * f[None, :])
        ws = wa / wa.sum(axis=1, keepdims=True)
        r = ws * (q - p[None, :])
        g = np.stack([r.sum(axis=1), (r * f).sum(axis=1) + l2 * b[:, 1]], axis=1)
        h = ws * q * (1 - q)
        h00, h01 = h.sum(axis=1), (h * f).sum(axis=1)
        h11 = (h * f * f).sum(axis=1) + l2
        det = h00 * h11 - h01 * h01
        step = np.stack([(h11 * g[:, 0] - h01 * g[:, 1]), (h00 * g[:, 1] - h01 * g[:, 0])], 1)
        step /= det[:, None]
        j0 = _objective(b, p, f, wa, l2)
        dec = (g * step).sum(axis=1)  # Newton decrement squared, >= 0
        t = np.ones(b.shape[0])
        new = b - step
        # Armijo, up to the objective's round-off: near the minimum a Newton step lowers it by
        # less than an ulp, and refusing such steps would stall the gradient above `tol`
        slack = 4 * np.finfo(float).eps * np.abs(j0)
        for _ in range(60):
            bad = _objective(new, p, f, wa, l2) > j0 - 1e-4 * t * dec + slack
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
            new = b - t[:, None] * step
        beta[act] = new
        converged[act] = np.abs(g).max(axis=1) < tol
    return beta, converged, n_iter


def _features(delta: np.ndarray, scale: float) -> np.ndarray:
    if scale <= 0 or not np.isfinite(scale):
        return np.zeros_like(delta)
    return np.tanh(delta / scale)


def lc_win_rate(
    probs: Sequence[float] | np.ndarray,
    len_policy: Sequence[float] | np.ndarray,
    len_baseline: Sequence[float] | np.ndarray,
    scale: float | None = None,
    l2: float = 1e-5,
    n_boot: int = 0,
    seed: int = 0,
) -> LCResult:
    """Length-controlled win rate σ(θ) of the GLM logit P = θ + φ·tanh(Δlen/scale).

    ``scale`` defaults to the population std of Δlen over the eval set (AlpacaEval's
    choice); when it is 0 (all Δlen equal) the length term is dropped and LC = raw. Lengths
    may be tokens or characters: the tanh argument is unit-free. With ``n_boot > 0``, prompts
    are resampled (seeded) and refitted with the same scale to give a 95% percentile
    interval ``lo``/``hi`` of the LC win rate.
    """
    p = as_preferences(probs)
    lp = np.asarray(len_policy, dtype=np.float64).ravel()
    lb = np.asarray(len_baseline, dtype=np.float64).ravel()
    if not (lp.size == lb.size == p.size):
        raise ValueError(f"length mismatch: {p.size} probs, {lp.size} / {lb.size} lengths")
    if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(lb))):
        raise ValueError("lengths contain NaN or inf")
    delta = lp - lb
    if scale is None:
        scale = float(delta.std())
    elif scale < 0:
        raise ValueError("scale must be >= 0")
    f = _features(delta, float(scale))
    beta, conv, n_iter = fit_length_glm(p, f, l2=l2)
    theta, phi = float(beta[0, 0]), float(beta[0, 1])
    lc = float(_sigmoid(np.array(theta))) if np.isfinite(theta) else float(p.mean())
    lo = hi = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(p.size, np.full(p.size, 1.0 / p.size), size=n_boot)
        bb, _, _ = fit_length_glm(p, f, weights=counts.astype(np.float64), l2=l2)
        lcs = _sigmoid(bb[:, 0])  # σ(±inf) = 1 / 0, matching LC = raw for degenerate rows
        lo, hi = (float(v) for v in np.percentile(lcs, [2.5, 97.5]))
    return LCResult(
        lc_win_rate=lc,
        raw=float(p.mean()),
        theta=theta,
        phi=phi,
        scale=float(scale),
        n=int(p.size),
        converged=bool(conv[0]),
        n_iter=int(n_iter),
        l2=float(l2),
        lo=lo,
        hi=hi,
    )
