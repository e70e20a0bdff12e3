"""Issue 18 items 1-3: the spot check, the over-optimization alarm, the KPI-driven λ.

Pure parts against hand-derived values; then runs on the facts gym (``preset: gym``) with
``gym-gold`` (other settings than the evaluation's) as the spot judge."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from rspo.config import ConfigError, load_config
from rspo.selfplay.adaptive import update_coef_kpi
from rspo.selfplay.spot import agreement, alarm_reasons, is_checked, spot_prompts, verdict

# ---------------------------------------------------------------- pure parts


def test_spot_subset_is_fixed_by_the_seed():
    a = spot_prompts(100, 10, 3)
    assert a == spot_prompts(100, 10, 3) == sorted(set(a)) and len(a) == 10
    assert all(0 <= i < 100 for i in a) and a != spot_prompts(100, 10, 4)
    assert spot_prompts(5, 64, 0) == [0, 1, 2, 3, 4]  # fewer prompts than asked: all of them
    # every=3 over 7 iterations: π_0, every third, and the last
    assert [t for t in range(8) if is_checked(t, 3, 7)] == [0, 3, 6, 7]
    assert [t for t in range(4) if is_checked(t, 1, 3)] == [0, 1, 2, 3]


def test_agreement_by_hand():
    assert (verdict(0.5), verdict(0.5 + 1e-12), verdict(0.51), verdict(0.2)) == (0, 0, 1, -1)
    train = [0.9, 0.2, 0.5, 0.7, 0.5, 0.6]
    spot = [0.6, 0.4, 0.5, 0.3, 0.5, 0.5]
    same = [False, False, False, False, True, False]
    # pair 4 is two identical responses: left out. Of the other five: policy/policy,
    # ref/ref, tie/tie agree; policy/ref and policy/tie disagree -> 3 of 5
    assert agreement(train, spot, same) == (0.6, 5)
    assert agreement([0.9], [0.1], [True]) == (None, 0)  # nothing to compare
    with pytest.raises(ValueError, match="mismatched"):
        agreement([0.9], [0.1, 0.2], [False])


def _row(proxy, spot, ci=None, agree=None):
    return {"proxy_win_rate": proxy, "spot_win_rate": spot, "spot_win_rate_ci": ci,
            "spot_agreement": agree}  # fmt: skip


def test_alarm_rule_by_hand():
    prev = _row(0.55, 0.56, [0.52, 0.60])
    # proxy rises, spot falls below the previous interval's lower end (0.52)
    (why,) = alarm_reasons(prev, _row(0.60, 0.50, agree=0.9), 0.5)
    assert "0.550 -> 0.600" in why and "0.560 -> 0.500" in why and "[0.520, 0.600]" in why
    assert alarm_reasons(prev, _row(0.60, 0.53, agree=0.9), 0.5) == []  # inside the interval
    assert alarm_reasons(prev, _row(0.55, 0.40, agree=0.9), 0.5) == []  # proxy did not rise
    assert alarm_reasons(prev, _row(0.54, 0.40), 0.5) == []  # both fell: no divergence
    (why,) = alarm_reasons(prev, _row(0.50, 0.56, agree=0.4), 0.5)
    assert "agree on 0.400" in why and "min_agreement 0.5" in why
    assert alarm_reasons(prev, _row(0.5, 0.56, agree=0.4), None) == []  # agreement rule off
    assert alarm_reasons(prev, _row(0.5, 0.56, agree=0.5), 0.5) == []  # not below
    assert len(alarm_reasons(prev, _row(0.9, 0.1, agree=0.0), 0.5)) == 2
    assert alarm_reasons(None, _row(0.9, 0.1, agree=0.9), 0.5) == []  # no previous check
    assert alarm_reasons(prev, _row(0.5, 0.6, agree=None), 1.0) == []  # agreement unmeasured


def test_kpi_rule_by_hand():
    # step 2, scale 0.05: a fall of 0.025 (half the scale) raises λ by 2^0.5
    assert update_coef_kpi(1.0, -0.025) == pytest.approx(math.sqrt(2), rel=1e-15)
    assert update_coef_kpi(1.0, 0.1) == 0.5  # a rise beyond the scale: the full step down
    assert update_coef_kpi(1.0, -1.0) == 2.0  # a fall beyond it: the full step up
    assert update_coef_kpi(0.4, 0.0) == 0.4  # no change: λ kept
    assert update_coef_kpi(0.015, 0.2) == 0.01  # 0.0075 clipped to coef_min
    assert update_coef_kpi(8.0, -0.3) == 10.0  # 16 clipped to coef_max
    # step 1.5, scale 0.1, rise 0.05: λ · 1.5^(−0.5)
    assert update_coef_kpi(0.3, 0.05, 1.5, 0.1, 0.1, 1.0) == pytest.approx(0.3 / math.sqrt(1.5))
    assert update_coef_kpi(0.3, 0.05, 1.0) == 0.3  # step 1: λ fixed
    with pytest.raises(ValueError, match="step >= 1"):
        update_coef_kpi(1.0, 0.1, 0.5)
    with pytest.raises(ValueError, match="finite"):
        update_coef_kpi(1.0, math.nan)


# ---------------------------------------------------------------- config


def _gym(**over):
    return load_config(None, {"run.output": "/tmp/unused", **over}, preset="gym")


SPOT = {"judge": "gym-gold", "num_prompts": 8}
KPI = {"objective.adaptive": "kpi", "objective.kpi": "spot_win_rate",
       "objective.regularizer": "forward_kl", "objective.coef": 1.0}  # fmt: skip


def test_config_sections_defaults_and_errors_name_the_key():
    c = _gym()
    assert c.evaluation.spot_check is None and c.run.stop_on_overoptimization is False
    o = c.objective
    assert (o.kpi, o.kpi_step, o.kpi_scale, o.coef_min, o.coef_max) == (None, 2.0, 0.05, 0.01, 10.0)
    c = load_config(None, ["--preset", "gym", "--evaluation.spot_check.judge", "gym-gold"])
    s = c.evaluation.spot_check
    assert (s.judge, s.num_prompts, s.every, s.seed, s.min_agreement) == ("gym-gold", 64, 1, 0, 0.5)
    c = _gym(**{"evaluation.spot_check": SPOT, **KPI, "run.stop_on_overoptimization": True})
    assert c.objective.adaptive == "kpi" and c.evaluation.spot_check.num_prompts == 8

    bad = [
        ({"evaluation.spot_check": {"num_prompts": 8}}, r"evaluation.spot_check.judge: required"),
        ({"evaluation.spot_check": {**SPOT, "num_prompts": 0}}, r"spot_check.num_prompts: must"),
        ({"evaluation.spot_check": {**SPOT, "every": -1}}, r"spot_check.every: must be > 0"),
        ({"evaluation.spot_check": {**SPOT, "min_agreement": 1.5}}, r"min_agreement: must be in"),
        ({"evaluation.spot_check": {**SPOT, "nmu_prompts": 3}},
         r"unknown config key evaluation.spot_check.nmu_prompts"),
        ({"evaluation.spot_check": {**SPOT, "prompt_token_price": -1}}, r"prompt_token_price"),
        ({"evaluation.spot_check": SPOT, "evaluation.enabled": False},
         r"evaluation.spot_check: .*evaluation.enabled"),
        ({"run.stop_on_overoptimization": True}, r"run.stop_on_overoptimization: .*spot_check"),
        ({**KPI, "objective.kpi": None}, r"objective.kpi: required"),
        ({**KPI, "objective.kpi": "kl_ref"}, r"objective.kpi: unknown metric 'kl_ref'"),
        (KPI, r"objective.kpi=spot_win_rate: needs evaluation.spot_check"),
        ({**KPI, "objective.kpi": "win_rate_sort"}, r"needs evaluation.subset_fn"),
        ({**KPI, "objective.kpi": "win_rate", "objective.coef": 20.0},
         r"objective.coef: the starting λ \(20\) must lie in"),
        ({**KPI, "objective.kpi": "win_rate", "objective.kpi_step": 0.5}, r"objective.kpi_step"),
        ({**KPI, "objective.kpi": "win_rate", "objective.coef_min": 0}, r"objective.coef_min"),
        ({**KPI, "objective.kpi": "win_rate", "objective.adaptive_target": 1.0},
         r"objective.adaptive_target: unused"),
        ({**KPI, "objective.kpi": "win_rate", "objective.regularizer": "",
          "objective.coef": 0.5}, r"coef > 0 needs a regularizer|steers λ of a regularizer"),
    ]  # fmt: skip
    for over, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            _gym(**over)
    assert _gym(**{**KPI, "objective.kpi": "win_rate"}).objective.kpi == "win_rate"
    assert _gym(**{**KPI, "objective.kpi": "accuracy"}).objective.kpi == "accuracy"


def test_kpi_coefficient_reads_the_previous_measurements(tmp_path):
    """λ_t from the metrics of iterations < t: held when the KPI was not measured at t − 1
    (e.g. the spot check skipped it) or is its first measurement; else the rule against the
    last earlier measurement."""
    from rspo.selfplay.kpi import kpi_coef
    from rspo.selfplay.rundir import RunDir

    cfg = _gym(**{"evaluation.spot_check": SPOT, **KPI})
    rd = RunDir(tmp_path)
    log: list[str] = []
    dist = SimpleNamespace(from_main=lambda f, *a, **k: f(*a, **k))
    run = SimpleNamespace(cfg=cfg, rd=rd, log=log.append, dist=dist)

    def put(t, kpi=None, coef=None):
        rd.iter_dir(t).mkdir(parents=True, exist_ok=True)
        row = {"iteration": t, "win_rate": 0.5}
        if kpi is not None:
            row["spot_win_rate"] = kpi
        (rd.iter_dir(t) / "metrics.json").write_text(json.dumps(row))
        if coef is not None:
            (rd.iter_dir(t) / "dataset.json").write_text(json.dumps({"coef": coef}))

    assert kpi_coef(run, 1) == (1.0, None)  # the start: objective.coef
    put(0)  # the spot check not run at iteration 0 (here: absent)
    put(1, kpi=0.55, coef=1.0)
    assert kpi_coef(run, 2) == (1.0, 0.55) and "first measurement" in log[-1]
    put(2, kpi=None, coef=1.0)  # skipped by the spot check
    assert kpi_coef(run, 3) == (1.0, None) and "not measured at iteration 2" in log[-1]
    put(3, kpi=0.525, coef=1.0)  # against iteration 1's 0.55: −0.025 -> ×2^0.5
    coef, kpi = kpi_coef(run, 4)
    assert coef == pytest.approx(math.sqrt(2)) and kpi == 0.525
    assert "spot_win_rate 0.5500 at iteration 1 -> 0.5250 at iteration 3" in log[-1]
    put(4, kpi=0.625, coef=coef)  # +0.1: the full step down
    assert kpi_coef(run, 5)[0] == pytest.approx(math.sqrt(2) / 2)


# ---------------------------------------------------------------- on the facts gym


def _run_cfg(out: Path, **over):
    base = {
        "data.num_prompts": 16, "data.num_eval_prompts": 16,
        "generation.max_new_tokens": 24, "evaluation.max_new_tokens": 24,
        "evaluation.diversity_samples": 0, "evaluation.n_boot": 100,
        "evaluation.temperature": 1.0, "evaluation.num_samples": 2,
        # the spot judge: the gold judge with other settings than the evaluation's
        "evaluation.spot_check": {"judge": "gym-gold", "judge_kwargs": {"gamma": 1.5},
                                  "num_prompts": 12, "every": 1, "min_agreement": None},
        "objective.regularizer": "reverse_kl", "objective.coef": 0.5,
        "judge.batch_size": 1,  # one pair per spot judge call: a fault lands between them
        "training.epochs": 1, "run.iterations": 2, "run.num_threads": 1, "run.output": str(out),
    }  # fmt: skip
    return load_config(None, {**base, **over}, preset="gym")


@pytest.fixture
def spot_calls(monkeypatch):
    """The (prompt, a, b) triples the spot judge (gym-gold, gamma 1.5) is asked, per pass;
    ``fail_at``: the call (counted in the current pass) that raises instead."""
    from rspo.gym.judges import GymGoldJudge
    from rspo.judges import JudgeError

    state = SimpleNamespace(passes=[[]], fail_at=None)
    real = GymGoldJudge._prefer

    def spy(self, prompts, ra, rb):
        if self.gamma == 1.5:
            if state.fail_at is not None and len(state.passes[-1]) + 1 >= state.fail_at:
                raise JudgeError("spot judge down (injected)")
            state.passes[-1].extend(zip(prompts, ra, rb))
        return real(self, prompts, ra, rb)

    monkeypatch.setattr(GymGoldJudge, "_prefer", spy)
    return state


def _cached(out: Path) -> int:
    with sqlite3.connect(out / "spot_judge_cache.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]


def test_gym_run_spot_check_kpi_lambda_and_no_second_payment(tmp_path, spot_calls):
    """A 2-iteration run with the spot check and adaptive kpi, extended to 3 iterations with
    the spot judge failing mid-check, resumed, then re-run: the metrics by hand, λ by the
    rule, and no verdict ever asked twice."""
    from rspo.evaluation.winrate import win_rate
    from rspo.gym.judges import GymGoldJudge
    from rspo.judges import JudgeError
    from rspo.selfplay.loop import run_selfplay

    out = tmp_path / "run"
    kpi = {"objective.adaptive": "kpi", "objective.kpi": "spot_win_rate"}
    log: list[str] = []
    rows = run_selfplay(_run_cfg(out, **kpi), log=log.append)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    spot_calls.passes.append([])
    spot_calls.fail_at = 2  # iteration 3's spot check fails at its 2nd judge call
    cfg = _run_cfg(out, **kpi, **{"run.iterations": 3})
    with pytest.raises(JudgeError, match="injected"):
        run_selfplay(cfg, log=log.append)
    assert not (out / "iter_003" / "metrics.json").exists()
    spot_calls.passes.append([])
    spot_calls.fail_at = None
    rows = run_selfplay(cfg, log=log.append)
    first, failed, resumed = spot_calls.passes
    assert len(failed) == 1 and len(resumed) >= 1  # the check did fail between two calls

    # never asked twice; every verdict asked is cached; each row counts what it paid for
    asked = first + failed + resumed
    assert len(set(asked)) == len(asked) == _cached(out)
    assert [r["spot_judge_calls"] for r in rows][3] == len(resumed)
    assert sum(r["spot_judge_calls"] for r in rows) == len(first) + len(resumed)

    # the metrics, by hand from the run's files
    texts = [json.loads(x)["text"] for x in (out / "prompts.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "eval"]  # fmt: skip
    subset = spot_prompts(16, 12, 0)
    base = [json.loads(x)["responses"] for x in (out / "eval_baseline.jsonl").open()]
    judge = GymGoldJudge(gamma=1.5)
    for r in rows:
        t = r["iteration"]
        d = out / f"iter_{t:03d}"
        pol = [json.loads(x)["responses"] for x in (d / "eval_outputs.jsonl").open()]
        proxy = json.loads((d / "proxy_judgments.json").read_text())
        q, same, pairs = [], [], []
        for i in subset:
            for j in range(2):
                a, b = pol[i][j]["text"], base[i][j]["text"]
                q.append(judge.prefer([texts[i]], [a], [b])[0])
                same.append(a == b)
                pairs.append(i * 2 + j)
        means = [(q[2 * n] + q[2 * n + 1]) / 2 for n in range(len(subset))]
        want = win_rate(means, n_boot=100, seed=0)
        assert r["spot_win_rate"] == pytest.approx(want.mean, abs=1e-12)
        assert r["spot_win_rate_ci"] == pytest.approx([want.lo, want.hi], abs=1e-12)
        assert 0.0 <= r["spot_lc_win_rate"] <= 1.0
        agree, n = agreement([proxy[p] for p in pairs], q, same)
        assert r["spot_agreement"] == agree and r["spot_agreement_pairs"] == n
        assert (r["spot_prompts"], r["spot_pairs"]) == (12, 24)
        assert isinstance(r["spot_judge_calls"], int) and r["spot_judge_calls"] >= 0
        assert ("overoptimization" in r) == (t > 0)  # checked iterations after π_0
        assert "spot_judge_prompt_tokens" not in r  # gym-gold reports no usage
    assert rows[0]["spot_win_rate"] == 0.5 and rows[0]["spot_agreement"] is None  # π_0 = π_ref
    assert rows[0]["spot_judge_calls"] == 0  # identical pairs are ties, never asked
    assert any(r["spot_agreement"] is not None for r in rows)

    # λ: the start, then the rule on the previous iterations' spot win rates
    assert rows[1]["coef"] == 0.5
    for t in (2, 3):
        change = rows[t - 1]["spot_win_rate"] - rows[t - 2]["spot_win_rate"]
        assert rows[t]["coef"] == pytest.approx(update_coef_kpi(rows[t - 1]["coef"], change))
        assert f"iteration {t}: λ" in "\n".join(log)
    assert rows[3]["coef"] != rows[2]["coef"] or rows[2]["coef"] != 0.5  # λ moved

    # re-run an evaluation whose record of verdicts is gone: the cache answers, nothing paid
    for f in ("metrics.json", "evaluate.done", "spot_judgments.json"):
        (out / "iter_003" / f).unlink()
    spot_calls.passes.append([])
    again = run_selfplay(cfg, log=lambda m: None)
    assert spot_calls.passes[-1] == [] and again[3]["spot_judge_calls"] == 0
    assert again[3]["spot_win_rate"] == rows[3]["spot_win_rate"]
    written = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [w["coef"] for w in written[1:]] == [r["coef"] for r in rows[1:]]


def test_gym_run_stops_on_the_alarm_and_continues_when_told(tmp_path, spot_calls):
    """min_agreement 1.0: the first checked iteration with a disagreement fires the alarm;
    run.stop_on_overoptimization stops the run after it (checkpoint and metrics kept); the
    same command again does no work; turned off, the run trains on to run.iterations."""
    from rspo.selfplay.loop import run_selfplay

    out = tmp_path / "stop"
    spot = {"judge": "gym-gold", "judge_kwargs": {"gamma": 1.5}, "num_prompts": 16,
            "min_agreement": 1.0}  # fmt: skip
    over = {"evaluation.spot_check": spot, "run.iterations": 4,
            "run.stop_on_overoptimization": True, "training.lr": 2e-3}  # fmt: skip
    log: list[str] = []
    rows = run_selfplay(_run_cfg(out, **over), log=log.append)
    last = rows[-1]
    t = last["iteration"]
    assert last["overoptimization"] is True and last["spot_agreement"] < 1.0, rows
    assert "agree on" in last["overoptimization_reason"]
    assert all(r["overoptimization"] is False for r in rows[1:-1])
    assert any("WARNING: iteration" in m and "over-optimization alarm" in m for m in log)
    assert any(m.startswith(f"stopping after iteration {t}") for m in log)
    assert t < 4 and not (out / f"iter_{t + 1:03d}").exists()
    assert (out / f"iter_{t:03d}" / "checkpoint").is_dir()
    written = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert written[-1]["overoptimization"] is True and len(written) == len(rows)

    log.clear()
    again = run_selfplay(_run_cfg(out, **over), log=log.append)  # same command: stays stopped
    assert again == rows and not (out / f"iter_{t + 1:03d}").exists()
    assert any(m.startswith(f"stopping after iteration {t}") for m in log)

    over["run.stop_on_overoptimization"] = False  # resumable: continue past the alarm
    rows = run_selfplay(_run_cfg(out, **over), log=lambda m: None)
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]


def test_sweep_report_shows_spot_metrics_and_alarms(tmp_path):
    """A sweep whose runs have a spot check: the tables gain the spot columns and an alarm
    count, the report lists each run's first alarm and why, and the curves carry λ."""
    from rspo.sweep import SweepRun, aggregate, aggregate_iterations, write_sweep_reports

    def cell(name, seed, rows):
        out = tmp_path / name / f"seed{seed}"
        out.mkdir(parents=True)
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return SweepRun(name, None, seed, {}, out)

    def row(t, spot, alarm=False):
        r = {"iteration": t, "win_rate": 0.5 + t / 100, "lc_win_rate": 0.5, "avg_length": 20.0,
             "proxy_win_rate": 0.5 + t / 50, "kl_ref": t / 10, "spot_win_rate": spot,
             "spot_lc_win_rate": spot, "spot_agreement": 0.8, "coef": 1.0 / (t + 1)}  # fmt: skip
        if t:
            r["overoptimization"] = alarm
            r["overoptimization_reason"] = "spot fell" if alarm else None
        return r

    runs = [
        cell("kpi", 0, [row(0, 0.5), row(1, 0.55), row(2, 0.45, alarm=True)]),
        cell("kpi", 1, [row(0, 0.5), row(1, 0.56), row(2, 0.57)]),
    ]
    per_run, table = aggregate(runs)
    assert [r["alarm_iteration"] for r in per_run] == [2, None]
    assert per_run[0]["alarm_reason"] == "spot fell" and per_run[0]["spot_win_rate"] == 0.45
    assert table[0]["alarms"] == 1 and table[0]["spot_win_rate"] == pytest.approx(0.51)
    curves = aggregate_iterations(runs)
    assert [c["coef"] for c in curves] == pytest.approx([1.0, 0.5, 1 / 3])
    write_sweep_reports(tmp_path / "report", per_run, table, curves)
    md = (tmp_path / "report" / "table.md").read_text()
    assert "| spot_win_rate | spot_lc_win_rate | spot_agreement | alarms |" in md
    assert "| 1/2 |" in md and "- kpi seed 0: iteration 2: spot fell" in md
    # runs without a spot check: the tables as before
    plain = [cell("sppo", 0, [{k: v for k, v in row(1, 0.5).items() if "spot" not in k}])]
    per_run, table = aggregate(plain)
    assert "alarm_iteration" not in per_run[0] and "alarms" not in table[0]
    assert "coef" not in aggregate_iterations(plain)[0]


