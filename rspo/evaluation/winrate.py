"""Win rate of a policy against a baseline, with a seeded percentile-bootstrap interval.

The win rate is the mean over evaluation prompts of P(policy ≻ baseline | x), the quantity
AlpacaEval reports (as a percentage). Soft judge probabilities and hard labels are both
accepted: a hard label is 1 (win), 0 (loss) or 0.5 (tie), so ties count ½.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["WinRate", "as_preferences", "win_rate"]

_LABELS = {"win": 1.0, "loss": 0.0, "lose": 0.0, "tie": 0.5, "draw": 0.5}


@dataclass(frozen=True)
class WinRate:
    """Mean preference and its bootstrap 95% interval ``[lo, hi]`` over ``n`` prompts."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def as_preferences(probs: Sequence[float | bool | str] | np.ndarray) -> np.ndarray:
    """Validate preferences into a float array in [0, 1].

    Accepts probabilities, booleans (True = win) and the strings ``win``/``loss``/``tie``
    (ties are ½). Raises ``ValueError`` on an empty input, NaN or a value outside [0, 1].
    """
    if isinstance(probs, np.ndarray) and probs.dtype.kind in "fiub":
        p = probs.astype(np.float64).ravel()
    else:
        vals = []
        for v in probs:
            if isinstance(v, str):
                key = v.strip().lower()
                if key not in _LABELS:
                    raise ValueError(f"unknown preference label {v!r}; use win/loss/tie")
                vals.append(_LABELS[key])
            else:
                vals.append(float(v))
        p = np.asarray(vals, dtype=np.float64)
    if p.size == 0:
        raise ValueError("no preferences given")
    if not np.all(np.isfinite(p)):
        raise ValueError("preferences contain NaN or inf")
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"preferences must lie in [0, 1], got range [{p.min()}, {p.max()}]")
    return p


def win_rate(
    probs: Sequence[float | bool | str] | np.ndarray, n_boot: int = 1000, seed: int = 0
) -> WinRate:
    """Mean of P(policy ≻ baseline) over prompts with a percentile-bootstrap 95% interval.

    The interval resamples prompts with replacement ``n_boot`` times and takes the 2.5 and
    97.5 percentiles of the resampled means (``numpy.percentile``, linear interpolation).
    It is deterministic given ``seed``. With ``n_boot == 0`` the interval collapses to the
    mean.
    """
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    p = as_preferences(probs)
    mean = float(p.mean())
    if n_boot == 0:
        return WinRate(mean, mean, mean, int(p.size))
    # Chunk the resampling so a large eval set never builds a huge index matrix at once.
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // p.size)
    means = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, p.size, size=(stop - start, p.size))
        means[start:stop] = p[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    # The bootstrap means are centred on the sample mean, so the interval contains it except
    # for pathologically skewed tiny samples; clamp so the report is always consistent.
    return WinRate(mean, float(min(lo, mean)), float(max(hi, mean)), int(p.size))
