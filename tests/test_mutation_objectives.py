"""``Mixture.estimate`` is the weighted sum of its components' own estimates (public API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rspo.objectives import Chi2, Mixture, ReverseKL, SampleBatch
from rspo.objectives.regularizer import EstimatorInfo, Regularizer


def _batch() -> SampleBatch:
    return SampleBatch(
        logp_theta=torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64),
        logp_t=torch.tensor([-1.2, -1.5, -0.7], dtype=torch.float64),
        logp_ref=torch.tensor([-1.1, -2.5, -0.4], dtype=torch.float64),
        win_rate=torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64),
    )


@pytest.mark.parametrize("w1,w2", [(0.25, 3.0), (2.0, 0.5)])
def test_mixture_estimate_weights_each_component(w1, w2):
    b = _batch()
    rk, c2 = ReverseKL(), Chi2()
    mix = Mixture([(w1, rk), (w2, c2)])
    parts = mix.estimate_components(b)
    assert [(s, w) for s, w, _ in parts] == [(rk.spec, w1), (c2.spec, w2)]
    want = w1 * rk.estimate(b) + w2 * c2.estimate(b)
    assert float(mix.estimate(b)) == pytest.approx(float(want), rel=1e-12)
    # and the weights matter: the two orders of the same weights give different values
    other = Mixture([(w2, rk), (w1, c2)]).estimate(b)
    assert float(other) != pytest.approx(float(want))
    assert np.isfinite(float(want)) and float(rk.estimate(b)) != float(c2.estimate(b))


def test_loss_repr_names_every_setting():
    from rspo.objectives import RSPOLoss

    assert repr(RSPOLoss(eta=2.0, regularizer="reverse_kl", coef=0.5)) == (
        "RSPOLoss(eta=2.0, regularizer='reverse_kl[is]', coef=0.5, loss_type='sppo', tau=None)"
    )
    assert repr(RSPOLoss(eta=1.0)).startswith("RSPOLoss(eta=1.0, regularizer=None, coef=0.0")


def test_rspo_preset_is_the_papers_headline_setting():
    from rspo.objectives import PRESETS

    p = PRESETS["rspo"]
    assert (p.loss_type, p.regularizer, p.coef, p.samples, p.magnet_refresh, p.tau_eta) == (
        "sppo", "forward_kl[ratio] + 10*reverse_kl[k2]", 0.2, "best_worst", None, None
    )  # fmt: skip


def test_sample_batch_names_each_shape_error_exactly():
    """Every ``validate`` error names the offending tensors and their sizes."""
    b = _batch()
    b.ref_logp_theta = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        b.validate()
    assert str(e.value) == "SampleBatch.ref_logp_theta and ref_logp_ref must be given together"
    b.ref_logp_ref = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        b.validate()
    assert str(e.value) == "SampleBatch.ref_logp_theta and ref_logp_ref differ in length: 2 vs 3"
    b = _batch()
    b.win_rate = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        b.validate()
    assert str(e.value) == (
        "SampleBatch.win_rate has 2 rows, logp_theta has 3; "
        "all per-sample tensors must have equal length"
    )


# ----------------------------------------------------------------- presets vs the docs
def _docs_presets() -> dict[str, dict]:
    """The presets table of docs/objectives.md, parsed (an independent statement of them)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "objectives.md").read_text()
    head = "| preset | loss | regularizer | coef | samples | paper | exact | note |"
    lines = text[text.index(head) :].splitlines()[2:]
    out = {}
    for line in lines:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, loss, reg, coef, samples, paper, exact = cells[:7]
        out[name.strip("`")] = {
            "loss_type": loss,
            "regularizer": None if reg.startswith("–") else reg.strip("`"),
            "coef": float(coef),
            "samples": samples,
            "citation": paper,
            "exact": exact.startswith("yes"),
        }
    return out


