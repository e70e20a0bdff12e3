"""Summary dict, AlpacaEval file, plots, reports and the metrics logger."""

import base64
import csv
import json

import numpy as np
import pytest

from rspo.evaluation import (
    MetricsLogger,
    evaluate_responses,
    length_stats,
    markdown_table,
    plot_length_vs_winrate,
    plot_metrics_per_iteration,
    read_alpaca_outputs,
    write_alpaca_outputs,
    write_csv,
    write_html_report,
)
from rspo.evaluation.tensorboard import tensorboard_available

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECORDS = [
    {"method": m, "iteration": it, "win_rate": wr, "win_rate_ci": [wr - 0.03, wr + 0.03],
     "lc_win_rate": wr - 0.02, "avg_length": ln, "self_bleu": sb}
    for m, base, ln0 in [("sppo", 0.25, 1800), ("rspo-rkl", 0.27, 1700)]
    for it, (wr, ln, sb) in enumerate(
        [(base + 0.02 * k, ln0 + 100 * k, 0.3 + 0.05 * k) for k in range(3)], start=1
    )
]  # fmt: skip


def test_length_stats_by_hand():
    s = length_stats([10, 20, 30, 100], texts=["ab", "abcd", "", "x"], truncated=[0, 0, 1, 0])
    assert (s.mean_tokens, s.median_tokens, s.max_tokens) == (40.0, 25.0, 100)
    assert s.mean_chars == 7 / 4 and s.truncation_rate == 0.25 and s.n == 4
    assert length_stats([5]).mean_chars is None
    with pytest.raises(ValueError):
        length_stats([1, 2], truncated=[True])


def test_evaluate_responses_flat_jsonable_dict():
    n = 6
    out = evaluate_responses(
        prompts=[f"p{i}" for i in range(n)],
        policy_responses=["aa", "bbbb", "c", "dd", "e", "ffffff"],
        baseline_responses=["x"] * n,
        probs=[1, 0, 0.5, 1, 1, 0],
        policy_token_lengths=[3, 5, 2, 4, 2, 8],
        baseline_token_lengths=[3, 3, 3, 3, 3, 3],
        truncated=[False, False, False, False, False, True],
        correct=[1, 1, 0, 1, 0, 0],
        samples_per_prompt=[["a b c", "a b c"], ["a b", "c d"]] + [["z y x w"]] * 4,
        n_boot=200,
    )
    json.dumps(out, allow_nan=False)  # strict JSON
    assert set(out) >= {
        "win_rate", "win_rate_ci", "lc_win_rate", "avg_length", "avg_chars",
        "truncation_rate", "accuracy", "self_bleu", "distinct_1", "distinct_2", "n_prompts",
    }  # fmt: skip
    assert out["win_rate"] == pytest.approx(3.5 / 6)
    lo, hi = out["win_rate_ci"]
    assert lo <= out["win_rate"] <= hi
    assert out["avg_length"] == 4.0 and out["avg_chars"] == 16 / 6
    assert out["truncation_rate"] == pytest.approx(1 / 6)
    assert out["accuracy"] == 0.5 and out["n_prompts"] == n
    # Self-BLEU over groups of >= 2 samples: identical pair -> 1, disjoint pair -> 0.
    assert out["self_bleu"] == pytest.approx(0.5)
    # distinct-1 per prompt: 3/6, 4/4, then 4/4 four times -> mean (0.5 + 5) / 6.
    assert out["distinct_1"] == pytest.approx(5.5 / 6)
    assert 0.0 <= out["lc_win_rate"] <= 1.0


def test_evaluate_responses_optional_fields_none_and_mismatch():
    out = evaluate_responses(["p", "q"], ["a", "b"], ["c", "d"], [0.6, 0.8], [1, 2], [1, 2])
    assert out["accuracy"] is None and out["self_bleu"] is None and out["distinct_2"] is None
    assert out["truncation_rate"] is None
    assert out["lc_win_rate"] == pytest.approx(0.7)  # no length difference -> LC = raw
    with pytest.raises(ValueError, match="mismatched"):
        evaluate_responses(["p"], ["a", "b"], ["c"], [0.5], [1], [1])


def test_evaluate_responses_groups_bootstrap_prompts_not_pairs():
    # 3 prompts x 2 samples: the interval resamples per-prompt means (0.75, 0.25, 1.0).
    from rspo.evaluation import win_rate

    probs = [1, 0.5, 0, 0.5, 1, 1]
    kw = dict(n_boot=500, seed=3)
    out = evaluate_responses(
        ["p", "p", "q", "q", "r", "r"], ["a"] * 6, ["b"] * 6, probs, [1] * 6, [1] * 6,
        samples_per_prompt=[["a b c", "a b c"], ["c", "d"], ["e", "f"]], group_size=2, **kw,
    )  # fmt: skip
    ref = win_rate([0.75, 0.25, 1.0], **kw)
    assert out["win_rate"] == pytest.approx(4 / 6) == pytest.approx(ref.mean)
    assert out["win_rate_ci"] == [ref.lo, ref.hi]
    flat = win_rate(probs, **kw)
    assert (flat.lo, flat.hi) != (ref.lo, ref.hi)
    assert out["n_prompts"] == 3 and out["self_bleu"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="groups of 4"):
        evaluate_responses(["p"] * 6, ["a"] * 6, ["b"] * 6, probs, [1] * 6, [1] * 6, group_size=4)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluate_responses(
            ["p"] * 6, ["a"] * 6, ["b"] * 6, probs, [1] * 6, [1] * 6,
            samples_per_prompt=[["x", "y"]] * 6, group_size=2,
        )  # fmt: skip


