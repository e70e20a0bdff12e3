"""SPPO self-play square losses (Wu et al., arXiv 2405.00675) and TRL's ``sppo_hard``.

Three forms, all regressing the log-ratio ℓ_θ − ℓ_t = log π_θ(y) − log π_t(y) onto the
mirror-step target η(p̂ − ½) (SPPO replaces the log-normalizer by η/2):

* :func:`sppo_loss` — per sample: e² with e = ℓ_θ − ℓ_t − η(p̂ − ½).
* :func:`sppo_pair_loss` — the official SPPO code: per (chosen, rejected) pair, each with
  its own win rate, (e_w² + e_l²)/2.  Averaged over pairs this is *exactly*
  :func:`sppo_loss` averaged over the 2B chosen/rejected rows (the best/worst subset of
  the K samples; the trainer does that selection).
* :func:`sppo_hard_loss` — TRL's ``sppo_hard`` with β = 1/η:
  (ℓ_w − η/2)² + (ℓ_l + η/2)², i.e. the pair form with hard win rates p̂_w = 1, p̂_l = 0
  and *summed* instead of averaged: sppo_hard = 2 × sppo_pair_loss(p̂_w=1, p̂_l=0).
"""

from __future__ import annotations

from torch import Tensor

from .reduce import reduce


def sppo_loss(
    logp_theta: Tensor, logp_t: Tensor, win_rate: Tensor, eta: float, reduction: str = "mean"
) -> Tensor:
    """SPPO square loss (ℓ_θ − ℓ_t − η(p̂ − ½))² per sample y ~ π_t, reduced by ``reduction``."""
    err = logp_theta - logp_t - eta * (win_rate - 0.5)
    return reduce(err.square(), reduction)


def sppo_pair_loss(
    logp_theta_w: Tensor,
    logp_theta_l: Tensor,
    logp_t_w: Tensor,
    logp_t_l: Tensor,
    win_rate_w: Tensor,
    win_rate_l: Tensor,
    eta: float,
    reduction: str = "mean",
) -> Tensor:
    """Official SPPO pair loss (e_w² + e_l²)/2 per pair; its mean equals the row-mean sppo_loss."""
    lw = sppo_loss(logp_theta_w, logp_t_w, win_rate_w, eta, reduction="none")
    ll = sppo_loss(logp_theta_l, logp_t_l, win_rate_l, eta, reduction="none")
    return reduce(0.5 * (lw + ll), reduction)


def sppo_hard_loss(
    logp_theta_w: Tensor,
    logp_theta_l: Tensor,
    logp_t_w: Tensor,
    logp_t_l: Tensor,
    eta: float,
    reduction: str = "mean",
) -> Tensor:
    """TRL ``sppo_hard`` per pair, (ℓ_w − η/2)² + (ℓ_l + η/2)² with β = 1/η and ℓ = log π_θ/π_t."""
    a = logp_theta_w - logp_t_w
    b = logp_theta_l - logp_t_l
    return reduce((a - 0.5 * eta).square() + (b + 0.5 * eta).square(), reduction)
