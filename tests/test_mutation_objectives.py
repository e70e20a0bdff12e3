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
