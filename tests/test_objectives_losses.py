"""Self-play losses, RSPOLoss contract (metrics, errors, split invariance) and presets."""

import math

import pytest
import torch

from rspo.objectives import (
    PRESETS,
    Preset,
    RSPOLoss,
    SampleBatch,
    inpo_loss,
    sppo_hard_loss,
    sppo_loss,
    sppo_pair_loss,
)

T = torch.float64


def t(*xs):
    return torch.tensor(xs, dtype=T)


# ----------------------------------------------------------------------------- hand numbers
def test_sppo_loss_hand_numbers():
    # e1 = -1 + 1.5 - 2*(0.9 - 0.5) = -0.3 ; e2 = -2 + 1 - 2*(0.25 - 0.5) = -0.5
    lt, l0, p = t(-1.0, -2.0), t(-1.5, -1.0), t(0.9, 0.25)
    assert sppo_loss(lt, l0, p, 2.0).item() == pytest.approx((0.09 + 0.25) / 2, abs=1e-15)
    assert sppo_loss(lt, l0, p, 2.0, "sum").item() == pytest.approx(0.34, abs=1e-15)
    assert torch.allclose(sppo_loss(lt, l0, p, 2.0, "none"), t(0.09, 0.25))
    with pytest.raises(ValueError, match="reduction"):
        sppo_loss(lt, l0, p, 2.0, "avg")


def test_sppo_pair_form_equals_row_mean_over_best_worst():
    g = torch.Generator().manual_seed(0)
    lw, ll, tw, tl = (torch.randn(7, generator=g, dtype=T) for _ in range(4))
    pw, pl = torch.rand(7, generator=g, dtype=T), torch.rand(7, generator=g, dtype=T)
    pair = sppo_pair_loss(lw, ll, tw, tl, pw, pl, eta=3.0)
    rows = sppo_loss(torch.cat([lw, ll]), torch.cat([tw, tl]), torch.cat([pw, pl]), 3.0)
    assert pair.item() == pytest.approx(rows.item(), rel=1e-14)


def test_sppo_hard_hand_numbers_and_relation():
    # a = -1 + 1.5 = 0.5, b = -2 + 1 = -1, eta = 2: (0.5 - 1)^2 + (-1 + 1)^2 = 0.25
    val = sppo_hard_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.0), eta=2.0)
    assert val.item() == pytest.approx(0.25, abs=1e-15)
    g = torch.Generator().manual_seed(1)
    lw, ll, tw, tl = (torch.randn(5, generator=g, dtype=T) for _ in range(4))
    hard = sppo_hard_loss(lw, ll, tw, tl, eta=4.0)
    pair = sppo_pair_loss(lw, ll, tw, tl, torch.ones(5, dtype=T), torch.zeros(5, dtype=T), 4.0)
    assert hard.item() == pytest.approx(2 * pair.item(), rel=1e-14)


def test_inpo_hand_numbers_and_minimizer():
    # Δθ = 1, Δt = -0.5, Δref = 1.5, ητ = 0.2: err = 1 - 0.3 + 0.4 - 1 = 0.1
    val = inpo_loss(t(-1.0), t(-2.0), t(-1.5), t(-1.0), t(-1.0), t(-2.5), eta=2.0, tau=0.1)
    assert val.item() == pytest.approx(0.01, abs=1e-14)
    # zero loss exactly at the mirror step log π = (1-ητ) log π_t + ητ log π_ref + η·s, s = ±1/2
    lt_w, lt_l, lr_w, lr_l, eta, tau = -3.0, -2.0, -1.0, -4.0, 1.5, 0.3
    mix = eta * tau
    w = (1 - mix) * lt_w + mix * lr_w + eta * 0.5
    lo = (1 - mix) * lt_l + mix * lr_l - eta * 0.0
    assert inpo_loss(t(w), t(lo), t(lt_w), t(lt_l), t(lr_w), t(lr_l), eta, tau).item() < 1e-28


