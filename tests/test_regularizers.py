"""Regularizers: tabular forms, estimator values/gradients, bias properties, registry, specs."""

import math

import numpy as np
import pytest
import torch

from rspo.objectives import (
    Chi2,
    ForwardKL,
    Mixture,
    Regularizer,
    ReverseKL,
    SampleBatch,
    available_regularizers,
    get_regularizer,
    parse_regularizer,
    register_regularizer,
)

T = torch.float64
PI = np.array([0.5, 0.3, 0.2])
REF = np.array([0.25, 0.25, 0.5])
ALL = [(cls, est) for cls in (ReverseKL, ForwardKL, Chi2) for est in cls.estimators]


# ----------------------------------------------------------------------------- tabular
def test_tabular_values_hand_numbers():
    ln = math.log
    assert ReverseKL().value(PI, REF) == pytest.approx(
        0.5 * ln(2) + 0.3 * ln(1.2) + 0.2 * ln(0.4), abs=1e-15
    )
    assert ForwardKL().value(PI, REF) == pytest.approx(
        0.25 * ln(0.5) + 0.25 * ln(0.25 / 0.3) + 0.5 * ln(2.5), abs=1e-15
    )
    assert Chi2().value(PI, REF) == pytest.approx(0.25 + 0.01 + 0.18, abs=1e-15)
    assert ReverseKL().value(REF, REF) == 0 and ForwardKL().value(REF, REF) == 0
    assert ReverseKL().value(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(ln(2))
    mix = parse_regularizer("0.5*forward_kl + 2*chi2")
    assert mix.value(PI, REF) == pytest.approx(0.5 * ForwardKL().value(PI, REF) + 0.88)


@pytest.mark.parametrize("spec", ["reverse_kl", "forward_kl", "chi2", "0.3*forward_kl + chi2"])
def test_tabular_grad_hess_vs_finite_differences(spec):
    reg = get_regularizer(spec)
    h = 1e-6
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        fd = (reg.value(PI + e, REF) - reg.value(PI - e, REF)) / (2 * h)
        assert reg.grad(PI, REF)[i] == pytest.approx(fd, rel=1e-8)
        fd2 = (reg.grad(PI + e, REF)[i] - reg.grad(PI - e, REF)[i]) / (2 * h)
        assert reg.hess(PI, REF)[i] == pytest.approx(fd2, rel=1e-7)
    u = np.log(PI)
    assert np.allclose(reg.grad_log(u, REF), reg.grad(PI, REF), rtol=1e-14)
    assert np.allclose(reg.hess_log(u, REF), reg.hess(PI, REF) * PI, rtol=1e-14)


@pytest.mark.parametrize("spec", ["reverse_kl", "forward_kl", "chi2", "forward_kl + 2*reverse_kl"])
def test_grad_inverse(spec):
    reg = get_regularizer(spec)
    sigma = np.array([1e-6, 0.01, 0.3, 0.9])
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    back = reg.grad_inv(reg.grad(sigma, ref), ref)
    assert np.allclose(back, sigma, rtol=1e-10)
    generic = Regularizer.grad_inv(reg, reg.grad(sigma, ref), ref)  # bisection fallback
    assert np.allclose(generic, sigma, rtol=1e-10)
    assert np.all(reg.grad_inv(np.full(4, 50.0), ref, upper=2.0) <= 2.0)


def test_chi2_grad_inverse_hits_zero():
    assert Chi2().grad_inv(np.array([-2.5, -2.0, 0.0]), np.array([0.5, 0.5, 0.5])).tolist() == [
        0.0,
        0.0,
        0.5,
    ]


# ----------------------------------------------------------------------------- estimator values
# one row: ℓθ = -1, ℓt = -1.5, ℓref = -2  →  d = 1, log w = 0.5, log ρ = -0.5
HAND = {
    ("reverse_kl", "is"): (math.exp(0.5), 2 * math.exp(0.5)),
    ("reverse_kl", "k1"): (1.0, 1.0),
    ("reverse_kl", "k2"): (0.5, 1.0),
    ("reverse_kl", "k3"): (math.exp(-1), 1 - math.exp(-1)),
    ("reverse_kl", "reinforce"): (math.exp(0.5), math.exp(0.5)),
    ("reverse_kl", "noent"): (-2.0, 2.0),  # −ℓθ·ℓref = −(−1)(−2); gradient −ℓref = 2
    ("forward_kl", "is"): (-math.exp(-0.5), -math.exp(-0.5)),
    ("forward_kl", "ratio"): (math.exp(-1), -math.exp(-1)),
    ("chi2", "is"): (math.exp(1.5) - 1, 2 * math.exp(1.5)),
    ("chi2", "ratio"): (math.e, math.e),
}


@pytest.mark.parametrize("key", sorted(HAND))
def test_estimator_hand_values_and_gradients(key):
    reg = get_regularizer(f"{key[0]}[{key[1]}]")
    lt = torch.tensor([-1.0], dtype=T, requires_grad=True)
    b = SampleBatch(lt, torch.tensor([-1.5], dtype=T), torch.tensor([-2.0], dtype=T), lt.detach())
    val = reg.estimate(b)
    (g,) = torch.autograd.grad(val, lt)
    assert val.item() == pytest.approx(HAND[key][0], rel=1e-14)
    assert g.item() == pytest.approx(HAND[key][1], rel=1e-14)


def test_nll_estimator_hand_value():
    rt = torch.tensor([-3.0, -1.0], dtype=T, requires_grad=True)
    one = torch.zeros(1, dtype=T)
    b = SampleBatch(one, one, one, one, ref_logp_theta=rt, ref_logp_ref=torch.tensor([-2.5, -2.0]))
    val = ForwardKL("nll").estimate(b)
    assert val.item() == pytest.approx((0.5 - 1.0) / 2)
    assert torch.autograd.grad(val, rt)[0].tolist() == [-0.5, -0.5]


def test_log_clip_caps_weight_and_kills_its_gradient():
    lt = torch.tensor([-1.0], dtype=T, requires_grad=True)
    b = SampleBatch(lt, torch.tensor([-1.5], dtype=T), torch.tensor([-2.0], dtype=T), lt.detach())
    reg = ReverseKL("is", log_clip=0.2)  # w = e^0.2 (clipped), term w·d, d = 1
    val = reg.estimate(b)
    assert val.item() == pytest.approx(math.exp(0.2))
    assert torch.autograd.grad(val, lt)[0].item() == pytest.approx(math.exp(0.2))
    assert ReverseKL("is", log_clip=None).estimate(b).item() == pytest.approx(math.exp(0.5))


@pytest.mark.parametrize("cls,est", [ce for ce in ALL if ce[1] != "reinforce"])
def test_estimator_gradcheck(cls, est):
    """Autograd = finite differences (not for reinforce, a surrogate whose gradient is by
    design sg(w·d)·∇ℓ_θ, not the derivative of its value)."""
    reg = cls(est)
    g = torch.Generator().manual_seed(0)
    lt = (torch.randn(5, generator=g, dtype=T) - 2).requires_grad_(True)
    l0 = lt.detach() + 0.3 * torch.randn(5, generator=g, dtype=T)
    lr = lt.detach() + 0.3 * torch.randn(5, generator=g, dtype=T)

    def f(x):
        return reg.estimate(SampleBatch(x, l0, lr, l0, ref_logp_theta=x, ref_logp_ref=lr))

    assert torch.autograd.gradcheck(f, (lt,))


# ----------------------------------------------------------------------------- bias properties
N_OUT = 6
THETA_T = torch.tensor([0.3, -0.5, 1.0, 0.0, -1.2, 0.6], dtype=T)
THETA_REF = torch.tensor([-1.5, 1.2, 0.1, 1.6, -1.0, -0.8], dtype=T)
THETA_OFF = THETA_T + torch.tensor([1.0, 0.4, -1.0, 0.6, 0.8, -0.8], dtype=T)


def exact_value_and_grad(reg, theta):
    """R(softmax θ) and its gradient w.r.t. θ: π ⊙ (φ'(π) − Σ π φ'(π))."""
    pi = torch.softmax(theta, 0).numpy()
    ref = torch.softmax(THETA_REF, 0).numpy()
    g = reg.grad(pi, ref)
    return reg.value(pi, ref), pi * (g - pi @ g)


def outcome_terms(reg, theta):
    """Per-outcome estimator terms (one row per outcome y) and their Jacobian [6, 6] in θ."""
    lt_t = torch.log_softmax(THETA_T, 0)
    lr = torch.log_softmax(THETA_REF, 0)

    def terms(th):
        lp = torch.log_softmax(th, 0)
        return reg.per_sample(SampleBatch(lp, lt_t, lr, lt_t, ref_logp_theta=lp, ref_logp_ref=lr))

    return terms(theta).detach(), torch.autograd.functional.jacobian(terms, theta)


def sampling_probs(reg):
    return torch.softmax(THETA_REF if reg.needs_ref_samples else THETA_T, 0)


@pytest.mark.parametrize("cls,est", ALL)
def test_exact_expectation_matches_declared_bias(cls, est):
    """E[R̂] and E[∇R̂] (exact sums over outcomes) vs R and ∇R, at θ_t and θ ≠ θ_t."""
    reg = cls(est)
    info = reg.info
    q = sampling_probs(reg)
    for where, theta in (("at_theta_t", THETA_T), ("off", THETA_OFF)):
        vals, jac = outcome_terms(reg, theta)
        e_val = float(q @ vals)
        e_grad = (q @ jac).numpy()
        r_val, r_grad = exact_value_and_grad(reg, theta)
        v_ok = info.value_unbiased == "all" or (
            info.value_unbiased == "at_theta_t" and where == "at_theta_t"
        )
        g_ok = info.grad_unbiased == "all" or (
            info.grad_unbiased == "at_theta_t" and where == "at_theta_t"
        )
        if v_ok:
            assert e_val == pytest.approx(r_val, abs=1e-12), (est, where)
        else:
            assert abs(e_val - r_val) > 1e-2, (est, where, e_val, r_val)
        if g_ok:
            assert np.allclose(e_grad, r_grad, atol=1e-12), (est, where)
        else:
            assert np.abs(e_grad - r_grad).max() > 1e-2, (est, where)
        if where == "at_theta_t" and info.grad_scale_at_theta_t is not None:
            assert np.allclose(e_grad, info.grad_scale_at_theta_t * r_grad, atol=1e-12)


def test_k3_gradient_is_forward_kl_gradient_at_theta_t():
    _, jac = outcome_terms(ReverseKL("k3"), THETA_T)
    e_grad = (torch.softmax(THETA_T, 0) @ jac).numpy()
    _, fwd = exact_value_and_grad(ForwardKL(), THETA_T)
    assert np.allclose(e_grad, fwd, atol=1e-12)


def test_noent_gradient_is_its_formula_and_the_cross_entropy_gradient_at_theta_t():
    """reverse_kl[noent] = −ℓ_θ·ℓ_ref: its per-outcome Jacobian in θ (tabular softmax) is
    −ℓ_ref(y)·(e_y − π_θ) by the formula and by central differences; at θ_t its π_t-expected
    gradient is ∇CE(π_θ, π_ref) = ∇KL(π_θ‖π_ref) + ∇H(π_θ); at π_θ = π_ref neither its value
    nor its gradient is 0 (not a divergence)."""
    reg = ReverseKL("noent")
    lr = torch.log_softmax(THETA_REF, 0)
    pi_t = torch.softmax(THETA_T, 0)
    vals, jac = outcome_terms(reg, THETA_T)
    formula = -lr[:, None] * (torch.eye(N_OUT, dtype=T) - pi_t[None, :])
    assert torch.allclose(jac, formula, atol=1e-14)
    h = 1e-6
    for i in range(N_OUT):
        e = torch.zeros(N_OUT, dtype=T)
        e[i] = h
        fd = (outcome_terms(reg, THETA_T + e)[0] - outcome_terms(reg, THETA_T - e)[0]) / (2 * h)
        assert torch.allclose(fd, formula[:, i], atol=1e-8)
    assert torch.allclose(vals, -torch.log_softmax(THETA_T, 0) * lr, atol=1e-15)

    def ce(th):
        return float(torch.softmax(th, 0) @ -lr)

    def entropy(th):
        p = torch.softmax(th, 0)
        return float(-(p * p.log()).sum())

    def fd_grad(f, th):
        out = np.zeros(N_OUT)
        for i in range(N_OUT):
            e = torch.zeros(N_OUT, dtype=T)
            e[i] = h
            out[i] = (f(th + e) - f(th - e)) / (2 * h)
        return out

    e_grad = (pi_t @ jac).numpy()
    assert np.allclose(e_grad, fd_grad(ce, THETA_T), atol=1e-8)
    _, kl_grad = exact_value_and_grad(ReverseKL(), THETA_T)
    assert np.allclose(e_grad, kl_grad + fd_grad(entropy, THETA_T), atol=1e-8)
    # at π_θ = π_ref (sampled from π_ref): value −E[ℓ_ref²] < 0, gradient ∇H(π_ref) ≠ 0
    q = torch.softmax(THETA_REF, 0)
    lref = torch.log_softmax(THETA_REF, 0)
    at_ref = reg.per_sample(SampleBatch(lref, lref, lref, lref))
    assert float(q @ at_ref) == pytest.approx(-float(q @ lref.square()), rel=1e-14)
    assert float(q @ at_ref) < -1.0
    g_ref = (q @ (-lref[:, None] * (torch.eye(N_OUT, dtype=T) - q[None, :]))).numpy()
    assert np.allclose(g_ref, fd_grad(entropy, THETA_REF), atol=1e-8)
    assert np.abs(g_ref).max() > 0.1


def test_is_clip_reaches_every_estimator_of_a_spec():
    """RSPOLoss(log_clip=R) (config objective.is_clip) clips forward_kl[ratio] at e^R: here
    ℓ_ref − ℓ_θ = 7, so R = 5 gives e^5 with zero gradient, the default R = 10 gives e^7."""
    from rspo.objectives import RSPOLoss

    lt = torch.tensor([-9.0], dtype=T, requires_grad=True)
    b = SampleBatch(lt, torch.tensor([-9.0], dtype=T), torch.tensor([-2.0], dtype=T), lt.detach())
    five = RSPOLoss(1.0, "forward_kl[ratio]", 1.0, log_clip=5.0).regularizer
    val = five.estimate(b)
    assert val.item() == pytest.approx(math.exp(5.0), rel=1e-14)
    assert torch.autograd.grad(val, lt)[0].item() == 0.0
    ten = RSPOLoss(1.0, "forward_kl[ratio]", 1.0).regularizer
    assert ten.log_clip == 10.0 and ten.estimate(b).item() == pytest.approx(math.exp(7.0))
    mix = RSPOLoss(1.0, "forward_kl[ratio] + 10*reverse_kl[k2]", 1.0, log_clip=7.0).regularizer
    assert [c.log_clip for _, c in mix.components()] == [7.0, 7.0]
    with pytest.raises(ValueError, match="log_clip"):
        RSPOLoss(1.0, "forward_kl[ratio]", 1.0, log_clip=0.0)


def test_objective_is_clip_config_key_is_validated_and_reaches_the_run_loss():
    from rspo.config import ConfigError, load_config
    from rspo.selfplay.train import make_loss

    cfg = load_config(None, ["--objective.regularizer", "forward_kl[ratio]",
                             "--objective.coef", "0.2", "--objective.is_clip", "5"])  # fmt: skip
    assert cfg.objective.is_clip == 5.0
    loss = make_loss(cfg.objective, 0.2)
    assert loss.regularizer.log_clip == 5.0
    assert load_config(None, []).objective.is_clip == 10.0  # the authors' default R
    for bad in ("0", "-1", ".inf"):
        with pytest.raises(ConfigError, match="objective.is_clip"):
            load_config(None, ["--objective.is_clip", bad])


def test_authors_ratio_values_at_theta_t():
    q = torch.softmax(THETA_T, 0)
    chi2, _ = exact_value_and_grad(Chi2(), THETA_T)
    assert float(q @ outcome_terms(ForwardKL("ratio"), THETA_T)[0]) == pytest.approx(1.0)
    assert float(q @ outcome_terms(Chi2("ratio"), THETA_T)[0]) == pytest.approx(chi2 + 1.0)


@pytest.mark.parametrize("cls,est", ALL)
def test_monte_carlo_estimates_within_standard_errors(cls, est):
    """Seeded samples through the real batch path: unbiased → |z| < 4.5, biased → |z| > 10."""
    reg = cls(est)
    info = reg.info
    m = 40_000
    gen = torch.Generator().manual_seed(1234)
    q = sampling_probs(reg)
    ys = torch.multinomial(q, m, replacement=True, generator=gen)
    for where, theta in (("at_theta_t", THETA_T), ("off", THETA_OFF)):
        th = theta.clone().requires_grad_(True)
        lp = torch.log_softmax(th, 0)
        lt_t = torch.log_softmax(THETA_T, 0)
        lr = torch.log_softmax(THETA_REF, 0)
        b = SampleBatch(
            lp[ys], lt_t[ys], lr[ys], lt_t[ys], ref_logp_theta=lp[ys], ref_logp_ref=lr[ys]
        )
        est_val = reg.estimate(b)
        (est_grad,) = torch.autograd.grad(est_val, th)
        vals, jac = outcome_terms(reg, theta)
        se_val = float(vals[ys].std()) / math.sqrt(m)
        se_grad = jac[ys].std(0).numpy() / math.sqrt(m)
        r_val, r_grad = exact_value_and_grad(reg, theta)
        z_val = (float(est_val.detach()) - r_val) / se_val if se_val > 0 else 0.0
        z_grad = np.abs(est_grad.numpy() - r_grad) / np.maximum(se_grad, 1e-300)
        v_ok = info.value_unbiased == "all" or (
            info.value_unbiased == "at_theta_t" and where == "at_theta_t"
        )
        g_ok = info.grad_unbiased == "all" or (
            info.grad_unbiased == "at_theta_t" and where == "at_theta_t"
        )
        assert (abs(z_val) < 4.5) if v_ok else (abs(z_val) > 10), (est, where, z_val)
        zg = z_grad[se_grad > 0].max() if (se_grad > 0).any() else 0.0
        if g_ok:
            assert zg < 4.5, (est, where, zg)
        else:
            assert zg > 10, (est, where, zg)


# ----------------------------------------------------------------------------- registry, specs
def test_registry_and_errors():
    assert available_regularizers() == ["chi2", "forward_kl", "reverse_kl"]
    assert register_regularizer(ReverseKL) is ReverseKL  # same class twice: fine

    class Other(ReverseKL):
        name = "reverse_kl"

    with pytest.raises(ValueError, match="already registered"):
        register_regularizer(Other)
    with pytest.raises(
        ValueError, match="unknown estimator 'k9'.*valid: is, k1, k2, k3, reinforce"
    ):
        ReverseKL("k9")
    with pytest.raises(TypeError):
        register_regularizer(int)
    assert available_regularizers() == ["chi2", "forward_kl", "reverse_kl"]


def test_parse_specs():
    r = parse_regularizer("forward_kl")
    assert isinstance(r, ForwardKL) and r.estimator == "is" and not r.needs_ref_samples
    m = parse_regularizer("0.5*forward_kl + 0.5*reverse_kl")
    assert isinstance(m, Mixture)
    assert [(w, c.spec) for w, c in m.components()] == [
        (0.5, "forward_kl[is]"),
        (0.5, "reverse_kl[is]"),
    ]
    m2 = parse_regularizer(" 1*forward_kl[ratio]+5 * reverse_kl[ k2 ] ")
    assert [(w, c.spec) for w, c in m2.components()] == [
        (1.0, "forward_kl[ratio]"),
        (5.0, "reverse_kl[k2]"),
    ]
    assert parse_regularizer("2e-1*chi2 + 1e+1*reverse_kl").components()[1][0] == 10.0
    assert parse_regularizer(m2.spec) == m2
    assert isinstance(parse_regularizer("2*chi2"), Mixture)
    assert parse_regularizer("forward_kl[nll] + reverse_kl").needs_ref_samples
    for none in (None, "", " none ", "None"):
        assert get_regularizer(none) is None
    assert get_regularizer(r) is r
    nested = Mixture([(2.0, m), (1.0, "chi2")])
    assert [w for w, _ in nested.components()] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "spec,match",
    [
        ("kl", "unknown regularizer 'kl'.*valid: chi2, forward_kl, reverse_kl"),
        ("0.5*forward_kl + ", "stray '\\+'"),
        ("forward_kl[xx]", "unknown estimator 'xx' in term 'forward_kl\\[xx\\]'"),
        ("abc*reverse_kl", "bad weight 'abc' in term 'abc\\*reverse_kl'"),
        ("0*chi2", "must be finite and > 0"),
        ("reverse_kl + reverse_kl", "duplicate component"),
        ("reverse_kl chi2", "cannot parse term 'reverse_kl chi2'"),
    ],
)
def test_parse_errors_name_the_bad_token(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_regularizer(spec)


def test_get_regularizer_type_error():
    with pytest.raises(TypeError):
        get_regularizer(3)
