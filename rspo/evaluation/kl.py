"""KL(π‖π_ref) of a policy from its own samples: the over-optimization axis (Gao et al. 2022).

With y ~ π (sequence level, log-probs summed over the response's tokens, EOS included),

    KL(π‖π_ref) = E_{y~π}[log π(y) − log π_ref(y)],

so the mean of the per-sample log-ratios d = log π(y) − log π_ref(y) is an unbiased
estimate in nats. It is unbiased only when the samples come from π itself: temperature 1,
no top-k / top-p truncation. A response cut at the length cap counts as the event "this
prefix", whose probability is the product of its tokens' probabilities, so the estimate is
the KL between the two policies' distributions over responses *as capped* (exact on that
space). Single log-ratios may be negative; their mean estimates a non-negative number.

The interval is a cluster bootstrap over prompts (the samples of one prompt are not
independent), resampled exactly as the win rate's. ``per_token`` is the same sequence KL
divided by the mean response length in tokens (a ratio of means, EOS counted), i.e. nats
per generated token; it is not the mean of per-token log-ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["KLEstimate", "cluster_mean_interval", "sequence_kl"]


@dataclass(frozen=True)
class KLEstimate:
    """Sequence KL (nats) with its 95% interval ``[lo, hi]``, KL per token, ``n`` prompts."""

    mean: float
    lo: float
    hi: float
    per_token: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict."""
        return asdict(self)


def cluster_mean_interval(
    values: Sequence[float] | np.ndarray, group_size: int = 1, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` (``group_size`` consecutive values per cluster) and the percentile
    bootstrap 95% interval of the mean, resampling whole clusters ``n_boot`` times (the
    resampling of :func:`rspo.evaluation.winrate.win_rate` given the cluster means)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no values given")
    if group_size < 1 or v.size % group_size:
        raise ValueError(f"{v.size} values do not split into groups of {group_size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf")
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    c = v.reshape(-1, group_size).mean(axis=1)
    mean = float(c.mean())
    if n_boot == 0:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // c.size)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, c.size, size=(stop - start, c.size))
        means[start:stop] = c[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return mean, float(min(lo, mean)), float(max(hi, mean))


def sequence_kl(
    logp_policy: Sequence[float] | np.ndarray,
    logp_ref: Sequence[float] | np.ndarray,
    lengths: Sequence[int] | np.ndarray,
    group_size: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
) -> KLEstimate:
    """KL(π‖π_ref) from samples y ~ π: mean of log π(y) − log π_ref(y) over all samples
    (``group_size`` per prompt, consecutive), its cluster-bootstrap 95% interval, and per
    token: that mean divided by the mean of ``lengths`` (response tokens, EOS counted)."""
    a = np.asarray(logp_policy, dtype=np.float64).ravel()
    b = np.asarray(logp_ref, dtype=np.float64).ravel()
    n = np.asarray(lengths, dtype=np.float64).ravel()
    if not (a.size == b.size == n.size):
        raise ValueError(f"mismatched lengths: {a.size} policy, {b.size} ref, {n.size} lengths")
    mean, lo, hi = cluster_mean_interval(a - b, group_size, n_boot, seed)
    tokens = float(n.mean())
    per_token = mean / tokens if tokens > 0 else float("nan")
    return KLEstimate(mean, lo, hi, per_token, a.size // group_size)
