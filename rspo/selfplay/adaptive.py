"""Adaptive regularization coefficient: steer λ toward a KL or length target per iteration.

Like PPO's adaptive KL controller, but per self-play iteration and on the quantity the
user states: ``kl`` (KL(π_t‖π_ref) estimated on π_t's samples, nats) or ``length`` (mean
response tokens). λ_t = λ_{t−1} · exp(gain · clip(m_t / target − 1, −1, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

GAIN = 1.0


def measure(
    kind: str, logp_t: Sequence[float], logp_ref: Sequence[float], lengths: Sequence[int]
) -> float:
    """The controlled quantity on π_t's samples: mean log-ratio (KL estimate) or mean length."""
    if kind == "kl":
        return sum(a - b for a, b in zip(logp_t, logp_ref)) / max(1, len(logp_t))
    if kind == "length":
        return sum(lengths) / max(1, len(lengths))
    raise ValueError(f"objective.adaptive: unknown kind {kind!r}; allowed: kl, length")


def update_coef(coef: float, measured: float, target: float, gain: float = GAIN) -> float:
    """Raise λ when the measured value exceeds the target, lower it when below."""
    if target <= 0:
        raise ValueError(f"objective.adaptive_target must be > 0, got {target}")
    err = max(-1.0, min(1.0, measured / target - 1.0))
    return coef * math.exp(gain * err)
