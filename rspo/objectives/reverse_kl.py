"""Reverse KL, KL(π_θ ‖ π_ref) = E_{y~π_θ}[log π_θ(y) − log π_ref(y)] (Nash-MD's regularizer).

φ(π) = π log(π/r), φ'(π) = log(π/r) + 1, φ''(π) = 1/π.

Estimators on y ~ π_t, with d = ℓ_θ − ℓ_ref and w = π_θ/π_t = exp(ℓ_θ − ℓ_t):

========== ======================== ================= ===================================
estimator  per-sample term          value unbiased    gradient unbiased
========== ======================== ================= ===================================
is         w·d (w differentiable)   all θ             all θ
k1         d                        at θ_t            never: E[∇] = 0 at θ_t
k2         ½d²                      never             at θ_t (authors' d² = 2× this)
k3         e^{−d} − 1 + d           at θ_t            never: E[∇] = ∇KL(π_ref‖π) at θ_t
reinforce  sg(w·d)·(1 + ℓ_θ − sg ℓ_θ) all θ          all θ  (= Nash-MD's sg(d)·∇ℓ_θ at θ_t)
noent      −ℓ_θ·ℓ_ref               never             never: E[∇] = ∇CE(π‖π_ref) at θ_t
========== ======================== ================= ===================================

Why: E_{π_t}[w·d] = Σ π_θ log(π_θ/r) for every θ; its gradient Σ π_t w (d+1) ∇ℓ_θ is
the true one. At θ_t, E_{π_t}[∇ℓ_θ] = Σ ∇π_θ = 0, so k1's gradient vanishes in
expectation, while k2's d·∇ℓ_θ and reinforce's equal the true gradient Σ π (d+1)∇ℓ.

``noent`` is the authors' ``reverseklnoent`` loss (their Mistral reverse-KL script), reverse
KL without its entropy term. Its gradient −ℓ_ref·∇ℓ_θ has, at θ = θ_t, the expectation
E_{π_t}[−ℓ_ref ∇ℓ_θ] = ∇_θ Σ_y π_θ(y)(−log π_ref(y)) = ∇CE(π_θ, π_ref), the gradient of the
cross-entropy CE = KL(π_θ‖π_ref) + H(π_θ): reverse KL's gradient plus the entropy's, so it
also lowers the policy's entropy (in the tabular game its functional gradient is −log r_i,
KL's log(π_i/r_i) + 1 without log π_i + 1). It is not a divergence: neither its value
(−E[ℓ_θ·ℓ_ref] ≤ 0, not 0 at π_θ = π_ref) nor its gradient (∇H(π_ref) there) vanishes at
π_θ = π_ref, which is not its minimizer (a point mass on π_ref's mode is). With the
authors' λ_a it is ``reverse_kl[noent]`` with coef 2λ_a (their per-pair mean of y_w and y_l).
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy
from torch import Tensor

from .batch import SampleBatch
from .registry import register_regularizer
from .regularizer import EstimatorInfo, Regularizer, f64

_W = "w = π_θ/π_t = exp(min(ℓ_θ − ℓ_t, log_clip))"


@register_regularizer
class ReverseKL(Regularizer):
    """Reverse KL(π‖π_ref): strongly convex w.r.t. entropy; last-iterate convergent game."""

    name = "reverse_kl"
    default_estimator = "is"
    barrier = True
    estimators = {
        "is": EstimatorInfo(
            "is", "pi_t", f"{_W}, differentiable", "all", "all", 1.0,
            "importance-weighted log-ratio w·d; exact in expectation for every θ",
        ),
        "k1": EstimatorInfo(
            "k1", "pi_t", "none", "at_theta_t", "never", 0.0,
            "plain average of d over π_t samples; gradient is zero in expectation at θ_t",
        ),
        "k2": EstimatorInfo(
            "k2", "pi_t", "none", "never", "at_theta_t", 1.0,
            "½d²; gradient d·∇ℓ_θ is unbiased at θ_t (the authors use d², i.e. 2× this)",
        ),
        "k3": EstimatorInfo(
            "k3", "pi_t", "exp(min(−d, log_clip)) inside the term", "at_theta_t", "never", None,
            "e^{−d} − 1 + d (Schulman's k3); at θ_t its gradient is ∇KL(π_ref‖π), the "
            "forward-KL gradient",
        ),
        "reinforce": EstimatorInfo(
            "reinforce", "pi_t", f"{_W}, detached", "all", "all", 1.0,
            "surrogate with value w·d and gradient sg(w·d)·∇ℓ_θ (Nash-MD's REINFORCE form; "
            "w = 1 at θ_t)",
        ),
        "noent": EstimatorInfo(
            "noent", "pi_t", "none", "never", "never", None,
            "authors' reverseklnoent −ℓ_θ·ℓ_ref: reverse KL without the entropy term; at θ_t "
            "its gradient is ∇CE(π‖π_ref) = ∇KL(π‖π_ref) + ∇H(π); not a divergence",
        ),
    }  # fmt: skip

    def phi(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """π log(π/r) with 0 log 0 = 0."""
        pi, ref = f64(pi, ref)
        return xlogy(pi, pi) - xlogy(pi, ref)

    def grad(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """log(π/r) + 1."""
        pi, ref = f64(pi, ref)
        with np.errstate(divide="ignore"):
            return np.log(pi) - np.log(ref) + 1.0

    def hess(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """1/π."""
        pi, _ = f64(pi, ref)
        with np.errstate(divide="ignore"):
            return 1.0 / pi

    def grad_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """u − log r + 1 (no underflow)."""
        log_pi, ref = f64(log_pi, ref)
        return log_pi - np.log(ref) + 1.0

    def hess_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """φ''(π)·π = 1."""
        return np.ones(np.broadcast_shapes(np.shape(log_pi), np.shape(ref)))

    def grad_inv(self, y: np.ndarray, ref: np.ndarray, upper: float = np.inf) -> np.ndarray:
        """σ = r·exp(y − 1), clipped at ``upper``."""
        y, ref = f64(y, ref)
        with np.errstate(over="ignore"):
            return np.minimum(ref * np.exp(y - 1.0), upper)

    def _est_is(self, b: SampleBatch) -> Tensor:
        w = self._clip(b.logp_theta - b.logp_t).exp()
        return w * (b.logp_theta - b.logp_ref)

    def _est_k1(self, b: SampleBatch) -> Tensor:
        return b.logp_theta - b.logp_ref

    def _est_k2(self, b: SampleBatch) -> Tensor:
        return 0.5 * (b.logp_theta - b.logp_ref).square()

    def _est_k3(self, b: SampleBatch) -> Tensor:
        d = b.logp_theta - b.logp_ref
        return self._clip(-d).exp() - 1.0 + d

    def _est_reinforce(self, b: SampleBatch) -> Tensor:
        w = self._clip(b.logp_theta - b.logp_t).exp()
        coeff = (w * (b.logp_theta - b.logp_ref)).detach()
        return coeff * (1.0 + b.logp_theta - b.logp_theta.detach())

    def _est_noent(self, b: SampleBatch) -> Tensor:
        return -b.logp_theta * b.logp_ref
