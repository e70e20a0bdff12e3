"""Exact expected tabular self-play: the regularized mirror-descent step of method.md §2.

π_{t+1} ∝ π_t·exp(η(Pπ_t − τ∇R(π_t))); τ = 0 is SPPO's multiplicative weights
(time average converges, last iterate may cycle); ``magnet_every`` = m is MPO (ref := π_t
every m steps). Iterates are kept in log space so they never underflow to exactly 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from rspo.objectives import Regularizer

from .equilibrium import resolve_regularizer
from .games import validate_distribution, validate_preference_matrix


def selfplay(
    P: np.ndarray,
    ref: np.ndarray,
    regularizer: str | Regularizer | None,
    tau: float,
    eta: float,
    iters: int,
    init: np.ndarray | None = None,
    magnet_every: int | None = None,
) -> np.ndarray:
    """Trajectory [iters+1, n] of π_{t+1} ∝ π_t·exp(η(Pπ_t − τ∇R(π_t))), π_0 = init or ref.

    Raises FloatingPointError if the iterates overflow (η too large for the regularizer).
    """
    P = validate_preference_matrix(P)
    n = P.shape[0]
    ref = validate_distribution(ref, n, "ref", positive=True)
    reg = resolve_regularizer(regularizer, tau)
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite float > 0, got {eta!r}")
    if int(iters) != iters or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    if magnet_every is not None and (int(magnet_every) != magnet_every or magnet_every < 1):
        raise ValueError(f"magnet_every must be a positive integer or None, got {magnet_every!r}")
    pi = ref.copy() if init is None else validate_distribution(init, n, "init", positive=True)
    log_pi = np.log(pi)
    magnet = ref.copy()
    traj = np.empty((int(iters) + 1, n))
    traj[0] = pi
    for t in range(int(iters)):
        if magnet_every is not None and t > 0 and t % magnet_every == 0:
            magnet = pi.copy()
        g = P @ pi
        if tau > 0:
            g = g - tau * reg.grad_log(log_pi, magnet)
        with np.errstate(over="ignore", invalid="ignore"):
            log_pi = log_pi + eta * g
            log_pi = log_pi - logsumexp(log_pi)
        if not np.all(np.isfinite(log_pi)):
            raise FloatingPointError(
                f"self-play diverged at iteration {t + 1} (eta={eta}, tau={tau}); "
                "the step size is too large for this regularizer/game"
            )
        pi = np.exp(log_pi)
        traj[t + 1] = pi
    return traj


def time_average(traj: np.ndarray) -> np.ndarray:
    """Running averages (1/(t+1))·Σ_{s≤t} π_s of a trajectory, same shape [T, n]."""
    traj = np.asarray(traj, float)
    return np.cumsum(traj, axis=0) / np.arange(1, traj.shape[0] + 1)[:, None]
