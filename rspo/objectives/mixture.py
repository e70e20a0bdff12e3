"""A positive linear combination Σ_k w_k R_k of registered regularizers.

The paper's best setting is a forward + reverse KL mixture. Each component keeps its own
estimator (and sample set); the mixture's estimate is Σ_k w_k R̂_k and its tabular
φ, φ', φ'' are the weighted sums, so it is again a separable convex divergence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import Tensor

from .batch import SampleBatch
from .regularizer import EstimatorInfo, Regularizer
from .terms import spec_terms


class Mixture(Regularizer):
    """Σ_k w_k R_k with w_k > 0; built directly or by ``parse_regularizer("0.5*a + 0.5*b")``."""

    name = "mixture"
    estimators: dict[str, EstimatorInfo] = {}

    def __init__(self, components: Sequence[tuple[float, Regularizer | str]]):
        flat: list[tuple[float, Regularizer]] = []
        for item in components:
            try:
                weight, reg = item
            except (TypeError, ValueError):
                raise ValueError(
                    f"Mixture components must be (weight, regularizer) pairs, got {item!r}"
                ) from None
            weight = float(weight)
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"Mixture weight must be finite and > 0, got {weight} for {reg!r}")
            terms = spec_terms(reg)  # a spec string's terms: its components once summed
            if terms is None:
                raise ValueError(f"Mixture component {reg!r} is not a regularizer")
            flat.extend((weight * w, c) for w, c in terms)
        if not flat:
            raise ValueError("Mixture needs at least one component")
        seen: set[str] = set()
        for _, c in flat:
            if c.spec in seen:
                raise ValueError(f"Mixture has duplicate component {c.spec!r}; merge the weights")
            seen.add(c.spec)
        self._components = flat
        self.estimator = None
        self.log_clip = None

    # ----------------------------------------------------------------- description
    @property
    def info(self) -> EstimatorInfo:
        """Not defined for a mixture (each component has its own estimator)."""
        raise AttributeError("a Mixture has one estimator per component; see .components()")

    @property
    def needs_ref_samples(self) -> bool:
        """Whether any component needs π_ref samples."""
        return any(c.needs_ref_samples for _, c in self._components)

    @property
    def barrier(self) -> bool:  # type: ignore[override]
        """φ'(0+) = −∞ iff some component is a barrier."""
        return any(c.barrier for _, c in self._components)

    @property
    def spec(self) -> str:
        """``"w1*name1[est1] + w2*name2[est2]"`` (round-trips through parse_regularizer)."""
        return " + ".join(f"{w:.17g}*{c.spec}" for w, c in self._components)

    def components(self) -> list[tuple[float, Regularizer]]:
        """The (weight, regularizer) pairs, nested mixtures flattened."""
        return list(self._components)

    def __repr__(self) -> str:
        return f"Mixture({self._components!r})"

    def _key(self) -> tuple:
        return tuple((w, type(c).__name__, c._key()) for w, c in self._components)

    # ----------------------------------------------------------------- tabular
    def phi(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ_k."""
        return sum(w * c.phi(pi, ref) for w, c in self._components)

    def grad(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ'_k."""
        return sum(w * c.grad(pi, ref) for w, c in self._components)

    def hess(self, pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ''_k."""
        return sum(w * c.hess(pi, ref) for w, c in self._components)

    def grad_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ'_k(e^u)."""
        return sum(w * c.grad_log(log_pi, ref) for w, c in self._components)

    def hess_log(self, log_pi: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ''_k(e^u)·e^u."""
        return sum(w * c.hess_log(log_pi, ref) for w, c in self._components)

    def grad_at_zero(self, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ'_k(0+)."""
        return sum(w * c.grad_at_zero(ref) for w, c in self._components)

    def grad_sup(self, ref: np.ndarray) -> np.ndarray:
        """Σ_k w_k φ'_k(∞)."""
        return sum(w * c.grad_sup(ref) for w, c in self._components)

    # ----------------------------------------------------------------- samples
    def per_sample(self, batch: SampleBatch) -> Tensor:
        """Undefined: components may use different sample sets; use :meth:`estimate`."""
        raise TypeError("Mixture has no single per-sample term; use estimate()")

    def estimate(
        self,
        batch: SampleBatch,
        num_samples: int | None = None,
        num_ref_samples: int | None = None,
    ) -> Tensor:
        """Σ_k w_k R̂_k, each component normalized by its own sample set's count."""
        parts = self.estimate_components(batch, num_samples, num_ref_samples)
        return sum(w * est for _, w, est in parts)

    def estimate_components(
        self,
        batch: SampleBatch,
        num_samples: int | None = None,
        num_ref_samples: int | None = None,
    ) -> list[tuple[str, float, Tensor]]:
        """(spec, weight, unweighted estimate) of each component."""
        return [
            (c.spec, w, c.estimate(batch, num_samples, num_ref_samples))
            for w, c in self._components
        ]
