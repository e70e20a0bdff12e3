"""``Mixture.estimate`` is the weighted sum of its components' own estimates (public API)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rspo.objectives import Chi2, Mixture, ReverseKL, SampleBatch


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
    from rspo.objectives.presets import PRESETS

    chi2 = PRESETS["rspo_chi2"]
    assert chi2.note == (
        "RSPO χ² (Tang et al.), authors' λ = 0.1 on min(π_θ/π_ref, e^10), whose gradient "
        "is ½∇χ² at θ_t; ητ = 0.05."
    )
    eta = 1000.0
    assert eta * chi2.tau_per_component(eta)["chi2"] == pytest.approx(0.05)
    inpo = PRESETS["inpo"]
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
