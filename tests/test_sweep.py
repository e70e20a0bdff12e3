"""`rspo sweep`: grid expansion, real runs in subprocesses, aggregation, reports, resume."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import yaml

from rspo.config import ConfigError
from rspo.sweep import aggregate, expand, load_sweep, run_sweep

from fixtures_lm import make_tiny_model_dir, write_prompts

TESTS = Path(__file__).parent


def _spec(tmp: Path) -> dict:
    return {
        "output": str(tmp / "sweep"),
        "parallel": 2,
        "seeds": [0, 1],
        "base": {
            "model": {"path": str(tmp / "model")},
            "data": {
                "prompts": str(tmp / "p.jsonl"),
                "eval_prompts": str(tmp / "e.jsonl"),
                "num_prompts": 6,
                "num_eval_prompts": 6,
            },
            "generation": {"num_samples": 2, "max_new_tokens": 6, "batch_size": 12},
            "judge": {"name": "python", "kwargs": {"fn": "fixtures_lm:lowercase_judge"}},
            "training": {"batch_size": 12, "micro_batch_size": 12, "epochs": 1},
            "evaluation": {
                "judge": "python",
                "judge_kwargs": {"fn": "fixtures_lm:lowercase_judge"},
                "accuracy_fn": "fixtures_lm:lowercase_correct",
                "max_new_tokens": 6,
                "diversity_samples": 2,
                "n_boot": 50,
                "temperature": 1.0,
            },
            "run": {"iterations": 1},
        },
        "settings": {
            "sppo": {"objective": {"preset": "sppo"}},
            "reverse_kl": {"objective": {"regularizer": "reverse_kl"}, "coefs": [0.1, 1.0]},
        },
    }


def test_expand_validates_every_cell(tmp_path):
    spec = _spec(tmp_path)
    runs = expand(spec)
    assert [(r.label, r.seed) for r in runs] == [
        ("sppo", 0),
        ("sppo", 1),
        ("reverse_kl@0.1", 0),
        ("reverse_kl@0.1", 1),
        ("reverse_kl@1", 0),
        ("reverse_kl@1", 1),
    ]
    assert runs[2].config["objective"]["coef"] == 0.1 and runs[3].config["run"]["seed"] == 1
    spec["settings"]["bad"] = {"objective": {"regularizer": "reverse_kl", "cof": 1}}
    with pytest.raises(ConfigError, match="sweep setting 'bad'.*objective.cof"):
        expand(spec)


def test_expand_refuses_regularizer_typos_and_repeated_cells_up_front(tmp_path):
    spec = _spec(tmp_path)
    spec["settings"]["typo"] = {"objective": {"regularizer": "revers_kl"}, "coefs": [0.1]}
    with pytest.raises(ConfigError, match="sweep setting 'typo@0.1'.*revers_kl"):
        expand(spec)
    spec = _spec(tmp_path)
    spec["settings"]["reverse_kl"]["coefs"] = [1.0, 1]
    with pytest.raises(ConfigError, match=r"two cells write .*reverse_kl@1.seed0"):
        expand(spec)


def test_rspo_sweep_refuses_arguments_it_does_not_take(capsys):
    from rspo.cli import main

    assert main(["sweep", "--quick", "--paralel", "2", "--run.iterations", "5"]) == 2
    assert "unrecognized arguments: --paralel 2 --run.iterations 5" in capsys.readouterr().err


def test_unknown_sweep_key_is_named(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"settings": {"a": {}}, "seed": [0]}))
    with pytest.raises(ConfigError, match="unknown sweep key 'seed'"):
        load_sweep(p)


@pytest.mark.slow
def test_sweep_runs_aggregates_and_resumes(tmp_path, monkeypatch):
    make_tiny_model_dir(tmp_path / "model")
    write_prompts(tmp_path / "p.jsonl", 6)
    write_prompts(tmp_path / "e.jsonl", 6, prefix="Eval")
    spec = _spec(tmp_path)
    spec["settings"]["reverse_kl"]["coefs"] = [1.0]
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), *sys.path]))
    table = run_sweep(p, log=lambda m: None)
    out = tmp_path / "sweep"
    for f in (
        "table.md",
        "table.csv",
        "runs.csv",
        "summary.json",
        "report.html",
        "plots/lc_vs_coef.png",
        "plots/length_vs_winrate.png",
        "plots/frontier.png",
        "iterations.csv",
    ):
        assert (out / f).exists() and (out / f).stat().st_size > 0, f
    curves = json.loads((out / "summary.json").read_text())["iterations"]
    for c in curves:  # seeds averaged per setting and iteration, by hand
        rows = [
            json.loads(x)
            for s in (0, 1)
            for x in (out / c["setting"] / f"seed{s}" / "metrics.jsonl").read_text().splitlines()
        ]
        rows = [r for r in rows if r["iteration"] == c["iteration"]]
        assert c["seeds"] == 2
        for m in ("win_rate", "proxy_win_rate", "kl_ref"):
            assert c[m] == pytest.approx((rows[0][m] + rows[1][m]) / 2, abs=1e-12)
            half = 12.706 * abs(rows[0][m] - rows[1][m]) / 2
            assert c[f"{m}_ci"] == pytest.approx([c[m] - half, c[m] + half], rel=1e-3, abs=1e-12)
    assert [c["kl_ref"] for c in curves if c["iteration"] == 0] == [0.0] * 2
    per_run, _ = aggregate(expand(spec))
    assert len(per_run) == 4
    for row in table:  # mean and 95% t-interval over the two seeds, by hand
        vals = [r["accuracy"] for r in per_run if r["setting"] == row["setting"]]
        mean = sum(vals) / 2
        half = 12.706 * abs(vals[0] - vals[1]) / math.sqrt(2) / math.sqrt(2)
        assert row["accuracy"] == pytest.approx(mean)
        assert row["accuracy_ci"] == pytest.approx(half, rel=1e-3, abs=1e-12)
    assert sum(r["best"] for r in table) == 1
    assert "(best LC)" in (out / "table.md").read_text()
    stamp = (out / "sppo" / "seed0" / "sweep.done").stat().st_mtime_ns
    run_sweep(p, log=lambda m: None)  # resume: finished cells are not rerun
    assert (out / "sppo" / "seed0" / "sweep.done").stat().st_mtime_ns == stamp
    spec["base"]["training"]["lr"] = 0.123  # finished cells ran another config: refused
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"sweep cell \S+ seed 0 .* differing keys: training.lr"):
        run_sweep(p, log=lambda m: None)


def test_one_seed_reports_no_interval():
    from rspo.sweep import _fmt

    assert _fmt({"seeds": 1, "lc": 0.5, "lc_ci": 0.0}, "lc") == "0.500 (1 seed)"
    assert _fmt({"seeds": 3, "lc": 0.5, "lc_ci": 0.01}, "lc") == "0.500 ± 0.010"


def test_a_resumed_cell_is_unfinished_until_its_attempt_succeeds(tmp_path, monkeypatch):
    """Raising run.iterations resumes a finished cell; if that attempt fails, the cell must
    not still count as finished (its sweep.done is gone), or the next sweep would skip it."""
    import subprocess

    from rspo.config import config_from_dict
    from rspo.sweep import SweepError, _run_one

    run = expand(_spec(tmp_path))[0]
    run.output.mkdir(parents=True)
    old = config_from_dict(run.config).to_dict()
    old["run"]["iterations"] = 0 + 1
    run.config["run"]["iterations"] = 2
    (run.output / "config.yaml").write_text(yaml.safe_dump(old))
    (run.output / "sweep.done").write_text("10.0")
    fail = subprocess.CompletedProcess([], 1, "", "error: boom")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: fail)
    with pytest.raises(SweepError, match="boom"):
        _run_one(run, log=lambda m: None)
    assert not (run.output / "sweep.done").exists()
    assert float((run.output / "sweep.seconds").read_text()) >= 0
