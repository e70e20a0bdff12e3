"""RSPO loss: a self-play square loss plus a sampled regularizer, L = L_selfplay + λ·R̂.

Convention (method.md §3): with λ = ``coef``, the first-order minimizer of
E_{π_t}[(ℓ_θ − ℓ_t − η(p̂ − ½))²] + λ·R(π_θ) over free log-probs moves the target to
η(p̂ − ½) − (λ/2)·∇R(π_t), so **λ = 2ητ** reproduces the regularized mirror step
π_{t+1} ∝ π_t·exp(η(P π_t − τ∇R(π_t))) of the game with strength τ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .batch import SampleBatch
from .inpo import inpo_loss
from .reduce import normalized_sum
from .regularizer import DEFAULT_LOG_CLIP, Regularizer
from .spec import get_regularizer
from .sppo import sppo_hard_loss, sppo_loss

LOSS_TYPES = ("sppo", "sppo_hard", "inpo")
PAIR_LOSS_TYPES = ("sppo_hard", "inpo")


class RSPOLoss:
    """L_RSPO = L_selfplay + coef·R̂ (coef = λ = 2ητ); ``loss_type`` in sppo|sppo_hard|inpo.

    ``sppo`` is per row (y ~ π_t); ``sppo_hard`` and ``inpo`` are per (chosen, rejected)
    pair of rows. ``tau`` is INPO's reverse-KL strength (rspo convention, see
    :func:`rspo.objectives.inpo_loss`) and only valid with ``loss_type="inpo"``.
    ``log_clip`` is R, the upper clip on log importance weights and log ratios inside a spec
    string's estimators (e.g. forward_kl[ratio] = min(π_ref/π_θ, e^R)); the authors use
    R = 5, 7, 10 (config ``objective.is_clip``).
    """

    def __init__(
        self,
        eta: float,
        regularizer: str | Regularizer | None = None,
        coef: float = 0.0,
        loss_type: str = "sppo",
        tau: float | None = None,
        log_clip: float | None = DEFAULT_LOG_CLIP,
    ):
        if log_clip is not None and not (math.isfinite(log_clip) and log_clip > 0):
            raise ValueError(f"log_clip must be a finite float > 0 or None, got {log_clip!r}")
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
            raise ValueError(f"eta must be a finite float > 0, got {eta!r}")
        if not (isinstance(coef, (int, float)) and math.isfinite(coef) and coef >= 0):
            raise ValueError(f"coef must be a finite float >= 0, got {coef!r}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
        if loss_type == "inpo":
            if tau is None or not math.isfinite(tau) or tau < 0:
                raise ValueError(f"loss_type 'inpo' needs a finite tau >= 0, got {tau!r}")
        elif tau is not None:
            raise ValueError(
                f"tau is only used by loss_type 'inpo', got tau={tau} for {loss_type!r}"
            )
        self.eta = float(eta)
        self.coef = float(coef)
        self.loss_type = loss_type
        self.tau = None if tau is None else float(tau)
        self.regularizer = get_regularizer(regularizer, log_clip)
        if self.coef > 0 and self.regularizer is None:
            raise ValueError(f"coef={coef} > 0 but no regularizer given")

    @property
    def needs_ref_samples(self) -> bool:
        """Whether batches must carry π_ref samples (``ref_logp_theta``/``ref_logp_ref``)."""
        return self.regularizer is not None and self.regularizer.needs_ref_samples

    @property
    def pairwise(self) -> bool:
        """Whether the self-play term is per (chosen, rejected) pair of rows."""
        return self.loss_type in PAIR_LOSS_TYPES

    def __repr__(self) -> str:
        reg = None if self.regularizer is None else self.regularizer.spec
        return (
            f"RSPOLoss(eta={self.eta}, regularizer={reg!r}, coef={self.coef}, "
            f"loss_type={self.loss_type!r}, tau={self.tau})"
        )

    def selfplay_terms(self, batch: SampleBatch) -> Tensor:
        """Per-row (sppo) or per-pair (sppo_hard, inpo) self-play loss terms."""
        b = batch
        if self.loss_type == "sppo":
            return sppo_loss(b.logp_theta, b.logp_t, b.win_rate, self.eta, reduction="none")
        c, r = b.pair_indices()
        if self.loss_type == "sppo_hard":
            return sppo_hard_loss(
                b.logp_theta[c], b.logp_theta[r], b.logp_t[c], b.logp_t[r], self.eta, "none"
            )
        return inpo_loss(
            b.logp_theta[c], b.logp_theta[r], b.logp_t[c], b.logp_t[r],
            b.logp_ref[c], b.logp_ref[r], self.eta, self.tau, "none",
        )  # fmt: skip

    def __call__(
        self,
        batch: SampleBatch,
        num_samples: int | None = None,
        num_ref_samples: int | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """loss = selfplay_term + coef·R̂, and detached float metrics.

        With ``num_samples`` (global π_t rows) / ``num_ref_samples`` (global π_ref rows)
        per-sample terms are summed and divided by them (pair terms by num_samples/2), so
        micro-batches add up exactly to the full-batch loss and gradient; otherwise means.
        Then 'loss', 'selfplay_loss', 'reg', 'reg_loss' and 'reg/<component>' are this
        micro-batch's additive contributions; the '*_mean'/'*_max' diagnostics are
        micro-batch statistics.
        """
        batch.validate(pairs=self.pairwise)
        terms = self.selfplay_terms(batch)
        count = None
        if num_samples is not None:
            count = num_samples / 2 if self.pairwise else num_samples
        selfplay = normalized_sum(terms, count)

        metrics: dict[str, float] = {}
        if self.regularizer is not None:
            parts = self.regularizer.estimate_components(batch, num_samples, num_ref_samples)
            reg = sum(w * est for _, w, est in parts)
            if len(parts) > 1:
                for spec, _, est in parts:
                    metrics[f"reg/{spec}"] = float(est.detach())
        else:
            reg = selfplay.new_zeros(())
        loss = selfplay + self.coef * reg if self.coef > 0 else selfplay

        with torch.no_grad():
            lr_t = batch.logp_theta - batch.logp_t
            metrics.update(
                loss=float(loss.detach()),
                selfplay_loss=float(selfplay.detach()),
                reg=float(reg.detach()),
                reg_loss=float(self.coef * reg.detach()),
            )
            if batch.num_rows:
                metrics.update(
                    logratio_mean=float(lr_t.mean()),
                    ref_logratio_mean=float((batch.logp_theta - batch.logp_ref).mean()),
                    win_rate_mean=float(batch.win_rate.mean()),
                    log_is_weight_max=float(lr_t.max()),
                )
        return loss, metrics