def test_presets_are_the_documented_table():
    """Every field of every preset as docs/objectives.md states it; MPO's magnet every 2
    iterations and INPO's ητ = 0.5 (its note) — calling ``_presets()`` itself, so a change
    to the table is seen (``PRESETS`` is built once at import)."""
    from rspo.objectives.presets import _presets

    got = _presets()
    docs = _docs_presets()
    assert list(got) == list(docs)
    for name, p in got.items():
        assert p.name == name
        fields = {k: getattr(p, k) for k in docs[name]}
        assert fields == docs[name], name
        assert (p.magnet_refresh, p.tau_eta) == (
            (2, None) if name == "mpo" else (None, 0.5) if name == "inpo" else (None, None)
        ), name
        assert p.note and isinstance(p.note, str)


def test_preset_notes_cite_the_authors_of_their_paper():
    from rspo.objectives.presets import _presets

    authors = {
        "2405.00675": "(Wu et al.)",
        "2503.00030": "(Tang et al.)",
        "2312.00886": "(Munos et al.)",
        "2407.00617": "(Zhang et al.)",
        "2410.16714": "(Wang et al.)",
    }  # fmt: skip  (the module docstring's list)
    for p in _presets().values():
        assert authors[p.citation] in p.note, p.name
    assert "NOT reproduced" in _presets()["nash_md"].note


# ----------------------------------------------------------------- mixture, spec, batch
def test_mixture_construction_errors_name_the_problem():
    from rspo.objectives import ForwardKL

    with pytest.raises(ValueError) as e:
        Mixture([])
    assert str(e.value) == "Mixture needs at least one component"
    with pytest.raises(ValueError) as e:
        Mixture([(1.0, "reverse_kl"), (2.0, ReverseKL())])
    assert str(e.value) == "Mixture has duplicate component 'reverse_kl[is]'; merge the weights"
    with pytest.raises(ValueError) as e:
        Mixture([(0.0, "reverse_kl")])
    assert str(e.value) == "Mixture weight must be finite and > 0, got 0.0 for 'reverse_kl'"
    with pytest.raises(ValueError) as e:
        Mixture(["reverse_kl"])
    assert str(e.value) == (
        "Mixture components must be (weight, regularizer) pairs, got 'reverse_kl'"
    )
    with pytest.raises(ValueError) as e:
        Mixture([(1.0, None)])
    assert str(e.value) == "Mixture component None is not a regularizer"
    m = Mixture([(0.5, ForwardKL("nll")), (2.0, Mixture([(3.0, "chi2")]))])
    assert [(w, c.spec) for w, c in m.components()] == [(0.5, "forward_kl[nll]"),
                                                         (6.0, "chi2[is]")]  # fmt: skip
    # no single estimator: the attributes say so, and per-sample terms are refused
    assert (m.estimator, m.log_clip) == (None, None)
    with pytest.raises(TypeError, match=r"^Mixture has no single per-sample term; use estimate"):
        m.per_sample(_batch())
    with pytest.raises(AttributeError, match="one estimator per component"):
        m.info  # noqa: B018


def test_a_spec_error_shows_the_expected_form():
    from rspo.objectives.spec import parse_regularizer

    with pytest.raises(ValueError) as e:
        parse_regularizer("0.5*reverse_kl + forward kl")
    assert str(e.value) == (
        "cannot parse term 'forward kl' in regularizer spec '0.5*reverse_kl + forward kl'; "
        "expected [WEIGHT*]NAME[ESTIMATOR], e.g. '0.5*forward_kl[is]'"
    )


def test_sample_batch_names_a_non_tensor_or_a_2d_tensor():
    b = _batch()
    b.logp_t = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError) as e:
        b.validate()
    assert str(e.value) == "SampleBatch.logp_t must be a 1-D tensor, got list"
    b = _batch()
    b.ref_logp_theta = torch.zeros(2, 1, dtype=torch.float64)
    b.ref_logp_ref = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        b.validate()
    assert str(e.value) == "SampleBatch.ref_logp_theta must be a 1-D tensor, got shape (2, 1)"


def test_regularizers_are_equal_and_hash_by_class_and_settings():
    from rspo.objectives import ForwardKL

    a, b = ReverseKL("k2", log_clip=5.0), ReverseKL("k2", log_clip=5.0)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != ReverseKL("k2") and a != ReverseKL("is", log_clip=5.0)
    assert len({a, ReverseKL("k2"), ForwardKL(), ForwardKL("nll")}) == 4
    assert hash(ReverseKL()) != hash(ForwardKL())  # same settings, another class
    assert repr(a) == "ReverseKL(estimator='k2', log_clip=5.0)"


