"""Win-rate estimation P̂(y_k ≻ π_t | x) from a K×K preference matrix, and pair selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def win_rates(P: Sequence[Sequence[float]], include_self_match: bool = True) -> list[float]:
    """p̂_k = mean_j P[k, j]; with the self-match the diagonal counts as ½ (SPPO's code).

    Without it the mean runs over j ≠ k only. Both are estimates of P(y_k ≻ π_t); the
    self-match shrinks them toward ½ by a factor (K−1)/K.
    """
    M = np.asarray(P, dtype=np.float64)
    K = M.shape[0]
    if M.shape != (K, K) or K < 2:
        raise ValueError(f"preference matrix must be K×K with K >= 2, got shape {M.shape}")
    off = M.sum(axis=1) - np.diag(M)
    if include_self_match:
        return ((off + 0.5) / K).tolist()
    return (off / (K - 1)).tolist()


def best_worst(p_hat: Sequence[float]) -> tuple[int, int]:
    """Indices of the best and worst response by estimated win rate (first on ties; when all
    are tied, two distinct samples: pair losses skip such prompts, the square loss's target
    is 0 for both)."""
    arr = np.asarray(p_hat)
    best, worst = int(np.argmax(arr)), int(np.argmin(arr))
    if best == worst:  # all equal: keep two distinct samples
        worst = 1 if best == 0 else 0
    return best, worst
