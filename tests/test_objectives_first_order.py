"""The λ = 2ητ convention: the expected RSPO loss on a tabular policy reproduces the
regularized mirror step π_{t+1} ∝ π_t·exp(η(Pπ_t − τ∇R(π_t))) to first order in η."""

import numpy as np
import pytest
import torch

from rspo.game import random_game
from rspo.objectives import SampleBatch, get_regularizer, sppo_loss

T = torch.float64
N = 6
P = random_game(N, 3)
PI_T = np.array([0.25, 0.1, 0.2, 0.15, 0.05, 0.25])
REF = np.array([0.1, 0.3, 0.1, 0.2, 0.2, 0.1])


def expected_loss_minimizer(spec: str, eta: float, lam: float) -> np.ndarray:
    """argmin over free log-probs ℓ of E_{π_t}[(ℓ − ℓ_t − η(p̂ − ½))²] + λ·E[R̂(ℓ)] (exact sums)."""
    reg = get_regularizer(spec)
    lt = torch.tensor(np.log(PI_T), dtype=T)
    lr = torch.tensor(np.log(REF), dtype=T)
    w_t = torch.tensor(PI_T, dtype=T)
    w_ref = torch.tensor(REF, dtype=T)
    p_hat = torch.tensor(P @ PI_T, dtype=T)
    ell = lt.clone().requires_grad_(True)

    def objective():
        b = SampleBatch(ell, lt, lr, p_hat, ref_logp_theta=ell, ref_logp_ref=lr)
        total = (w_t * sppo_loss(ell, lt, p_hat, eta, reduction="none")).sum()
        for weight, comp in reg.components():
            q = w_ref if comp.needs_ref_samples else w_t
            total = total + lam * weight * (q * comp.per_sample(b)).sum()
        return total

    opt = torch.optim.LBFGS(
        [ell],
        max_iter=500,
        tolerance_grad=1e-15,
        tolerance_change=1e-16,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    opt.step(closure)
    pi = torch.softmax(ell.detach(), 0).numpy()
    return pi


def mirror_step(spec: str, eta: float, tau: float) -> np.ndarray:
    reg = get_regularizer(spec)
    z = np.log(PI_T) + eta * (P @ PI_T - tau * reg.grad(PI_T, REF))
    p = np.exp(z - z.max())
    return p / p.sum()


@pytest.mark.parametrize(
    "spec",
    ["reverse_kl", "reverse_kl[k2]", "forward_kl", "forward_kl[nll]", "chi2",
     "0.5*forward_kl + 2*reverse_kl"],
)  # fmt: skip
def test_lambda_equals_two_eta_tau(spec):
    tau = 0.4
    errs, wrong = [], []
    for eta in (0.02, 0.01):
        pi = expected_loss_minimizer(spec, eta, lam=2 * eta * tau)
        errs.append(np.abs(pi - mirror_step(spec, eta, tau)).sum())
        wrong.append(np.abs(pi - mirror_step(spec, eta, 2 * tau)).sum())  # λ = ητ convention
    # second-order agreement: error shrinks ~4x when η halves, and is far below the O(η)
    # discrepancy of a wrong convention
    assert 3.0 < errs[0] / errs[1] < 5.0, errs
    assert errs[1] < 0.05 * wrong[1], (errs, wrong)
    assert errs[1] < 5e-4


def test_reverse_k2_per_sample_minimizer_closed_form():
    """Per sample, argmin e² + λ·½d² is ℓ = (ℓ_t + η(p̂ − ½) + (λ/2)ℓ_ref) / (1 + λ/2)."""
    eta, lam = 3.0, 0.8
    lt, lr, p = (
        torch.tensor([-2.0], dtype=T),
        torch.tensor([-1.0], dtype=T),
        torch.tensor([0.7], dtype=T),
    )
    reg = get_regularizer("reverse_kl[k2]")
    ell = torch.zeros(1, dtype=T, requires_grad=True)
    opt = torch.optim.LBFGS(
        [ell],
        max_iter=100,
        tolerance_grad=1e-15,
        tolerance_change=1e-20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        b = SampleBatch(ell, lt, lr, p.to(T))
        loss = sppo_loss(ell, lt, p.to(T), eta) + lam * reg.estimate(b)
        loss.backward()
        return loss

    opt.step(closure)
    expect = (-2.0 + eta * 0.2 + lam / 2 * -1.0) / (1 + lam / 2)
    assert ell.item() == pytest.approx(expect, abs=1e-10)
