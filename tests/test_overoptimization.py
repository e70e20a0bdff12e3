"""Over-optimization metrics: KL(π‖π_ref) from samples, proxy win rate, annotations, frontier."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rspo.evaluation.alpaca import write_annotations
from rspo.evaluation.kl import cluster_mean_interval, sequence_kl
from rspo.evaluation.plots import plot_frontier

TESTS = Path(__file__).parent


# ----------------------------------------------------------------------------- pure function
def test_sequence_kl_hand_values():
    # d = log π − log π_ref = [0.5, 0, −1, 1]; two samples per prompt: prompt means 0.25, 0
    est = sequence_kl([-1.0, -2.0, -3.0, -4.0], [-1.5, -2.0, -2.0, -5.0], [2, 3, 4, 3], 2, 0)
    assert est.mean == 0.125 and est.lo == est.hi == 0.125 and est.n == 2
    assert est.per_token == pytest.approx(0.125 / 3.0, rel=1e-15)  # mean length 12/4 = 3
    # bootstrap over the 2 prompts: every resample mean is 0, 0.125 or 0.25
    est = sequence_kl([-1.0, -2.0, -3.0, -4.0], [-1.5, -2.0, -2.0, -5.0], [2, 3, 4, 3], 2, 2000)
    assert est.lo == 0.0 and est.hi == 0.25
    same = sequence_kl([-3.0, -1.0], [-3.0, -1.0], [1, 1])
    assert same.mean == same.lo == same.hi == same.per_token == 0.0


def test_cluster_interval_resamples_clusters_and_refuses_bad_input():
    vals = [1.0, 3.0, 10.0, 10.0, 0.0, 2.0]  # cluster means 2, 10, 1
    mean, lo, hi = cluster_mean_interval(vals, 2, n_boot=4000, seed=0)
    assert mean == pytest.approx(13 / 3)
    assert 1.0 <= lo < mean < hi <= 10.0
    assert cluster_mean_interval(vals, 2, 4000, 0) == (mean, lo, hi)  # seeded
    with pytest.raises(ValueError, match="groups of 4"):
        cluster_mean_interval(vals, 4)
    with pytest.raises(ValueError, match="NaN"):
        cluster_mean_interval([1.0, math.nan])
    with pytest.raises(ValueError, match="mismatched"):
        sequence_kl([0.0, 1.0], [0.0], [1, 1])


# ----------------------------------------------------------------------------- exact KL
VOCAB, EOS, MAX_LEN, PROMPT = 3, 2, 4, [0, 1]


def _tiny_lm(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
        bos_token_id=0, eos_token_id=EOS, pad_token_id=EOS, initializer_range=0.6,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).double().eval()


def _all_responses() -> list[list[int]]:
    """Every response a 2-token vocabulary + EOS can give under a cap of MAX_LEN tokens:
    finished ones (… EOS, 1 to MAX_LEN tokens) and capped ones (MAX_LEN tokens, no EOS)."""
    out = [[*body, EOS] for n in range(MAX_LEN) for body in itertools.product((0, 1), repeat=n)]
    return out + [list(body) for body in itertools.product((0, 1), repeat=MAX_LEN)]


def test_kl_estimator_is_unbiased_and_its_interval_covers_the_exact_kl_of_two_tiny_models():
    """Two tiny 3-token models: the scoring code's log-probs of all 31 responses give the
    exact KL(π‖π_ref) = Σ π(y)(log π(y) − log π_ref(y)); samples y ~ π give estimates whose
    mean over 300 replicates lies within 4 standard errors of it, and whose 95% cluster
    bootstrap interval covers it in 88–99 % of the replicates."""
    from rspo.modeling import batched_sequence_logprobs

    ys = _all_responses()
    assert len(ys) == 31
    prompts = [PROMPT] * len(ys)
    lp = np.array(batched_sequence_logprobs(_tiny_lm(1), prompts, ys, EOS, 64))
    lr = np.array(batched_sequence_logprobs(_tiny_lm(2), prompts, ys, EOS, 64))
    p = np.exp(lp)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)  # the enumeration is every outcome
    assert np.exp(lr).sum() == pytest.approx(1.0, abs=1e-12)
    exact = float(p @ (lp - lr))
    assert 0.05 < exact < 5.0  # a KL worth estimating
    lengths = np.array([len(y) for y in ys])

    rng = np.random.default_rng(0)
    reps, n_prompts, k = 300, 64, 2
    ests, covered = [], 0
    for r in range(reps):
        idx = rng.choice(len(ys), size=n_prompts * k, p=p / p.sum())
        e = sequence_kl(lp[idx], lr[idx], lengths[idx], k, n_boot=400, seed=r)
        ests.append(e.mean)
        covered += e.lo <= exact <= e.hi
    ests = np.array(ests)
    se = ests.std(ddof=1) / math.sqrt(reps)
    assert abs(ests.mean() - exact) < 4 * se, (ests.mean(), exact, se)
    assert 0.88 <= covered / reps <= 0.99, covered
    # the spread of one estimate matches the per-sample variance of the log-ratio
    var = float(p @ (lp - lr - exact) ** 2)
    assert ests.std(ddof=1) == pytest.approx(math.sqrt(var / (n_prompts * k)), rel=0.15)


def test_kl_of_a_model_with_itself_is_zero_per_sample():
    from rspo.modeling import batched_sequence_logprobs

    ys = _all_responses()
    m = _tiny_lm(1)
    lp = batched_sequence_logprobs(m, [PROMPT] * len(ys), ys, EOS, 64)
    est = sequence_kl(lp, lp, [len(y) for y in ys], n_boot=100)
    assert est.mean == 0.0 and est.lo == est.hi == 0.0


# ----------------------------------------------------------------------------- annotations
def test_annotations_hold_one_row_per_pair_with_alpaca_preferences(tmp_path):
    path = write_annotations(
        tmp_path / "annotations.json", ["x", "y"], ["ref1", "ref2"], ["pol1", "pol2"],
        [0.25, 1.0], "gym", "sppo/iter_001", "gym-gold",
    )  # fmt: skip
    rows = json.loads(path.read_text())
    assert rows[0] == {
        "instruction": "x", "output_1": "ref1", "output_2": "pol1", "generator_1": "gym",
        "generator_2": "sppo/iter_001", "annotator": "gym-gold", "preference": 1.25,
    }  # fmt: skip
    assert rows[1]["preference"] == 2.0
    with pytest.raises(ValueError, match="outside"):
        write_annotations(tmp_path / "a.json", ["x"], ["a"], ["b"], [1.5], "g1", "g2", "j")


# ----------------------------------------------------------------------------- frontier plot
def _row(it, wr, kl, proxy=None, ci=True):
    r = {"iteration": it, "win_rate": wr, "kl_ref": kl, "proxy_win_rate": proxy}
    if ci:
        r["win_rate_ci"] = [wr - 0.02, wr + 0.02]
        r["kl_ref_ci"] = None if kl is None else [kl * 0.8, kl * 1.2]
    return r


@pytest.mark.parametrize("x", ["kl", "sqrt_kl"])
def test_frontier_plot_is_written_and_skips_rows_without_kl(tmp_path, x):
    from matplotlib.image import imread

    runs = {
        "sppo": [_row(0, 0.5, 0.0, 0.5), _row(1, 0.6, 2.0, 0.7), _row(2, 0.62, 5.0, 0.8)],
        "rspo": [_row(1, 0.58, 1.0, 0.6), _row(2, 0.6, None, 0.7, ci=False)],  # no iteration 0
        "greedy": [_row(0, 0.5, None), _row(1, 0.7, None)],  # kl_ref null throughout
    }
    out = plot_frontier(runs, tmp_path / "plots" / f"frontier_{x}.png", x=x)
    img = imread(out)
    assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0
    nothing = plot_frontier({"greedy": runs["greedy"]}, tmp_path / "empty.png")
    assert Path(nothing).stat().st_size > 0
    with pytest.raises(ValueError, match="sqrt_kl"):
        plot_frontier(runs, tmp_path / "bad.png", x="log")


# ----------------------------------------------------------------------------- in a run
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    sys.path.insert(0, str(TESTS))
    from fixtures_lm import make_pipeline_env, make_tiny_model_dir

    tmp, model = make_pipeline_env(tmp_path_factory.mktemp("oo"))
    return tmp, model, make_tiny_model_dir(tmp / "other", seed=7)


def _eval_cfg(tmp, model, out, **evaluation):
    from rspo.config import load_config

    from fixtures_lm import tiny_run

    ev = {"judge_kwargs": {"fn": "fixtures_lm:tie_judge"}, "n_boot": 200, **evaluation}
    return load_config(None, tiny_run(tmp, model, str(tmp / out), evaluation=ev))


def _read(path: Path) -> list[list[dict]]:
    return [json.loads(x)["responses"] for x in path.read_text().splitlines()]


def _both_logprobs(cfg, out: Path, policy, ref, ids, k):
    """log π and log π_ref of ``ids`` (k per eval prompt, in order), scored afresh."""
    from rspo.modeling import batched_sequence_logprobs, load_configured

    rows = [json.loads(x) for x in (out / "prompts.jsonl").open()]
    ps = [r["ids"] for r in rows if r["split"] == "eval" for _ in range(k)]
    return [
        np.array(batched_sequence_logprobs(load_configured(str(m), cfg.model, "cpu"), ps, ids, 0))
        for m in (policy, ref)
    ]


def _eval_judge_id(cfg) -> str:
    from rspo.judges import build_judge
    from rspo.judges.symmetric import SymmetricJudge

    e = cfg.evaluation
    return SymmetricJudge(build_judge(e.judge, **e.judge_kwargs)).judge_id


def test_rspo_eval_reports_proxy_win_rate_kl_and_annotations(env):
    """The training judge (lowercase letters) differs from the eval judge (ties): the gold
    win rate is ½, the proxy's is σ(n(a) − n(b)) averaged by hand; kl_ref is the mean of
    log π − log π_ref recomputed with both models; annotations.json reproduces win_rate."""
    from rspo.selfplay.standalone import evaluate_model

    from fixtures_lm import n_lower

    tmp, model, other = env
    cfg = _eval_cfg(tmp, model, "ev", temperature=1.0, num_samples=2)
    m = evaluate_model(cfg, str(other))
    out = Path(cfg.run.output) / "eval"
    pol, base = _read(out / "eval_outputs.jsonl"), _read(out / "eval_baseline.jsonl")
    pairs = [(a["text"], b["text"]) for ra, rb in zip(pol, base) for a, b in zip(ra, rb)]
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    assert m["win_rate"] == 0.5
    want = sum(sig(n_lower(a) - n_lower(b)) for a, b in pairs) / len(pairs)
    assert m["proxy_win_rate"] == pytest.approx(want, abs=1e-12) and want != 0.5
    lo, hi = m["proxy_win_rate_ci"]
    assert lo < m["proxy_win_rate"] < hi

    ids = [x["ids"] for r in pol for x in r]
    lp, lr = _both_logprobs(cfg, out, other, model, ids, 2)
    d = np.array(lp) - np.array(lr)
    assert m["kl_ref"] == pytest.approx(d.mean(), abs=1e-5)
    assert m["kl_ref"] > 0.1  # another random model is far from π_ref
    assert m["kl_ref_ci"][0] < m["kl_ref"] < m["kl_ref_ci"][1]
    n_tok = np.mean([len(i) for i in ids])
    assert m["kl_ref_per_token"] == pytest.approx(m["kl_ref"] / n_tok, rel=1e-12)

    rows = json.loads((out / "annotations.json").read_text())
    assert len(rows) == len(pairs) == 24
    assert [(r["output_2"], r["output_1"]) for r in rows] == pairs
    assert {r["annotator"] for r in rows} == {_eval_judge_id(cfg)}
    assert "tie_judge" in rows[0]["annotator"]
    assert {r["generator_1"] for r in rows} == {str(model)}


def test_annotations_reproduce_the_reported_win_rate(env):
    """mean(preference − 1) over annotations.json = win_rate: the win rate is the mean over
    prompts of each prompt's k pair means, the rows' mean is over all pairs (equal sizes:
    the same number up to float rounding of the sums and of 1 + p − 1)."""
    from rspo.selfplay.standalone import evaluate_model

    tmp, model, other = env
    judge = {"judge_kwargs": {"fn": "fixtures_lm:lowercase_judge"}}
    cfg = _eval_cfg(tmp, model, "ev_ann", temperature=1.0, num_samples=3, **judge)
    m = evaluate_model(cfg, str(other))
    rows = json.loads((Path(cfg.run.output) / "eval" / "annotations.json").read_text())
    assert len(rows) == 36 and all(1.0 <= r["preference"] <= 2.0 for r in rows)
    mean = sum(r["preference"] - 1.0 for r in rows) / len(rows)
    assert mean == pytest.approx(m["win_rate"], abs=1e-12)
    assert m["win_rate"] != 0.5


def test_kl_uses_temperature_one_diversity_samples_or_is_null(env, capsys):
    """Greedy win-rate samples are not samples of π: kl_ref then comes from the diversity
    samples (temperature 1); without those it is null, and the run says why."""
    from rspo.selfplay.standalone import evaluate_model

    tmp, model, other = env
    cfg = _eval_cfg(tmp, model, "ev_greedy", temperature=0.0, diversity_samples=2)
    m = evaluate_model(cfg, str(other))
    out = Path(cfg.run.output) / "eval"
    ids = [x["ids"] for r in _read(out / "eval_samples.jsonl") for x in r]
    lp, lr = _both_logprobs(cfg, out, other, model, ids, 2)
    assert m["kl_ref"] == pytest.approx(float(np.mean(lp - lr)), abs=1e-5)
    assert m["kl_ref"] > 0.1

    capsys.readouterr()
    cfg = _eval_cfg(tmp, model, "ev_null", temperature=0.0, diversity_samples=0)
    m = evaluate_model(cfg, str(other))
    assert m["kl_ref"] is None and m["kl_ref_ci"] is None and m["kl_ref_per_token"] is None
    assert "kl_ref not estimated" in capsys.readouterr().out
    assert m["proxy_win_rate"] is not None
    assert not (Path(cfg.run.output) / "eval" / "kl_logprobs.json").exists()
