"""The bootstrap intervals are exactly numpy's percentiles of the seeded resamples: the
resamples are redrawn here from the same generator and the bounds compared exactly."""

from __future__ import annotations

import numpy as np

from rspo.evaluation.length_control import lc_win_rate
from rspo.evaluation.winrate import win_rate

P = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 0.25, 0.75, 1.0, 0.0, 1.0])


def test_win_rate_interval_is_the_percentiles_of_the_seeded_resampled_means():
    wr = win_rate(P, n_boot=400, seed=11)
    rng = np.random.default_rng(11)
    means = P[rng.integers(0, P.size, size=(400, P.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (wr.mean, wr.lo, wr.hi, wr.n) == (P.mean(), min(lo, P.mean()), max(hi, P.mean()), 12)
    assert wr.lo < wr.mean < wr.hi
    other = win_rate(P, n_boot=400, seed=12)
    assert (other.lo, other.hi) != (wr.lo, wr.hi)  # the seed is used


def test_win_rate_chunks_give_the_same_resamples():
    # chunk = 2_000_000 // n: a huge set is resampled in pieces from one generator stream
    big = np.tile(P, 200_000)[: 2_000_000 // 3 + 1]  # chunk = 2 rows per draw
    wr = win_rate(big, n_boot=5, seed=3)
    rng = np.random.default_rng(3)
    means = np.concatenate(
        [big[rng.integers(0, big.size, size=(k, big.size))].mean(axis=1) for k in (2, 2, 1)]
    )
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert (wr.lo, wr.hi) == (min(lo, big.mean()), max(hi, big.mean()))


def test_lc_interval_is_the_percentiles_of_the_seeded_refits():
    from rspo.evaluation.length_control import _features, _sigmoid, fit_length_glm

    lp = np.array([10, 20, 5, 30, 12, 8, 25, 14, 9, 40, 11, 16], dtype=float)
    lb = np.full(12, 15.0)
    r = lc_win_rate(P, lp, lb, n_boot=50, seed=5)
    f = _features(lp - lb, float((lp - lb).std()))
    counts = np.random.default_rng(5).multinomial(12, np.full(12, 1 / 12), size=50)
    bb, _, _ = fit_length_glm(P, f, weights=counts.astype(np.float64), l2=1e-5)
    lo, hi = np.percentile(_sigmoid(bb[:, 0]), [2.5, 97.5])
    assert (r.lo, r.hi) == (float(lo), float(hi))
    assert r.scale == float((lp - lb).std()) and r.n == 12 and r.raw == P.mean()


def test_metrics_logger_mirrors_exactly_the_finite_real_scalars(tmp_path):
    """The TensorBoard mirror (a recording writer stands in for SummaryWriter): Python and
    numpy one-element values as floats, at the logged step; bools, strings, lists, arrays
    of several values and non-finite values skipped; flushed once per row."""
    from rspo.evaluation import MetricsLogger

    class Writer:
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, global_step=None):
            self.calls.append((tag, value, global_step))

        def flush(self):
            self.calls.append("flush")

        def close(self):
            self.calls.append("close")

    log = MetricsLogger(tmp_path / "run", use_tensorboard=False)
    w = log._writer = Writer()
    assert log.tensorboard
    log.log(
        {
            "a": 1, "b": np.float32(0.5), "c": np.array([2.5]), "d": np.array(3.0),
            "flag": True, "nan": float("nan"), "inf": np.float64("inf"), "name": "x",
            "ci": [0.1, 0.2], "vec": np.array([1.0, 2.0]),
        },
        step=7,
    )  # fmt: skip
    log.close()
    assert w.calls == [
        ("a", 1.0, 7), ("b", 0.5, 7), ("c", 2.5, 7), ("d", 3.0, 7), "flush", "close"
    ]  # fmt: skip
    assert all(type(c[1]) is float for c in w.calls[:4])
    assert not log.tensorboard