# ----------------------------------------------------------------- pair indices
def _pairs_batch(labels):
    n = len(labels)
    z = torch.zeros(n, dtype=torch.float64)
    return SampleBatch(
        logp_theta=z.clone(), logp_t=z.clone(), logp_ref=z.clone(), win_rate=z.clone(),
        label=torch.tensor(labels, dtype=torch.float64),
    )  # fmt: skip


def test_pair_indices_message_names_the_bad_pair_and_both_its_rows():
    """Pair i is rows (2i, 2i+1): the third pair (i = 2, rows 4 and 5) has two +1 labels."""
    b = _pairs_batch([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
    with pytest.raises(ValueError) as e:
        b.pair_indices()
    assert str(e.value) == (
        "pair 2 (rows 4, 5) has labels (1.0, 1.0); each pair needs one +1 and one -1"
    )


def test_pair_indices_live_on_the_batchs_device_whatever_the_default_device():
    """The indices are made on the batch's device, not on torch's default device (a GPU
    batch under a CPU default, or here a CPU batch under a ``meta`` default): chosen rows
    are 0 (label +1 first), 3 (the second pair's +1 is row 3)."""
    b = _pairs_batch([1.0, -1.0, -1.0, 1.0])
    with torch.device("meta"):
        chosen, rejected = b.pair_indices()
    assert (chosen.device.type, rejected.device.type) == ("cpu", "cpu")
    assert (chosen.tolist(), rejected.tolist()) == ([0, 3], [1, 2])
    b.label = None  # unlabelled: (even, odd) rows, on the batch's device too
    with torch.device("meta"):
        even, odd = b.pair_indices()
    assert (even.device.type, odd.device.type) == ("cpu", "cpu")
    assert (even.tolist(), odd.tolist()) == ([0, 2], [1, 3])


def test_rspo_preset_note_states_its_coef_in_the_authors_lambda():
    """The note converts the authors' λ_a to rspo's coef as the module docstring derives it
    (IS forward KL: coef = 2λ_a), naming the preset's own coef and spec."""
    from rspo.objectives.presets import _presets

    p = _presets()["rspo"]
    assert p.note.startswith("RSPO headline (Tang et al.): IS forward KL + 5 × reverse KL")
    assert f"λ = {p.coef / 2} in the authors' scale = coef {p.coef} on '{p.regularizer}'" in p.note


def test_regularizer_value_is_computed_in_double_precision_whatever_the_input_dtype():
    """R(π) = Σ π_i log(π_i / ref_i) in float64 even for a float32 π (the inputs are the
    same numbers; only the arithmetic's precision is in question)."""
    import math

    pi32 = np.array([0.3, 0.7], dtype=np.float32)
    ref = np.array([0.6, 0.4])
    p = [float(x) for x in pi32]  # exactly the float32 values, as doubles
    want = sum(pi * math.log(pi / r) for pi, r in zip(p, ref))
    got = ReverseKL().value(pi32, ref)
    assert got == pytest.approx(want, rel=1e-14)
    assert Chi2().value(pi32, ref) == pytest.approx(
        sum((pi - r) ** 2 / r for pi, r in zip(p, ref)), rel=1e-14
    )


def test_preset_notes_state_the_presets_own_eta_tau():
    """The notes' ητ is the preset's: χ² at first order ητ = coef·½/2 = 0.2·0.5/2 = 0.05
    (the ratio estimator's gradient is ½∇χ²); INPO's is its tau_eta = 0.5."""
    from rspo.objectives.presets import _presets

    chi2 = _presets()["rspo_chi2"]
    assert chi2.note == (
        "RSPO χ² (Tang et al.), authors' λ = 0.1 on min(π_θ/π_ref, e^10), whose gradient "
        "is ½∇χ² at θ_t; ητ = 0.05."
    )
    eta = 1000.0
    assert eta * chi2.tau_per_component(eta)["chi2"] == pytest.approx(0.05)
    inpo = _presets()["inpo"]
    assert inpo.tau_eta == 0.5
    assert inpo.note == (
        "INPO (Zhang et al.) pairwise square loss on (best, worst) with hard preference; "
        "ητ = 0.5 (π_ref's mixture weight) is rspo's default, not from the paper."
    )


def test_normalized_sum_refuses_the_mean_of_nothing_and_a_non_positive_count():
    from rspo.objectives.reduce import normalized_sum

    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError) as e:
        normalized_sum(empty, None)
    assert str(e.value) == "cannot take the mean of zero samples; pass a global count"
    with pytest.raises(ValueError) as e:
        normalized_sum(empty, 0)
    assert str(e.value) == "global sample count must be positive, got 0"
    assert normalized_sum(empty, 4).item() == 0.0
    t = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    assert normalized_sum(t, None).item() == 3.0
    assert normalized_sum(t, 4).item() == 2.25


def test_pair_indices_refuses_a_pair_with_a_zero_label_in_either_row():
    """A 0 label (no preference) is neither chosen nor rejected: (−1, 0) and (0, +1) are
    refused like (+1, +1), naming the pair."""
    for labels in ([-1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]):
        with pytest.raises(ValueError, match=r"pair 0 \(rows 0, 1\) has labels"):
            _pairs_batch(labels).pair_indices()


@pytest.mark.parametrize("spec", ["reverse_kl", "forward_kl"])
def test_barrier_gradient_at_zero_is_minus_infinity_for_an_integer_reference(spec):
    """ref given as integers (a pure strategy, [0, 1]): the barrier's φ'(0) is −inf in
    float64, not −inf cast to the integer dtype (−2⁶³)."""
    import numpy as np

    from rspo.objectives.spec import get_regularizer

    got = get_regularizer(spec).grad_at_zero(np.array([0, 1]))
    assert got.dtype == np.float64 and list(got) == [-np.inf, -np.inf]


# ----------------------------------------------------------------- tabular forms (game)
def _tabular_calls():
    """(regularizer, method, float64 arguments) for every tabular method with a closed form."""
    from rspo.objectives import ForwardKL

    pi = np.array([0.3, 0.7, 1.3])
    ref = np.array([0.6, 0.3, 0.1])
    y = np.array([-0.7, 0.4, 1.9])
    out = []
    for reg in (ReverseKL(), ForwardKL(), Chi2()):
        out += [(reg, m, (pi, ref)) for m in ("phi", "grad", "hess")]
        out.append((reg, "grad_inv", (y, ref)))
        out += [(reg, "grad_at_zero", (ref,)), (reg, "grad_sup", (ref,))]
    out.append((ReverseKL(), "grad_log", (np.log(pi), ref)))
    return out


@pytest.mark.parametrize("reg,method,args", _tabular_calls(), ids=lambda v: str(v))
def test_tabular_methods_compute_in_double_precision_for_float32_inputs(reg, method, args):
    """The game's solvers call these with whatever arrays they hold: float32 inputs give the
    float64 result of the same (exactly converted) numbers, with the inputs' shape."""
    want = getattr(reg, method)(*args)
    low = [a.astype(np.float32) for a in args]
    same = getattr(reg, method)(*[a.astype(np.float64) for a in low])
    got = getattr(reg, method)(*low)
    assert got.dtype == np.float64 and got.shape == want.shape == args[-1].shape
    np.testing.assert_array_equal(got, same)


def test_forward_kl_grad_inv_is_upper_where_the_gradient_is_never_reached():
    """φ'(σ) = −r/σ < 0 for every σ: y ≥ 0 is never reached, so σ = ``upper`` (the limit),
    not −r/y; y < 0 gives −r/y exactly."""
    from rspo.objectives import ForwardKL

    ref = np.array([0.2, 0.3, 0.4, 0.1])
    y = np.array([-0.5, 0.0, 0.5, -2.0])
    assert list(ForwardKL().grad_inv(y, ref)) == [0.4, np.inf, np.inf, 0.05]
    assert list(ForwardKL().grad_inv(y, ref, upper=0.3)) == [0.3, 0.3, 0.3, 0.05]


def test_limits_of_the_gradient_have_the_references_shape_and_value():
    """φ'(0+) and sup φ' per coordinate: barriers −inf, χ² −2 (φ' = 2(σ − r)/r), forward KL's
    sup 0, the others +inf; a mixture adds its components' weighted limits."""
    from rspo.objectives import ForwardKL

    ref = np.array([[0.25, 0.75]])
    cases = {
        "reverse_kl": (ReverseKL(), -np.inf, np.inf),
        "forward_kl": (ForwardKL(), -np.inf, 0.0),
        "chi2": (Chi2(), -2.0, np.inf),
        "chi2 + reverse_kl": (Mixture([(2.0, Chi2()), (0.5, ReverseKL())]), -np.inf, np.inf),
        "chi2 + forward_kl": (Mixture([(2.0, Chi2()), (0.5, ForwardKL())]), -np.inf, np.inf),
        "forward_kl x2": (
            Mixture([(2.0, ForwardKL()), (0.5, ForwardKL(estimator="nll"))]), -np.inf, 0.0
        ),
        "chi2 x2": (Mixture([(2.0, Chi2()), (0.5, Chi2(estimator="ratio"))]), -5.0, np.inf),
    }  # fmt: skip
    for name, (reg, lo, hi) in cases.items():
        for got, want in ((reg.grad_at_zero(ref), lo), (reg.grad_sup(ref), hi)):
            assert got.shape == ref.shape and got.dtype == np.float64, name
            assert got.tolist() == [[want, want]], name


def test_reverse_kl_hess_log_broadcasts_like_the_generic_form():
    """φ''(π)·π = 1 with the broadcast shape of (log π, ref), as Regularizer.hess_log gives."""
    from rspo.objectives.regularizer import Regularizer

    log_pi = np.log(np.array([[0.2, 0.3, 0.5]]))
    ref = np.array([[0.5], [0.25]])
    got = ReverseKL().hess_log(log_pi, ref)
    generic = Regularizer.hess_log(ReverseKL(), log_pi, ref)
    assert got.shape == generic.shape == (2, 3)
    np.testing.assert_allclose(got, generic, rtol=1e-15)


@pytest.mark.parametrize("spec", ["reverse_kl", "forward_kl", "chi2"])
def test_hess_broadcasts_pi_with_ref_either_way(spec):
    """φ''(π_i; r_i) elementwise over (π, ref) broadcast together, whichever is larger."""
    from rspo.objectives.spec import get_regularizer

    reg = get_regularizer(spec)
    pi, ref = np.array([[0.2, 0.3, 0.5], [0.1, 0.6, 0.3]]), np.array([0.5, 0.25, 0.25])
    want = np.array([[float(reg.hess(np.array(a), np.array(r))) for a, r in zip(row, ref)]
                     for row in pi])  # fmt: skip
    np.testing.assert_allclose(reg.hess(pi, ref), want, rtol=1e-15)
    np.testing.assert_allclose(reg.hess(ref, pi), reg.hess(ref[None, :], pi), rtol=1e-15)
    assert reg.hess(ref, pi).shape == (2, 3)


class _SlowBounded(Regularizer):
    """φ'(σ; r) = r·(1 − (1+σ)^−a) − 1 with a = 0.01: increasing from −1 to r − 1, so slowly
    that φ'(1e300) = r·0.999 − 1 is still below its sup (a user's regularizer without a
    closed-form inverse: the generic bisection inverts it)."""

    a = 0.01
    name = "slow_bounded_test"
    estimators = {"is": EstimatorInfo("is", "pi_t", "none", "never", "never", None, "a stand-in")}
    default_estimator = "is"

    def phi(self, pi, ref):
        return ref * (pi - ((1 + pi) ** (1 - self.a) - 1) / (1 - self.a)) - pi

    def grad(self, pi, ref):
        return ref * (1 - (1 + pi) ** -self.a) - 1

    def hess(self, pi, ref):
        return ref * self.a * (1 + pi) ** (-self.a - 1)

    def grad_sup(self, ref):
        return np.asarray(ref, float) - 1.0

    def _est_is(self, b):
        return b.logp_theta


def test_generic_grad_inv_inverts_a_users_regularizer_and_clips_at_both_ends():
    """The bisection inverse: σ = (1 − (y+1)/r)^(−1/a) − 1 inside (φ'(0), φ'(cap)); exactly 0
    at or below φ'(0) = −1; ``upper`` at or above φ'(upper) and wherever the root lies past
    1e300 (between φ'(1e300) and the sup r − 1), not the bisection's bracket end."""
    reg = _SlowBounded()
    a = _SlowBounded.a
    ref = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.8])
    inner = np.array([-0.9, -0.7])
    y = np.concatenate([[-1.5, -1.0], inner, [-0.5003, 0.2]])
    assert reg.grad(np.array(1e300), 0.5) == pytest.approx(-0.5005) and -0.5003 < 0.5 - 1.0
    got = reg.grad_inv(y, ref)
    want_inner = (1 - (inner + 1) / 0.5) ** (-1 / a) - 1
    assert got[:2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(got[2:4], want_inner, rtol=1e-12)
    assert got[4:].tolist() == [np.inf, np.inf]
    # a finite upper: y at or past φ'(upper) gives exactly upper
    up = 3.0
    y_up = np.array([float(reg.grad(np.array(up), 0.5)), -0.6])
    assert reg.grad_inv(y_up, 0.5, upper=up).tolist() == [up, up]


# ----------------------------------------------------------------- mixture, presets, registry
def test_mixtures_of_different_divergences_with_equal_settings_differ():
    """ReverseKL() and ForwardKL() share (estimator, log_clip) = ('is', 10): the mixture's
    identity must still tell them apart by class."""
    from rspo.objectives import ForwardKL

    a, b = (
        Mixture([(1.0, ReverseKL()), (2.0, Chi2())]),
        Mixture([(1.0, ForwardKL()), (2.0, Chi2())]),
    )
    assert ReverseKL()._key() == ForwardKL()._key()
    assert a != b and a == Mixture([(1.0, ReverseKL()), (2.0, Chi2())])
    assert len({a, b}) == 2


def test_mixture_estimate_passes_both_global_counts_to_each_component():
    """Under gradient accumulation each component divides by its own global count: π_t rows by
    ``num_samples``, π_ref rows by ``num_ref_samples`` (forward_kl[nll] reads π_ref rows)."""
    from rspo.objectives import ForwardKL

    b = _batch()
    b.ref_logp_theta = torch.tensor([-0.3, -1.7], dtype=torch.float64)
    b.ref_logp_ref = torch.tensor([-0.2, -1.1], dtype=torch.float64)
    rk, fk = ReverseKL(), ForwardKL(estimator="nll")
    mix = Mixture([(0.5, rk), (3.0, fk)])
    got = mix.estimate(b, num_samples=6, num_ref_samples=5)
    want = 0.5 * rk.per_sample(b).sum() / 6 + 3.0 * fk.per_sample(b).sum() / 5
    assert float(got) == pytest.approx(float(want), rel=1e-14)
    assert float(want) != pytest.approx(float(mix.estimate(b)))


def test_tau_per_component_is_nan_where_the_estimators_gradient_is_not_proportional():
    """reverse_kl[k3]'s expected gradient at θ_t is not a multiple of ∇R: its τ is NaN, the
    other component's is coef·w·s/(2η)."""
    import math

    from rspo.objectives.presets import Preset

    p = Preset("t", "sppo", "reverse_kl[k3] + 3*forward_kl[is]", 0.4, "all", None, "x", False, "")
    tau = p.tau_per_component(eta=2.0)
    assert list(tau) == ["reverse_kl", "forward_kl"]
    assert math.isnan(tau["reverse_kl"]) and tau["forward_kl"] == pytest.approx(0.4 * 3 / 4)


def test_register_regularizer_by_name_and_its_refusals(monkeypatch):
    """``@register_regularizer("name")`` registers under that name; a non-Regularizer, a
    non-identifier and 'none' in any case are refused with the documented messages."""
    import rspo.objectives.registry as registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_regularizer("my_rkl")
    class MyRKL(ReverseKL):
        pass

    assert registry.regularizer_class("my_rkl") is MyRKL
    assert registry.register_regularizer(name="my_rkl2")(MyRKL) is MyRKL
    assert registry.regularizer_class("my_rkl2") is MyRKL
    with pytest.raises(TypeError) as e:
        registry.register_regularizer(int)
    assert str(e.value) == "register_regularizer needs a Regularizer subclass, got <class 'int'>"
    for bad in ("bad-name", "None", "NONE", "none", "9lives"):
        with pytest.raises(ValueError) as e:
            registry.register_regularizer(bad)(MyRKL)
        assert str(e.value) == f"invalid regularizer name {bad!r} (need an identifier, not 'none')"
    assert "bad-name" not in registry.available_regularizers()


def test_sppo_pair_loss_per_pair_and_summed():
    """(e_w² + e_l²)/2 for each pair, with e = ℓ_θ − ℓ_t − η(p − ½), under every reduction."""
    from rspo.objectives.sppo import sppo_pair_loss

    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    args = (t(-1.0, -2.0), t(-3.0, -0.5), t(-1.5, -2.5), t(-2.0, -1.0), t(0.8, 0.6), t(0.1, 0.3))
    eta = 2.0
    e_w = [-1.0 + 1.5 - 2 * 0.3, -2.0 + 2.5 - 2 * 0.1]
    e_l = [-3.0 + 2.0 + 2 * 0.4, -0.5 + 1.0 + 2 * 0.2]
    want = [(a * a + b * b) / 2 for a, b in zip(e_w, e_l)]
    got = sppo_pair_loss(*args, eta, reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-14)
    assert float(sppo_pair_loss(*args, eta, reduction="sum")) == pytest.approx(sum(want))
    assert float(sppo_pair_loss(*args, eta)) == pytest.approx(sum(want) / 2)


# ----------------------------------------------------------------- loss, specs, messages
def test_validate_checks_pairs_only_when_asked():
    """A 3-row batch is a valid batch of samples; only a pair loss needs an even count."""
    b = _batch()
    b.validate()
    with pytest.raises(ValueError, match="pair losses need an even number of rows, got 3"):
        b.validate(pairs=True)


def test_loss_metrics_name_components_only_for_a_mixture():
    """'reg/<spec>' lines are a mixture's breakdown; a single regularizer has none. The
    micro-batch diagnostics are its plain statistics."""
    from rspo.objectives import RSPOLoss

    b = _batch()
    _, single = RSPOLoss(eta=2.0, regularizer="reverse_kl", coef=0.5)(b)
    _, mix = RSPOLoss(eta=2.0, regularizer="reverse_kl + chi2", coef=0.5)(b)
    assert not any(k.startswith("reg/") for k in single)
    assert sorted(k for k in mix if k.startswith("reg/")) == ["reg/chi2[is]", "reg/reverse_kl[is]"]
    assert single["win_rate_mean"] == pytest.approx((0.2 + 0.5 + 0.9) / 3, rel=1e-15)
    assert single["logratio_mean"] == pytest.approx((0.2 - 0.5 + 0.2) / 3, rel=1e-12)


def test_a_zero_coef_keeps_a_non_finite_regularizer_out_of_the_loss():
    """coef = 0 reports R̂ but trains on the self-play term alone: a response π_ref gives
    probability 0 (log π_ref = −inf) makes R̂ = inf, and 0·inf must not turn the loss NaN."""
    from rspo.objectives import RSPOLoss
    from rspo.objectives.sppo import sppo_loss

    b = _batch()
    b.logp_ref = torch.tensor([-1.1, -float("inf"), -0.4], dtype=torch.float64)
    theta = b.logp_theta.clone().requires_grad_(True)
    b.logp_theta = theta
    loss, m = RSPOLoss(eta=2.0, regularizer="reverse_kl", coef=0.0)(b)
    assert m["reg"] == float("inf")
    want = sppo_loss(theta.detach(), b.logp_t, b.win_rate, 2.0)
    assert float(loss.detach()) == float(want)
    loss.backward()
    assert torch.isfinite(theta.grad).all()


def test_loss_settings_at_their_bounds_and_their_messages():
    from rspo.objectives import RSPOLoss

    assert RSPOLoss(eta=1.0, regularizer="chi2", log_clip=0.5).regularizer.log_clip == 0.5
    assert RSPOLoss(eta=1.0, loss_type="inpo", tau=0.0).tau == 0.0
    for coef in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError) as e:
            RSPOLoss(eta=1.0, regularizer="chi2", coef=coef)
        assert str(e.value) == f"coef must be a finite float >= 0, got {coef!r}"
    for tau in (float("inf"), -0.5):
        with pytest.raises(ValueError, match=r"loss_type 'inpo' needs a finite tau >= 0"):
            RSPOLoss(eta=1.0, loss_type="inpo", tau=tau)
    with pytest.raises(ValueError) as e:
        RSPOLoss(eta=1.0, loss_type="dpo")
    assert str(e.value) == "unknown loss_type 'dpo'; valid: sppo, sppo_hard, inpo"


