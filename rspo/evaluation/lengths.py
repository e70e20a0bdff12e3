"""Response length statistics: the judge-bias confounder every win rate must be read with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["LengthStats", "length_stats"]


@dataclass(frozen=True)
class LengthStats:
    """Mean/median/max token length, mean character length (``None`` without texts),
    truncation rate (``None`` without flags) and the number of responses."""

    mean_tokens: float
    median_tokens: float
    max_tokens: int
    mean_chars: float | None
    truncation_rate: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def length_stats(
    token_lengths: Sequence[int] | np.ndarray,
    texts: Sequence[str] | None = None,
    truncated: Sequence[bool] | None = None,
) -> LengthStats:
    """Summarise response lengths.

    ``token_lengths`` are per-response generated token counts; ``texts`` (same order) give
    character lengths; ``truncated`` flags responses cut at the generation limit (no EOS),
    whose share is the truncation rate.
    """
    t = np.asarray(token_lengths, dtype=np.float64).ravel()
    if t.size == 0:
        raise ValueError("no lengths given")
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("token lengths must be finite and >= 0")
    mean_chars = None
    if texts is not None:
        if len(texts) != t.size:
            raise ValueError(f"{len(texts)} texts for {t.size} token lengths")
        mean_chars = float(np.mean([len(s) for s in texts]))
    trunc = None
    if truncated is not None:
        if len(truncated) != t.size:
            raise ValueError(f"{len(truncated)} truncation flags for {t.size} responses")
        trunc = float(np.mean([bool(x) for x in truncated]))
    return LengthStats(
        mean_tokens=float(t.mean()),
        median_tokens=float(np.median(t)),
        max_tokens=int(t.max()),
        mean_chars=mean_chars,
        truncation_rate=trunc,
        n=int(t.size),
    )
