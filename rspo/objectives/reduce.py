"""Reductions shared by all objectives, so micro-batches add up to the full batch."""

from __future__ import annotations

from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


def reduce(terms: Tensor, reduction: str) -> Tensor:
    """Reduce per-sample ``terms`` by ``reduction`` in {'mean', 'sum', 'none'}."""
    if reduction == "mean":
        return terms.mean()
    if reduction == "sum":
        return terms.sum()
    if reduction == "none":
        return terms
    raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")


def normalized_sum(terms: Tensor, count: float | int | None) -> Tensor:
    """``terms.sum() / count`` (the global-count convention), or ``terms.mean()`` if None.

    An empty micro-batch contributes exactly 0 when a global count is given.
    """
    if count is None:
        if terms.numel() == 0:
            raise ValueError("cannot take the mean of zero samples; pass a global count")
        return terms.mean()
    if count <= 0:
        raise ValueError(f"global sample count must be positive, got {count}")
    return terms.sum() / count