def test_reduce_and_normalized_sum_edges():
    from rspo.objectives.reduce import normalized_sum, reduce

    t = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    assert normalized_sum(t, 1).item() == 9.0  # one global sample: the sum itself
    assert normalized_sum(t, 0.5).item() == 18.0  # a pair count of ½ (one row of a pair)
    with pytest.raises(ValueError) as e:
        reduce(t, "max")
    assert str(e.value) == "unknown reduction 'max'; valid: mean, sum, none"


def test_regularizer_construction_errors_and_the_empty_estimator():
    """'' selects the default estimator (as None does); the errors name the value and list
    the valid choices."""
    from rspo.objectives import ForwardKL, parse_regularizer
    from rspo.objectives.registry import regularizer_class
    from rspo.objectives.terms import spec_terms

    assert ReverseKL(estimator="").estimator == "is"
    with pytest.raises(ValueError) as e:
        ReverseKL(log_clip=float("inf"))
    assert str(e.value) == "log_clip must be a finite float or None, got inf"
    with pytest.raises(ValueError) as e:
        regularizer_class("kl")
    assert str(e.value) == "unknown regularizer 'kl'; valid: chi2, forward_kl, reverse_kl"
    with pytest.raises(ValueError) as e:
        ForwardKL(estimator="nll").per_sample(_batch())
    assert str(e.value) == (
        "regularizer forward_kl[nll] needs π_ref samples: set SampleBatch.ref_logp_theta "
        "and SampleBatch.ref_logp_ref"
    )
    with pytest.raises(ValueError) as e:
        parse_regularizer("   ")
    assert str(e.value) == "empty regularizer spec '   '"
    for bad, term in (("inf*chi2", "inf*chi2"), ("0*chi2 + chi2[ratio]", "0*chi2")):
        with pytest.raises(ValueError) as e:  # the term and spec named, not only the weight
            parse_regularizer(bad)
        assert (
            str(e.value)
            == f"weight in term {term!r} of regularizer spec {bad!r} must be finite and > 0"
        )
    with pytest.raises(ValueError) as e:
        parse_regularizer("chi2[k2]")
    assert str(e.value).endswith("valid for chi2: is, ratio")
    with pytest.raises(TypeError) as e:
        spec_terms(1.5)
    assert str(e.value) == "regularizer must be a spec string, a Regularizer or None, got 1.5"


def test_parse_regularizer_gives_every_component_the_clip():
    from rspo.objectives import parse_regularizer

    mix = parse_regularizer("2*reverse_kl + chi2[ratio]", log_clip=3.0)
    assert [c.log_clip for _, c in mix.components()] == [3.0, 3.0]
    assert parse_regularizer("reverse_kl", log_clip=None).log_clip is None


def test_value_converts_for_a_users_phi():
    """``value`` hands φ float64 arrays, so a user's φ written without conversions (here
    log r taken on ref alone) still sums in double precision for float32 π and ref."""

    class RawKL(ReverseKL):
        def phi(self, pi, ref):
            return pi * (np.log(pi) - np.log(ref))

    pi32, ref32 = np.array([0.3, 0.7], np.float32), np.array([0.6, 0.4], np.float32)
    want = float(np.sum(RawKL().phi(pi32.astype(float), ref32.astype(float))))
    assert RawKL().value(pi32, ref32) == want
    assert RawKL().phi(pi32, ref32).dtype == np.float32  # the user's φ alone would not convert
