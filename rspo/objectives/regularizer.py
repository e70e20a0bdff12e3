"""The :class:`Regularizer` interface: one divergence, exact tabular form + sample estimators.

Every divergence here is separable, R(π) = Σ_i φ(π_i; ref_i), so the tabular interface is
φ (``phi``), φ' (``grad``, the functional gradient ∂R/∂π_i) and φ'' (``hess``), plus
the inverse of φ' used by the game layer's best responses.

Sample estimators see only sequence-level log-probs of responses y ~ π_t (and, for some,
y' ~ π_ref). Each declares, in an :class:`EstimatorInfo`, where its samples come from,
its importance weights, and whether value and gradient are unbiased at θ = θ_t only or for
all θ. Importance weights are log-clipped from above at ``log_clip`` (default
:data:`DEFAULT_LOG_CLIP` = 10, the authors' R); an estimator stays unbiased only while
the clip is inactive (always true at θ = θ_t, where π_θ/π_t = 1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from .batch import SampleBatch
from .reduce import normalized_sum

#: default upper clip on log importance weights / log ratios inside estimators (e^10 ≈ 2.2e4)
DEFAULT_LOG_CLIP: float = 10.0

Unbiased = Literal["all", "at_theta_t", "never"]


def f64(*arrays: np.ndarray | float) -> list[np.ndarray]:
    """The arrays as float64, broadcast together: the tabular forms are elementwise in
    (π, ref) and compute in double precision whatever dtype the caller holds."""
    return np.broadcast_arrays(*(np.asarray(a, float) for a in arrays))


@dataclass(frozen=True)
class EstimatorInfo:
    """Declared statistical properties of one sample estimator of a divergence.

    ``value_unbiased`` / ``grad_unbiased``: "all" (for every θ, clip inactive),
    "at_theta_t" (only where π_θ = π_t) or "never". ``grad_scale_at_theta_t``: the
    expected gradient at θ = θ_t equals this multiple of ∇R (None if not proportional).
    """

    name: str
    samples: Literal["pi_t", "pi_ref"]
    weights: str
    value_unbiased: Unbiased
    grad_unbiased: Unbiased
    grad_scale_at_theta_t: float | None
    description: str


class Regularizer(ABC):
    """A separable divergence R(π) = Σ_i φ(π_i; ref_i) with tabular and sample forms.

    Subclasses set ``name``, ``estimators``, ``default_estimator``, ``barrier``
    (φ'(0+) = −∞, so equilibria are interior), implement ``phi``/``grad``/``hess`` and one
    ``_est_<estimator>(batch) -> Tensor`` per-sample method per estimator.
    """

    name: ClassVar[str] = ""
    estimators: ClassVar[Mapping[str, EstimatorInfo]] = {}
    default_estimator: ClassVar[str] = ""
    barrier: ClassVar[bool] = False

    def __init__(self, estimator: str | None = None, log_clip: float | None = DEFAULT_LOG_CLIP):
        est = self.default_estimator if estimator in (None, "") else estimator
        if est not in self.estimators:
            raise ValueError(
                f"unknown estimator {est!r} for regularizer {self.name!r}; "
                f"valid: {', '.join(self.estimators)}"
            )
        if log_clip is not None and not math.isfinite(log_clip):
            raise ValueError(f"log_clip must be a finite float or None, got {log_clip}")
        self.estimator: str | None = est
        self.log_clip = log_clip

    # ----------------------------------------------------------------- description
    @property
    def info(self) -> EstimatorInfo:
        """The declared properties of the selected estimator."""
        return self.estimators[self.estimator]

    @property
    def needs_ref_samples(self) -> bool:
        """Whether the estimator needs π_ref samples (``SampleBatch.ref_logp_*``)."""
        return self.info.samples == "pi_ref"

    @property
    def spec(self) -> str:
        """A string that :func:`rspo.objectives.parse_regularizer` maps back to this object."""
        return f"{self.name}[{self.estimator}]"

    def components(self) -> list[tuple[float, Regularizer]]:
        """(weight, regularizer) pairs; a single regularizer is its own only component."""
        return [(1.0, self)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(estimator={self.estimator!r}, log_clip={self.log_clip})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Regularizer):
            return NotImplemented
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def _key(self) -> tuple:
        return (self.estimator, self.log_clip)

    # ----------------------------------------------------------------- tabular
    @abstractmethod
    def phi(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Per-coordinate φ(π_i; ref_i); R(π) = Σ_i φ(π_i; ref_i)."""

    @abstractmethod
    def grad(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Functional gradient ∂R/∂π_i = φ'(π_i; ref_i) (elementwise, π need not sum to 1)."""

    @abstractmethod
    def hess(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Diagonal Hessian φ''(π_i; ref_i) > 0 (R is strictly convex)."""

    def grad_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """φ'(e^u; ref_i) as a function of u = log π (exact even where e^u underflows)."""
        return self.grad(np.exp(log_pi), ref)

    def hess_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """d/du φ'(e^u; ref_i) = φ''(π)·π, the Hessian in log coordinates."""
        pi = np.exp(log_pi)
        return self.hess(pi, ref) * pi

    def value(self, pi: np.ndarray, ref: np.ndarray) -> float:
        """Exact divergence R(π) = Σ_i φ(π_i; ref_i) for probability vectors π, ref."""
        return float(np.sum(self.phi(np.asarray(pi, float), np.asarray(ref, float))))

    def grad_at_zero(self, ref: np.ndarray) -> np.ndarray:
        """lim_{σ→0+} φ'(σ; ref_i) (−inf for barrier regularizers)."""
        ref = np.asarray(ref, float)
        if self.barrier:
            return np.full_like(ref, -np.inf)
        return self.grad(np.zeros_like(ref), ref)

    def grad_sup(self, ref: np.ndarray) -> np.ndarray:
        """lim_{σ→∞} φ'(σ; ref_i) (+inf unless overridden)."""
        return np.full_like(np.asarray(ref, float), np.inf)

    def grad_inv(self, y: np.ndarray, ref: np.ndarray, upper: float = np.inf) -> np.ndarray:
        """σ ≥ 0 with φ'(σ; ref_i) = y_i, clipped to [0, upper] (0 where y ≤ φ'(0+)).

        Generic version: bisection on log σ (φ' is increasing); subclasses override with
        closed forms.
        """
        y, ref = f64(y, ref)
        out = np.zeros_like(y)
        lo_lim, hi_lim = self.grad_at_zero(ref), self.grad_sup(ref)
        cap = upper if math.isfinite(upper) else 1e300
        at_cap = (y >= hi_lim) | (self.grad(np.full_like(y, cap), ref) <= y)
        out[at_cap] = upper
        todo = ~at_cap & (y > lo_lim)
        if np.any(todo):
            yt, rt = y[todo], ref[todo]
            lo = np.full_like(yt, math.log(1e-300))
            hi = np.full_like(yt, math.log(cap))
            for _ in range(110):
                mid = 0.5 * (lo + hi)
                below = self.grad(np.exp(mid), rt) < yt
                lo = np.where(below, mid, lo)
                hi = np.where(below, hi, mid)
            out[todo] = np.exp(0.5 * (lo + hi))
        return out

    # ----------------------------------------------------------------- samples
    def per_sample(self, batch: SampleBatch) -> Tensor:
        """Per-sample estimator terms on the estimator's sample set (π_t rows or π_ref rows)."""
        if self.needs_ref_samples and not batch.has_ref_samples:
            raise ValueError(
                f"regularizer {self.spec} needs π_ref samples: set SampleBatch.ref_logp_theta "
                "and SampleBatch.ref_logp_ref"
            )
        return getattr(self, f"_est_{self.estimator}")(batch)

    def estimate(
        self,
        batch: SampleBatch,
        num_samples: int | None = None,
        num_ref_samples: int | None = None,
    ) -> Tensor:
        """Scalar estimate R̂: per-sample terms summed / global count, or their mean if None.

        With ``num_ref_samples`` given, a micro-batch without π_ref rows contributes 0.
        """
        if self.needs_ref_samples:
            if not batch.has_ref_samples and num_ref_samples is not None:
                return batch.logp_theta.new_zeros(())
            return normalized_sum(self.per_sample(batch), num_ref_samples)
        return normalized_sum(self.per_sample(batch), num_samples)

    def estimate_components(
        self,
        batch: SampleBatch,
        num_samples: int | None = None,
        num_ref_samples: int | None = None,
    ) -> list[tuple[str, float, Tensor]]:
        """(spec, weight, estimate) of each component; the weighted sum is :meth:`estimate`."""
        return [(self.spec, 1.0, self.estimate(batch, num_samples, num_ref_samples))]

    def _clip(self, log_x: Tensor) -> Tensor:
        """Clip a log weight/ratio from above at ``log_clip`` (no-op when None)."""
        return log_x if self.log_clip is None else torch.clamp(log_x, max=self.log_clip)
