"""Named method presets in rspo's terms, each citing its paper:

* ``sppo`` — Wu et al., Self-Play Preference Optimization, arXiv 2405.00675.
* ``rspo``, ``rspo_reverse``, ``rspo_forward``, ``rspo_chi2`` — Tang et al., RSPO: Regularized
  Self-Play Alignment of Large Language Models, arXiv 2503.00030 (authors' settings).
* ``nash_md`` — Munos et al., Nash Learning from Human Feedback, arXiv 2312.00886.
* ``inpo`` — Zhang et al., Iterative Nash Policy Optimization, arXiv 2407.00617.
* ``mpo`` — Wang et al., Magnetic Preference Optimization, arXiv 2410.16714.

rspo's loss is L = mean_rows(e²) + coef·R̂ with e = ℓ_θ − ℓ_t − η(p̂ − ½) and the
first-order link coef = 2ητ (see :mod:`rspo.objectives.loss`).

The authors' code (method.md §3a) computes mean_pairs((e_w² + e_l²)/2) = mean_rows(e²)
plus λ_a·(mean_w(term) + mean_l(term)) = 2λ_a·mean_rows(term), and its reverse-KL term is
d² = 2·(½d²) = 2·k2. Hence, in rspo's terms:

* reverse KL (d², λ_a)        → ``reverse_kl[k2]``,    coef 4λ_a, ητ = 2λ_a
* IS forward (ratio, λ_a)     → ``forward_kl[ratio]``, coef 2λ_a, ητ = λ_a
* χ² (ratio, λ_a)             → ``chi2[ratio]``,       coef 2λ_a, ητ = λ_a/2
* forward + c·reverse (λ_a)   → ``forward_kl[ratio] + 2c*reverse_kl[k2]``, coef 2λ_a
* reverseklnoent (−ℓ_θ·ℓ_ref, λ_a) → ``reverse_kl[noent]``, coef 2λ_a (not a divergence; see
  :mod:`rspo.objectives.reverse_kl`)
* their clip R (``forwardimportance7``, ``forward1R5reverse…``) → ``objective.is_clip``

(at θ = θ_t the ``ratio``/``k2`` gradients equal those of the unbiased ``is`` estimators,
scaled as listed in each EstimatorInfo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .loss import RSPOLoss


@dataclass(frozen=True)
class Preset:
    """A method as (loss_type, regularizer spec, coef, sample selection, magnet schedule).

    ``samples``: 'all' K samples or only the judge's 'best_worst' pair. ``magnet_refresh``:
    MPO's m (π_ref := current policy every m iterations; the trainer does it).
    ``tau_eta``: INPO's ητ (π_ref's geometric-mixture weight); RSPOLoss gets τ = tau_eta/η.
    ``exact``: whether rspo reproduces the cited method (not only its loss).
    """

    name: str
    loss_type: Literal["sppo", "sppo_hard", "inpo"]
    regularizer: str | None
    coef: float
    samples: Literal["all", "best_worst"]
    magnet_refresh: int | None
    citation: str
    exact: bool
    note: str
    tau_eta: float | None = None

    def make_loss(self, eta: float) -> RSPOLoss:
        """The RSPOLoss of this preset at step size ``eta``."""
        tau = None if self.tau_eta is None else self.tau_eta / eta
        return RSPOLoss(eta, self.regularizer, self.coef, self.loss_type, tau=tau)

    def tau_per_component(self, eta: float) -> dict[str, float]:
        """Game strength τ of each regularizer component at first order: τ = coef·w·s/(2η).

        s is the estimator's ``grad_scale_at_theta_t`` (e.g. ½ for the authors' χ² ratio).
        """
        from .spec import get_regularizer

        reg = get_regularizer(self.regularizer)
        if reg is None:
            return {}
        out = {}
        for w, c in reg.components():
            scale = c.info.grad_scale_at_theta_t
            out[c.name] = float("nan") if scale is None else self.coef * w * scale / (2 * eta)
        return out


def _presets() -> dict[str, Preset]:
    rspo = "2503.00030"
    items = [
        Preset(
            "sppo", "sppo", None, 0.0, "best_worst", None, "2405.00675", True,
            "SPPO (Wu et al.): square loss on the best/worst of K samples, no regularizer "
            "(λ = 0). Official code: mean of (e_w² + e_l²)/2 = row mean of e².",
        ),
        Preset(
            "rspo", "sppo", "forward_kl[ratio] + 10*reverse_kl[k2]", 0.2, "best_worst", None,
            rspo, True,
            "RSPO headline (Tang et al.): IS forward KL + 5 × reverse KL, λ = 0.1 in the "
            "authors' scale = coef 0.2 on 'forward_kl[ratio] + 10*reverse_kl[k2]' here; "
            "first order: ητ_forward = 0.1, ητ_reverse = 1.0 (τ = 1e-4, 1e-3 at η = 1000).",
        ),
        Preset(
            "rspo_reverse", "sppo", "reverse_kl[k2]", 2.0, "best_worst", None, rspo, True,
            "RSPO reverse KL (Tang et al.), authors' λ = 0.5 on d² = coef 2.0 on ½d²; ητ = 1.0 "
            "at first order (the exact per-sample minimizer mixes π_ref with weight ½).",
        ),
        Preset(
            "rspo_forward", "sppo", "forward_kl[ratio]", 0.2, "best_worst", None, rspo, True,
            "RSPO IS forward KL (Tang et al.), authors' λ = 0.1 on min(π_ref/π_θ, e^10); "
            "ητ = 0.1. Use 'forward_kl' (unbiased IS) or 'forward_kl[nll]' for other estimators.",
        ),
        Preset(
            "rspo_chi2", "sppo", "chi2[ratio]", 0.2, "best_worst", None, rspo, True,
            "RSPO χ² (Tang et al.), authors' λ = 0.1 on min(π_θ/π_ref, e^10), whose gradient "
            "is ½∇χ² at θ_t; ητ = 0.05.",
        ),
        Preset(
            "nash_md", "sppo", "reverse_kl[reinforce]", 2.0, "all", None, "2312.00886", False,
            "Nash-MD (Munos et al.) regularized mirror step with the REINFORCE reverse-KL "
            "gradient; coef (ητ = 1) is rspo's choice. Nash-MD samples from the geometric "
            "mixture π_t^{1−β} π_ref^β: NOT reproduced unless generation supports it.",
        ),
        Preset(
            "inpo", "inpo", None, 0.0, "best_worst", None, "2407.00617", True,
            "INPO (Zhang et al.) pairwise square loss on (best, worst) with hard preference; "
            "ητ = 0.5 (π_ref's mixture weight) is rspo's default, not from the paper.",
            tau_eta=0.5,
        ),
        Preset(
            "mpo", "sppo", "reverse_kl", 2.0, "best_worst", 2, "2410.16714", False,
            "MPO (Wang et al.): reverse KL toward a magnet refreshed to the current policy "
            "every 2 iterations (proximal point; converges to the unregularized equilibrium). "
            "Uses rspo's SPPO square loss, not MPO's own loss; coef and m are rspo's choices.",
        ),
    ]  # fmt: skip
    return {p.name: p for p in items}


#: name → Preset
PRESETS: dict[str, Preset] = _presets()