def test_openai_spot_judge_reports_calls_tokens_and_cost(tmp_path, monkeypatch):
    """The openai judge as the spot judge, against a fake OpenAI-compatible server: each row
    counts the requests its spot check made (both presentation orders of each pair that
    differs), their tokens and cost; a re-run asks the server nothing."""
    from test_operations import _verdict

    from rspo.selfplay.loop import run_selfplay

    from fixtures_lm import make_pipeline_env, tiny_run
    from test_judges_openai import FakeServer

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = FakeServer()
    try:
        server.respond = lambda n, body, h: (200, _verdict(body), 0.0, {})
        tmp, model = make_pipeline_env(tmp_path)
        kw = {"model": "judge", "base_url": server.url, "api_key_env": None, "timeout": 5.0,
              "max_concurrency": 1}  # fmt: skip
        spot = {"judge": "openai", "judge_kwargs": kw, "num_prompts": 5,
                "prompt_token_price": 2.0, "completion_token_price": 8.0}  # fmt: skip
        cfg = load_config(None, tiny_run(
            tmp, model, str(tmp / "run"), run={"iterations": 1},
            evaluation={"num_samples": 2, "temperature": 1.0, "n_boot": 50, "spot_check": spot},
        ))  # fmt: skip
        rows = run_selfplay(cfg, log=lambda m: None)
        asked = len(server.requests)
        assert [r["spot_judge_calls"] for r in rows][0] == 0  # π_0 = π_ref: all ties
        r = rows[1]
        assert r["spot_judge_calls"] == asked == 2 * r["spot_agreement_pairs"] > 0
        assert r["spot_judge_prompt_tokens"] == 11 * asked  # the fake server's usage
        assert r["spot_judge_completion_tokens"] == asked
        assert r["spot_judge_cost"] == pytest.approx((11 * asked * 2.0 + asked * 8.0) / 1e6)
        assert (r["spot_prompts"], r["spot_pairs"]) == (5, 10)
        assert rows[0]["spot_judge_prompt_tokens"] == 0  # a judge with usage, nothing paid
        for f in ("metrics.json", "evaluate.done", "spot_judgments.json"):
            (tmp / "run" / "iter_001" / f).unlink()
        again = run_selfplay(cfg, log=lambda m: None)
        assert len(server.requests) == asked and again[1]["spot_judge_calls"] == 0
        assert again[1]["spot_judge_prompt_tokens"] == 0
        assert again[1]["spot_win_rate"] == r["spot_win_rate"]
    finally:
        server.close()
