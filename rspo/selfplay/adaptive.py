"""Adaptive regularization coefficient: steer λ toward a KL or length target per iteration,
or by the direction of a KPI (``objective.adaptive: kpi``, :func:`update_coef_kpi`).

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


#: ``objective.adaptive: kpi`` defaults (config keys kpi_step, kpi_scale, coef_min, coef_max)
KPI_STEP, KPI_SCALE, COEF_MIN, COEF_MAX = 2.0, 0.05, 0.01, 10.0


def update_coef_kpi(
    coef: float,
    change: float,
    step: float = KPI_STEP,
    scale: float = KPI_SCALE,
    coef_min: float = COEF_MIN,
    coef_max: float = COEF_MAX,
) -> float:
    """λ_t = clip(λ_{t−1} · step^(−clip(change / scale, −1, 1)), coef_min, coef_max).

    ``change`` = KPI now − KPI at the previous measurement (higher KPI = better): a falling
    KPI raises λ (hold the policy closer to π_ref), a rising one lowers it, by at most a
    factor ``step`` per iteration (reached at |change| ≥ ``scale``), and λ stays in
    [coef_min, coef_max]. No change, no move (except into the bounds)."""
    if not (step >= 1 and scale > 0 and 0 < coef_min <= coef_max):
        raise ValueError(
            f"kpi rule: need step >= 1, scale > 0, 0 < coef_min <= coef_max; got step={step}, "
            f"scale={scale}, coef_min={coef_min}, coef_max={coef_max}"
        )
    if not math.isfinite(change):
        raise ValueError(f"kpi rule: the KPI change must be finite, got {change}")
    x = max(-1.0, min(1.0, change / scale))
    return min(coef_max, max(coef_min, coef * step ** (-x)))
