"""INPO pairwise square loss (Zhang et al., *Iterative Nash Policy Optimization*, arXiv 2407.00617).

The paper writes, with its own (η', τ') and Δ_π = log π(y_w) − log π(y_l),

    ( Δ_θ − (τ'/η')·Δ_ref − (1 − τ'/η')·Δ_t − 1/(2η') )².

rspo uses one step-size convention everywhere: η is the mirror step's step size (SPPO's
η, target η(p̂ − ½)) and τ the reverse-KL strength of the game, so η' = 1/η and τ' = τ:

    ( Δ_θ − ητ·Δ_ref − (1 − ητ)·Δ_t − η/2 )².

Its minimizer is the reverse-KL mirror step π ∝ π_t^{1−ητ} π_ref^{ητ} exp(η·P(·≻π_t))
measured on a (chosen, rejected) pair, with the hard preference ½ − (−½) = 1 as target.
"""

from __future__ import annotations

from torch import Tensor

from .reduce import reduce


def inpo_loss(
    logp_theta_w: Tensor,
    logp_theta_l: Tensor,
    logp_t_w: Tensor,
    logp_t_l: Tensor,
    logp_ref_w: Tensor,
    logp_ref_l: Tensor,
    eta: float,
    tau: float,
    reduction: str = "mean",
) -> Tensor:
    """INPO loss per pair, (Δ_θ − ητΔ_ref − (1−ητ)Δ_t − η/2)², in rspo's (η, τ) convention."""
    mix = eta * tau
    d_theta = logp_theta_w - logp_theta_l
    d_ref = logp_ref_w - logp_ref_l
    d_t = logp_t_w - logp_t_l
    err = d_theta - mix * d_ref - (1.0 - mix) * d_t - 0.5 * eta
    return reduce(err.square(), reduction)
