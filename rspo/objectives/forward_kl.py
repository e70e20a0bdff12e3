"""Forward KL, KL(π_ref ‖ π_θ) = E_{y~π_ref}[log π_ref(y) − log π_θ(y)].

φ(π) = r log(r/π), φ'(π) = −r/π, φ''(π) = r/π².

========= ============================ ========== =============== ================= ==========
estimator samples / per-sample term    weights    value unbiased  gradient unbiased  needs π_ref
========= ============================ ========== =============== ================= ==========
is        π_t: ρ·(ℓ_ref − ℓ_θ)         ρ=π_ref/π_t all θ          all θ              no
nll       π_ref: ℓ_ref − ℓ_θ (NLL)     none       all θ           all θ              yes
ratio     π_t: min(π_ref/π_θ, e^clip)  none       never (=1 at θ_t) at θ_t           no
========= ============================ ========== =============== ================= ==========

``is`` is the default: unbiased for every θ (ρ does not depend on θ) and needs no
π_ref samples. ``ratio`` is the authors' "IS forward KL": at θ_t,
E_{π_t}[∇(π_ref/π_θ)] = −Σ π_ref ∇ℓ_θ = ∇KL(π_ref‖π_θ); its value is ≈ 1, not the KL.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .batch import SampleBatch
from .registry import register_regularizer
from .regularizer import EstimatorInfo, Regularizer, f64


@register_regularizer
class ForwardKL(Regularizer):
    """Forward KL(π_ref‖π): mass-covering; not strongly convex relative to entropy."""

    name = "forward_kl"
    default_estimator = "is"
    barrier = True
    estimators = {
        "is": EstimatorInfo(
            "is", "pi_t", "ρ = π_ref/π_t = exp(min(ℓ_ref − ℓ_t, log_clip)), constant",
            "all", "all", 1.0,
            "importance-weighted NLL ρ·(ℓ_ref − ℓ_θ) on π_t samples; no π_ref samples",
        ),
        "nll": EstimatorInfo(
            "nll", "pi_ref", "none", "all", "all", 1.0,
            "negative log-likelihood of π_θ on π_ref samples (plus the constant ℓ_ref)",
        ),
        "ratio": EstimatorInfo(
            "ratio", "pi_t", "none (the ratio itself, clipped at e^log_clip)",
            "never", "at_theta_t", 1.0,
            "authors' min(π_ref/π_θ, e^R); value ≈ 1 at θ_t, gradient ∇KL(π_ref‖π) at θ_t",
        ),
    }  # fmt: skip

    def phi(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """r log(r/π) (+inf where π = 0 < r)."""
        pi, ref = f64(pi, ref)
        with np.errstate(divide="ignore"):
            return ref * (np.log(ref) - np.log(pi))

    def grad(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """−r/π."""
        pi, ref = f64(pi, ref)
        with np.errstate(divide="ignore"):
            return -ref / pi

    def hess(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """r/π²."""
        pi, ref = f64(pi, ref)
        with np.errstate(divide="ignore"):
            return ref / np.square(pi)

    def grad_sup(self, ref: np.ndarray) -> np.ndarray:
        """φ' → 0⁻ as π → ∞."""
        return np.zeros_like(np.asarray(ref, float))

    def grad_inv(self, y: np.ndarray, ref: np.ndarray, upper: float = np.inf) -> np.ndarray:
        """σ = −r/y for y < 0 (``upper`` for y ≥ 0), clipped at ``upper``."""
        y, ref = f64(y, ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(y < 0, -ref / np.where(y < 0, y, -1.0), upper)
        return np.minimum(out, upper)

    def _est_is(self, b: SampleBatch) -> Tensor:
        rho = self._clip(b.logp_ref - b.logp_t).exp().detach()
        return rho * (b.logp_ref - b.logp_theta)

    def _est_nll(self, b: SampleBatch) -> Tensor:
        return b.ref_logp_ref - b.ref_logp_theta

    def _est_ratio(self, b: SampleBatch) -> Tensor:
        return self._clip(b.logp_ref - b.logp_theta).exp()
