"""χ² divergence, χ²(π_θ ‖ π_ref) = E_{y~π_ref}[(π_θ/π_ref − 1)²] = Σ π²/π_ref − 1.

φ(π) = (π − r)²/r, φ'(π) = 2(π/r − 1) (finite at 0, so equilibria can sit on the
simplex boundary), φ''(π) = 2/r.

========= ================================ ============= =====================================
estimator per-sample term on y ~ π_t       value         gradient
========= ================================ ============= =====================================
is        (π_θ/π_t)(π_θ/π_ref) − 1         unbiased ∀θ   unbiased ∀θ
ratio     min(π_θ/π_ref, e^clip) (authors) χ²+1 at θ_t   ½∇χ² at θ_t (authors' coefficient)
========= ================================ ============= =====================================

The log of the ``is`` term (+1), 2ℓ_θ − ℓ_t − ℓ_ref, is clipped at ``log_clip``.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .batch import SampleBatch
from .registry import register_regularizer
from .regularizer import EstimatorInfo, Regularizer, f64


@register_regularizer
class Chi2(Regularizer):
    """Pearson χ²(π‖π_ref): strongly convex in L2, allows zero mass at equilibrium."""

    name = "chi2"
    default_estimator = "is"
    barrier = False
    estimators = {
        "is": EstimatorInfo(
            "is", "pi_t", "w = π_θ/π_t, differentiable (exp(min(2ℓ_θ − ℓ_t − ℓ_ref, log_clip)))",
            "all", "all", 1.0,
            "importance-weighted E_{π_θ}[π_θ/π_ref] − 1; exact in expectation for every θ",
        ),
        "ratio": EstimatorInfo(
            "ratio", "pi_t", "none (the ratio itself, clipped at e^log_clip)",
            "never", "never", 0.5,
            "authors' min(π_θ/π_ref, e^R): value χ²+1 and gradient ½∇χ² at θ_t",
        ),
    }  # fmt: skip

    def phi(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """(π − r)²/r."""
        pi, ref = f64(pi, ref)
        return np.square(pi - ref) / ref

    def grad(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """2(π/r − 1)."""
        pi, ref = f64(pi, ref)
        return 2.0 * (pi / ref - 1.0)

    def hess(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """2/r (constant in π)."""
        pi, ref = f64(pi, ref)
        return 2.0 / ref

    def grad_inv(self, y: np.ndarray, ref: np.ndarray, upper: float = np.inf) -> np.ndarray:
        """σ = max(0, r(1 + y/2)), clipped at ``upper``."""
        y, ref = f64(y, ref)
        return np.clip(ref * (1.0 + 0.5 * y), 0.0, upper)

    def _est_is(self, b: SampleBatch) -> Tensor:
        return self._clip(2.0 * b.logp_theta - b.logp_t - b.logp_ref).exp() - 1.0

    def _est_ratio(self, b: SampleBatch) -> Tensor:
        return self._clip(b.logp_theta - b.logp_ref).exp()
