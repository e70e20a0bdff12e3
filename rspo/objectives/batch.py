"""The input of every objective: sequence-level log-probs of sampled responses.

One row per sampled response y ~ π_t (summed token log-probs), so the same code serves
tabular policies (one "token") and language models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SampleBatch:
    """Sequence-level log-probs and win rates of responses sampled from π_t.

    ``logp_theta`` carries the gradient; every other tensor is treated as a constant.
    Pair losses read rows (2i, 2i+1) as (chosen, rejected) of one prompt; when ``label``
    is given (+1 chosen / -1 rejected) it decides which row of each pair is chosen.
    ``ref_logp_*`` are the optional rows y' ~ π_ref used by the forward-KL NLL estimator.
    """

    logp_theta: Tensor  # [N] log π_θ(y|x), y ~ π_t, requires grad
    logp_t: Tensor  # [N] log π_t(y|x), constant
    logp_ref: Tensor  # [N] log π_ref(y|x), constant
    win_rate: Tensor  # [N] p̂ = P̂(y ≻ π_t | x)
    label: Tensor | None = None  # [N] +1 chosen / -1 rejected
    ref_logp_theta: Tensor | None = None  # [M] log π_θ(y'|x), y' ~ π_ref
    ref_logp_ref: Tensor | None = None  # [M] log π_ref(y'|x)

    @property
    def num_rows(self) -> int:
        """N, the number of π_t samples in this (micro-)batch."""
        return int(self.logp_theta.shape[0])

    @property
    def num_ref_rows(self) -> int:
        """M, the number of π_ref samples in this (micro-)batch (0 when absent)."""
        return 0 if self.ref_logp_theta is None else int(self.ref_logp_theta.shape[0])

    @property
    def has_ref_samples(self) -> bool:
        """Whether π_ref samples (``ref_logp_theta`` and ``ref_logp_ref``) are present."""
        return self.ref_logp_theta is not None and self.ref_logp_ref is not None

    def validate(self, pairs: bool = False) -> None:
        """Raise ValueError on shape mismatches (and bad pair layout when ``pairs``)."""
        n = None
        for name in ("logp_theta", "logp_t", "logp_ref", "win_rate", "label"):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor) or t.dim() != 1:
                raise ValueError(f"SampleBatch.{name} must be a 1-D tensor, got {_shape(t)}")
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(
                    f"SampleBatch.{name} has {t.shape[0]} rows, logp_theta has {n}; "
                    "all per-sample tensors must have equal length"
                )
        if (self.ref_logp_theta is None) != (self.ref_logp_ref is None):
            raise ValueError("SampleBatch.ref_logp_theta and ref_logp_ref must be given together")
        if self.ref_logp_theta is not None:
            for name in ("ref_logp_theta", "ref_logp_ref"):
                t = getattr(self, name)
                if not isinstance(t, Tensor) or t.dim() != 1:
                    raise ValueError(f"SampleBatch.{name} must be a 1-D tensor, got {_shape(t)}")
            if self.ref_logp_theta.shape != self.ref_logp_ref.shape:
                raise ValueError(
                    "SampleBatch.ref_logp_theta and ref_logp_ref differ in length: "
                    f"{self.ref_logp_theta.shape[0]} vs {self.ref_logp_ref.shape[0]}"
                )
        if pairs:
            self.pair_indices()

    def pair_indices(self) -> tuple[Tensor, Tensor]:
        """Row indices (chosen, rejected) of each pair (rows 2i, 2i+1), using ``label`` if set."""
        n = self.num_rows
        if n % 2:
            raise ValueError(f"pair losses need an even number of rows, got {n}")
        even = torch.arange(0, n, 2, device=self.logp_theta.device)
        odd = even + 1
        if self.label is None:
            return even, odd
        lab = self.label
        le, lo = lab[even], lab[odd]
        ok = ((le > 0) & (lo < 0)) | ((le < 0) & (lo > 0))
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(
                f"pair {bad} (rows {2 * bad}, {2 * bad + 1}) has labels "
                f"({float(le[bad])}, {float(lo[bad])}); each pair needs one +1 and one -1"
            )
        chosen = torch.where(le > 0, even, odd)
        rejected = torch.where(le > 0, odd, even)
        return chosen, rejected


def _shape(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
