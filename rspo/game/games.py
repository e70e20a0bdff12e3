"""Preference matrices P[i, j] = P(i ≻ j) with P + Pᵀ = 1 (diagonal ½)."""

from __future__ import annotations

import numpy as np

GAMES = ("random", "rps", "bt")
_ALIASES = {"bradley_terry": "bt", "cyclic": "rps"}


def validate_preference_matrix(P: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Return P as float64 after checking: square 2-D, finite, in [0, 1], P + Pᵀ = 1."""
    P = np.asarray(P, dtype=float)
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"preference matrix must be square n×n with n ≥ 1, got shape {P.shape}")
    if not np.all(np.isfinite(P)):
        raise ValueError("preference matrix has non-finite entries")
    if P.min() < 0 or P.max() > 1:
        i, j = np.unravel_index(np.argmax((P < 0) | (P > 1)), P.shape)
        raise ValueError(f"preference matrix entries must lie in [0, 1]; P[{i},{j}] = {P[i, j]}")
    dev = np.abs(P + P.T - 1.0)
    if dev.max() > atol:
        i, j = np.unravel_index(np.argmax(dev), P.shape)
        raise ValueError(
            f"preference matrix must satisfy P + Pᵀ = 1; P[{i},{j}] + P[{j},{i}] = "
            f"{float(P[i, j] + P[j, i])!r}"
        )
    return P


def validate_distribution(p: np.ndarray, n: int, name: str = "policy", positive: bool = False):
    """Return p as float64 after checking shape (n,), p ≥ 0 (> 0 if ``positive``), Σp = 1."""
    p = np.asarray(p, dtype=float)
    if p.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or (positive and p.min() <= 0):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '≥ 0'}: {p}")
    if abs(p.sum() - 1.0) > 1e-9:
        raise ValueError(f"{name} must sum to 1, sums to {p.sum()!r}")
    return p


def random_game(n: int, seed: int) -> np.ndarray:
    """A general (non-transitive) game: P = ½ + S, S skew with entries uniform in (−½, ½)."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.5, 0.5, size=(n, n))
    return 0.5 + np.triu(a, 1) - np.triu(a, 1).T


def rps_game(n: int = 3, strength: float = 1.0) -> np.ndarray:
    """Cyclic rock-paper-scissors on n actions: i beats i+k (mod n) for k = 1..⌈n/2⌉−1.

    P(i ≻ j) = ½ ± strength/2. The uniform policy is an equilibrium; for odd n it is the
    unique one, for even n (ties at distance n/2) it is not unique.
    """
    _check_n(n)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    P = np.full((n, n), 0.5)
    for i in range(n):
        for k in range(1, (n + 1) // 2):
            j = (i + k) % n
            P[i, j] = 0.5 + strength / 2
            P[j, i] = 0.5 - strength / 2
    return P


def bt_game(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Transitive Bradley–Terry game P(i ≻ j) = σ(s_i − s_j), s ~ N(0, scale²)."""
    _check_n(n)
    s = np.random.default_rng(seed).normal(0.0, scale, size=n)
    return 1.0 / (1.0 + np.exp(-(s[:, None] - s[None, :])))


def make_game(name: str, n: int, seed: int) -> np.ndarray:
    """Build game ``name`` in {random, rps, bt} with n actions (rps ignores seed)."""
    key = _ALIASES.get(name, name)
    if key == "random":
        return random_game(n, seed)
    if key == "rps":
        return rps_game(n)
    if key == "bt":
        return bt_game(n, seed)
    raise ValueError(f"unknown game {name!r}; valid: {', '.join(GAMES)}")


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of actions n must be a positive integer, got {n!r}")