# ----------------------------------------------------------------------------- RSPOLoss
def make_batch(n=12, m=5, seed=0, labels=False):
    g = torch.Generator().manual_seed(seed)
    lt = (torch.randn(n, generator=g, dtype=T) - 3).requires_grad_(True)
    l0 = lt.detach() + 0.3 * torch.randn(n, generator=g, dtype=T)
    lr = lt.detach() + 0.5 * torch.randn(n, generator=g, dtype=T)
    p = torch.rand(n, generator=g, dtype=T)
    rt = (torch.randn(m, generator=g, dtype=T) - 3).requires_grad_(True)
    rr = rt.detach() + 0.4 * torch.randn(m, generator=g, dtype=T)
    lab = None
    if labels:
        sign = torch.where(torch.rand(n // 2, generator=g) < 0.5, 1.0, -1.0).to(T)
        lab = torch.stack([sign, -sign], 1).reshape(-1)
    return SampleBatch(lt, l0, lr, p, lab, rt, rr)


def sub(b, rows, ref_rows):
    def pick(x, idx):
        return None if x is None else x[idx]

    return SampleBatch(
        b.logp_theta[rows], b.logp_t[rows], b.logp_ref[rows], b.win_rate[rows],
        pick(b.label, rows), pick(b.ref_logp_theta, ref_rows), pick(b.ref_logp_ref, ref_rows),
    )  # fmt: skip


SPLIT_CASES = [
    ("sppo", "0.5*forward_kl[nll] + 2*reverse_kl + 0.1*chi2", None),
    ("sppo", "forward_kl[ratio] + 10*reverse_kl[k2]", None),
    ("sppo_hard", "reverse_kl[k3] + forward_kl[is]", None),
    ("inpo", "chi2[ratio]", 0.05),
]


@pytest.mark.parametrize("loss_type,spec,tau", SPLIT_CASES)
def test_split_invariance(loss_type, spec, tau):
    """Micro-batches with global counts add up to the full-batch loss and gradient."""
    fn = RSPOLoss(eta=2.0, regularizer=spec, coef=0.3, loss_type=loss_type, tau=tau)
    b = make_batch(labels=True)
    full, fm = fn(b)
    g_full = torch.autograd.grad(full, [b.logp_theta, b.ref_logp_theta], allow_unused=True)
    splits = [(slice(0, 4), slice(0, 2)), (slice(4, 6), slice(2, 2)), (slice(6, 12), slice(2, 5))]
    total, parts = 0.0, []
    for rows, ref_rows in splits:
        mb = sub(b, rows, ref_rows)
        loss, m = fn(mb, num_samples=12, num_ref_samples=5)
        total = total + loss
        parts.append(m)
    g_split = torch.autograd.grad(total, [b.logp_theta, b.ref_logp_theta], allow_unused=True)
    assert total.item() == pytest.approx(full.item(), rel=1e-13)
    for a, c in zip(g_full, g_split):
        if a is None:
            assert c is None
        else:
            assert torch.allclose(a, c, rtol=1e-12, atol=1e-14)
    for key in ("loss", "selfplay_loss", "reg"):
        assert sum(m[key] for m in parts) == pytest.approx(fm[key], rel=1e-12)


def test_micro_batch_without_ref_rows_contributes_zero_only_with_global_count():
    fn = RSPOLoss(1.0, "forward_kl[nll]", 1.0)
    b = make_batch()
    nb = SampleBatch(b.logp_theta, b.logp_t, b.logp_ref, b.win_rate)
    loss, m = fn(nb, num_samples=12, num_ref_samples=5)
    assert m["reg"] == 0.0 and loss.item() == pytest.approx(m["selfplay_loss"])
    with pytest.raises(ValueError, match="needs π_ref samples"):
        fn(nb)


@pytest.mark.parametrize("loss_type,spec,tau", SPLIT_CASES)
def test_gradcheck_full_loss(loss_type, spec, tau):
    fn = RSPOLoss(eta=1.5, regularizer=spec, coef=0.7, loss_type=loss_type, tau=tau)
    b = make_batch(n=6, m=3, seed=3, labels=True)

    def f(lt, rt):
        return fn(SampleBatch(lt, b.logp_t, b.logp_ref, b.win_rate, b.label, rt, b.ref_logp_ref))[0]

    lt = b.logp_theta.detach().clone().requires_grad_(True)
    rt = b.ref_logp_theta.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (lt, rt))


def test_loss_value_and_metrics_hand_numbers():
    # one pair of rows; reverse_kl[k2] with d = [1, -0.5]: mean ½d² = (0.5 + 0.125)/2
    lt = t(-1.0, -2.0).requires_grad_(True)
    b = SampleBatch(lt, t(-1.5, -1.0), t(-2.0, -1.5), t(0.9, 0.25))
    loss, m = RSPOLoss(2.0, "reverse_kl[k2]", coef=0.4)(b)
    assert m["selfplay_loss"] == pytest.approx(0.17, abs=1e-15)
    assert m["reg"] == pytest.approx(0.3125, abs=1e-15)
    assert m["reg_loss"] == pytest.approx(0.125, abs=1e-15)
    assert loss.item() == pytest.approx(0.17 + 0.125, abs=1e-15)
    assert m["logratio_mean"] == pytest.approx(-0.25)
    assert m["ref_logratio_mean"] == pytest.approx(0.25)
    assert m["log_is_weight_max"] == pytest.approx(0.5)
    # mixtures report each component's (unweighted) estimate
    _, m2 = RSPOLoss(2.0, "2*reverse_kl[k2] + chi2[ratio]", coef=1.0)(b)
    assert m2["reg/reverse_kl[k2]"] == pytest.approx(0.3125)
    assert m2["reg/chi2[ratio]"] == pytest.approx((math.e + math.exp(-0.5)) / 2)
    assert m2["reg"] == pytest.approx(2 * 0.3125 + (math.e + math.exp(-0.5)) / 2)


def test_labels_pick_chosen_row_of_each_pair():
    lt, l0 = t(-1.0, -2.0), t(-1.5, -1.0)
    fwd = SampleBatch(lt, l0, l0, t(0.5, 0.5), label=t(1, -1))
    swapped = SampleBatch(lt.flip(0), l0.flip(0), l0.flip(0), t(0.5, 0.5), label=t(-1, 1))
    fn = RSPOLoss(2.0, loss_type="sppo_hard")
    assert fn(fwd)[0].item() == pytest.approx(0.25) and fn(swapped)[0].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="one \\+1 and one -1"):
        fn(SampleBatch(lt, l0, l0, t(0.5, 0.5), label=t(1, 1)))
    with pytest.raises(ValueError, match="even number"):
        fn(SampleBatch(t(1.0), t(1.0), t(1.0), t(0.5)))


