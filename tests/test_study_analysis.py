"""benchmarks/study_skills.py: the study's statistics against hand-computed values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
METRIC_KEYS = ("lc_win_rate", "proxy_win_rate", "avg_length", "accuracy", "self_bleu")


def _study():
    spec = importlib.util.spec_from_file_location(
        "rspo_study_skills", ROOT / "benchmarks" / "study_skills.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(t: int, kl: float, win: float) -> dict:
    return {"iteration": t, "kl_ref": kl, "win_rate": win, **{k: win for k in METRIC_KEYS}}


# SPPO's curve, the same for both seeds: (KL, gold) = (0, .5), (1, .6), (2, .65)
SPPO = {s: {0: _row(0, 0.0, 0.5), 1: _row(1, 1.0, 0.6), 2: _row(2, 2.0, 0.65)} for s in (0, 1)}
# a regularizer: iteration 1 at KL 0.5 (SPPO there: 0.55), iteration 2 at KL 1.5 (SPPO
# there: 0.625), iteration 3 beyond SPPO's largest KL (left out: no extrapolation)
REG = {
    0: {0: _row(0, 0.0, 0.5), 1: _row(1, 0.5, 0.58), 2: _row(2, 1.5, 0.60), 3: _row(3, 3.0, 0.7)},
    1: {0: _row(0, 0.0, 0.5), 1: _row(1, 0.5, 0.56), 2: _row(2, 1.5, 0.61), 3: _row(3, 3.0, 0.7)},
}


def test_frontier_gap_interpolates_sppo_at_the_same_kl():
    gap = _study().frontier_gap(REG, SPPO)
    # gaps: iteration 1 → 0.03, 0.01; iteration 2 → −0.025, −0.015
    assert gap["1"]["mean"] == pytest.approx(0.02, abs=1e-12)
    assert gap["1"]["sd"] == pytest.approx(2**0.5 * 0.01, abs=1e-12)
    # t(0.975, 1) = 12.7062: half-width = t·sd/√2 = 12.7062·0.01
    assert gap["1"]["half"] == pytest.approx(0.127062, abs=1e-6)
    assert gap["2"]["mean"] == pytest.approx(-0.02, abs=1e-12)
    assert gap["3"] is None


def test_paired_difference_uses_the_chosen_iterations_per_seed():
    study = _study()
    d = study.paired(REG, SPPO, lambda rows: 2, lambda rows: 1, "win_rate")
    # (0.60 − 0.6, 0.61 − 0.6)
    assert d["mean"] == pytest.approx(0.005, abs=1e-12)
    assert d["n"] == 2


def test_summary_picks_sppo_best_iteration_by_gold(tmp_path):
    sweep = tmp_path / "sweep"
    for name, cells in (("sppo", SPPO), ("reg", REG)):
        for s, rows in cells.items():
            d = sweep / name / f"seed{s}"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in rows.values())
            )
    out = tmp_path / "out"
    _study().main([str(sweep), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sppo_best_iteration"] == 2
    assert summary["final_iteration"] == 3
    # the regularizer's final (3) against SPPO's best (2): 0.7 − 0.65 on both seeds
    best = summary["vs_sppo"]["reg"]["final_minus_sppo_best/win_rate"]
    assert best["mean"] == pytest.approx(0.05, abs=1e-12)
    assert summary["vs_sppo"]["reg"]["frontier_gap"]["1"]["mean"] == pytest.approx(0.02)
    # other metrics at SPPO's KL: Self-BLEU equals the win rate in these rows
    assert summary["vs_sppo"]["reg"]["at_sppo_kl/self_bleu"]["2"]["mean"] == pytest.approx(-0.02)
    assert (out / "frontier.png").stat().st_size > 0
    assert "| reg | 2 | 3 |" in (out / "table.md").read_text()