def test_alpaca_outputs_round_trip(tmp_path):
    ins, outs = ["What is 2+2?", "Say hi ünïcode"], ["4", 'hi "there"\n']
    path = write_alpaca_outputs(tmp_path / "model_outputs.json", ins, outs, "rspo-it3")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == [
        {"instruction": ins[0], "output": outs[0], "generator": "rspo-it3", "dataset": "rspo"},
        {"instruction": ins[1], "output": outs[1], "generator": "rspo-it3", "dataset": "rspo"},
    ]
    p2 = write_alpaca_outputs(tmp_path, ins, outs, "g", dataset=["helpful_base", "koala"])
    assert p2 == tmp_path / "model_outputs.json"
    assert [r["dataset"] for r in read_alpaca_outputs(tmp_path)] == ["helpful_base", "koala"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        write_alpaca_outputs(tmp_path / "x.json", ins, outs[:1], "g")


def test_plots_write_png(tmp_path):
    a = plot_metrics_per_iteration(RECORDS, tmp_path / "per_iter.png")
    b = plot_length_vs_winrate(RECORDS, tmp_path / "sub" / "len_vs_wr.png")
    for p in (a, b):
        data = open(p, "rb").read()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # Missing metrics and a single metric are tolerated.
    c = plot_metrics_per_iteration([{"method": "x", "iteration": 0}], tmp_path / "e.png", ["foo"])
    assert open(c, "rb").read().startswith(PNG_MAGIC)


def test_markdown_table_by_hand():
    rows = [{"method": "sppo", "win_rate": 0.296666, "ci": [0.25, 0.35]}, {"method": "a|b"}]
    assert markdown_table(rows, ["method", "win_rate", "ci"]) == (
        "| method | win_rate | ci |\n"
        "|---|---|---|\n"
        "| sppo | 0.2967 | [0.25, 0.35] |\n"
        "| a\\|b |  |  |\n"
    )


def test_csv_round_trip(tmp_path):
    rows = [{"method": "sppo", "win_rate": 0.123456789, "ci": [0.1, 0.2]}, {"method": "r"}]
    path = write_csv(rows, tmp_path / "t.csv")
    back = list(csv.DictReader(open(path, encoding="utf-8")))
    assert back[0] == {"method": "sppo", "win_rate": "0.123456789", "ci": "[0.1, 0.2]"}
    assert back[1] == {"method": "r", "win_rate": "", "ci": ""}


def test_html_report_contains_table_and_embedded_images(tmp_path):
    png = plot_length_vs_winrate(RECORDS, tmp_path / "s.png")
    rows = [{"method": "rspo <rkl>", "lc_win_rate": 0.342, "avg_length": 2295.0}]
    path = write_html_report(tmp_path / "r.html", "RSPO & SPPO", rows, [png], notes="a < b")
    text = path.read_text(encoding="utf-8")
    assert "rspo &lt;rkl&gt;" in text and "0.342" in text and "2295" in text
    assert "RSPO &amp; SPPO" in text and "a &lt; b" in text
    b64 = base64.b64encode(open(png, "rb").read()).decode()
    assert f"data:image/png;base64,{b64}" in text
    assert 'src="s.png"' not in text  # self-contained


def test_metrics_logger_jsonl(tmp_path):
    with MetricsLogger(tmp_path / "run", use_tensorboard=False) as log:
        log.log({"win_rate": np.float64(0.5), "bad": float("nan"), "ci": [0.4, 0.6]}, step=1)
        log.log({"win_rate": 0.6}, step=2)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["win_rate"] == 0.5 and rows[0]["bad"] is None and rows[0]["ci"] == [0.4, 0.6]
    # A crash-torn last line is trimmed when the run is reopened, so appends stay valid.
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "win_')
    log2 = MetricsLogger(tmp_path / "run", use_tensorboard=False)
    log2.log({"win_rate": 0.7}, step=3)
    assert [r["step"] for r in log2.read()] == [1, 2, 3]


def test_metrics_logger_tensorboard_optional(tmp_path):
    assert not MetricsLogger(tmp_path / "run").tensorboard  # opt-in: never silently
    log = MetricsLogger(tmp_path / "run", use_tensorboard=None)
    assert log.tensorboard == tensorboard_available()
    log.log({"win_rate": 0.5, "flag": True, "name": "x"}, step=0)
    log.close()
    if not tensorboard_available():
        with pytest.raises(ImportError):
            MetricsLogger(tmp_path / "run2", use_tensorboard=True)
    else:
        assert any((tmp_path / "run" / "tb").iterdir())


def test_evaluation_functions_load_from_a_file_path_like_the_python_judge(tmp_path):
    """evaluation.accuracy_fn / subset_fn accept 'path/to/file.py:function' (no PYTHONPATH)."""
    from rspo.selfplay.evaluate import load_callable

    f = tmp_path / "checks.py"
    f.write_text("def correct(prompt, response):\n    return response.endswith('!')\n")
    fn = load_callable(f"{f}:correct", "evaluation.accuracy_fn")
    assert fn("p", "yes!") and not fn("p", "no")
    with pytest.raises(ValueError, match=r"evaluation.accuracy_fn: .*has no attribute 'nope'"):
        load_callable(f"{f}:nope", "evaluation.accuracy_fn")