def test_constructor_and_shape_errors():
    with pytest.raises(ValueError, match="eta"):
        RSPOLoss(0.0)
    with pytest.raises(ValueError, match="loss_type"):
        RSPOLoss(1.0, loss_type="dpo")
    with pytest.raises(ValueError, match="needs a finite tau"):
        RSPOLoss(1.0, loss_type="inpo")
    with pytest.raises(ValueError, match="only used by loss_type 'inpo'"):
        RSPOLoss(1.0, tau=0.1)
    with pytest.raises(ValueError, match="no regularizer"):
        RSPOLoss(1.0, None, coef=0.5)
    with pytest.raises(ValueError, match="valid: chi2, forward_kl, reverse_kl"):
        RSPOLoss(1.0, "kl", coef=0.5)
    with pytest.raises(ValueError, match="equal length"):
        RSPOLoss(1.0)(SampleBatch(t(1.0, 2.0), t(1.0), t(1.0, 2.0), t(0.5, 0.5)))
    assert RSPOLoss(1.0, "forward_kl[nll]", 1.0).needs_ref_samples
    assert not RSPOLoss(1.0, "forward_kl", 1.0).needs_ref_samples
    assert RSPOLoss(1.0, "0.5*forward_kl[nll] + reverse_kl", 1.0).needs_ref_samples
    assert not RSPOLoss(1.0).needs_ref_samples


# ----------------------------------------------------------------------------- presets
def test_presets_complete_and_constructible():
    assert set(PRESETS) == {
        "sppo", "rspo", "rspo_reverse", "rspo_forward", "rspo_chi2", "nash_md", "inpo", "mpo",
    }  # fmt: skip
    for name, p in PRESETS.items():
        assert isinstance(p, Preset) and p.name == name and p.citation and p.note
        fn = p.make_loss(1000.0)
        assert fn.loss_type == p.loss_type and fn.coef == p.coef
    assert PRESETS["nash_md"].exact is False and "NOT reproduced" in PRESETS["nash_md"].note
    assert PRESETS["mpo"].magnet_refresh == 2
    assert PRESETS["inpo"].make_loss(1000.0).tau == pytest.approx(0.5 / 1000.0)


def test_rspo_preset_matches_authors_loss():
    """Package preset == authors' mean((e_w²+e_l²)/2) + λ(mean_w + mean_l)(ratio + 5 d²)."""
    b = make_batch(n=8, seed=5)
    eta, lam = 1000.0, 0.1
    ours, _ = PRESETS["rspo"].make_loss(eta)(b)
    lt, l0, lr, p = b.logp_theta, b.logp_t, b.logp_ref, b.win_rate
    w, lo = slice(0, None, 2), slice(1, None, 2)
    e2 = (lt - l0 - eta * (p - 0.5)) ** 2
    sp = ((e2[w] + e2[lo]) / 2).mean()

    def reg(ix):
        d = lt[ix] - lr[ix]
        return torch.exp(torch.clamp(-d, max=10.0)).mean() + 5 * (d**2).mean()

    authors = sp + lam * (reg(w) + reg(lo))
    assert ours.item() == pytest.approx(authors.item(), rel=1e-13)
    tau = PRESETS["rspo"].tau_per_component(eta)
    assert tau["forward_kl"] == pytest.approx(1e-4) and tau["reverse_kl"] == pytest.approx(1e-3)
