"""The benchmark scripts' --quick runs: output structure, sane rates, consistent ratios.

Speed targets are not asserted here (they live in benchmarks/results/perf); these tests
check that every script runs and that what it prints is internally consistent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = ["bench_iteration", "bench_memory", "bench_judge", "bench_scaling"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"rspo_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name: str, tmp_path: Path, *extra: str) -> dict:
    """Run ``name --quick --json OUT`` in-process; check the shared report structure."""
    out = tmp_path / f"{name}.json"
    returned = _load(name).main(["--quick", "--json", str(out), *extra])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned))
    m = data["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["torch_threads"] == 1 and m["torch"]
    assert len(data["load_start"]) == 3 and len(data["load_end"]) == 3
    md = out.with_suffix(".md").read_text()
    assert "Load average" in md and m["cpu"] in md
    for key, table in data["tables"].items():
        assert table.split("\n\n", 1)[1] in md
        assert data["results"][key], key
    for key, r in data["ratios"].items():  # every ratio is its printed operands' quotient
        assert r["value"] == pytest.approx(r["numerator"] / r["denominator"], rel=1e-12), key
        assert f"`{key}` = {r['value']:.2f}" in md
    return data


def _rows(data: dict, table: str, col: str) -> dict:
    return {r[col]: r for r in data["results"][table]}


def _check_iteration_rspo(data: dict) -> dict:
    thr = _rows(data, "throughput", "system")
    for r in thr.values():
        assert r["samples/s"] > 0 and r["samples/CPU-s"] > 0
        assert r["samples/s"] == pytest.approx(r["samples/iter"] / r["s/iter"])
        assert r["samples/iter"] == r["prompts"] * r["samples/prompt"]
        assert 1 <= r["mean resp tokens"] <= 16  # quick: max_new_tokens 16
    assert thr["rspo K=2"]["samples/iter"] == thr["rspo K=4"]["samples/iter"]
    k = data["ratios"]["rspo_k4_vs_k2"]
    assert k["numerator"] == thr["rspo K=4"]["samples/s"]
    assert k["denominator"] == thr["rspo K=2"]["samples/s"]
    g = data["ratios"]["rspo_settings_gain"]  # the CPU engine settings on / off
    assert g["numerator"] == thr["rspo K=2"]["samples/s"]
    assert g["denominator"] == thr["rspo K=2, glibc malloc + torch's F.linear"]["samples/s"]
    for r in data["results"]["rspo_stages"]:
        stages = r["generate"] + r["judge"] + r["score"] + r["train"]
        assert stages == pytest.approx(r["total"], rel=0.05)  # medians of sums vs sums of medians
        assert 0 <= r["gen: load"] <= r["generate"]  # 0: the trained policy was kept
        assert 0 < r["score: load"] + r["score: no-grad fwd"] <= r["score"]
        inside = ("load", "grad fwd", "backward", "optimizer", "save")
        assert r["train: load"] == 0  # training starts from the kept policy, no reload
        assert all(r[f"train: {k}"] > 0 for k in inside if k != "load")
        assert sum(r[f"train: {k}"] for k in inside) <= r["train"] * 1.05
        assert 0 < r["fsync"] < r["total"]
    counts = data["settings"]["rspo_counts"]
    assert 1 <= counts["rspo K=2"]["judge_evals_per_iter"] <= data["settings"]["prompts"]
    return thr


def test_bench_iteration_rspo_half(tmp_path):
    data = _run("bench_iteration", tmp_path, "--no-trl")
    _check_iteration_rspo(data)
    assert "trl_stages" not in data["results"] and "rspo_vs_trl" not in data["ratios"]
    assert any("TRL half skipped" in n for n in data["notes"])


def _trl_python() -> str | None:
    return _load("bench_iteration").find_trl_python(None)


@pytest.mark.skipif(
    _trl_python() is None,
    reason="trl not installed here (pip install 'rspo[bench]' or set RSPO_BENCH_TRL_PYTHON): "
    "the TRL half of bench_iteration is not run in CI",
)
def test_bench_iteration_against_trl(tmp_path):
    data = _run("bench_iteration", tmp_path)
    thr = _check_iteration_rspo(data)
    matched = "TRL OnlineDPO (fp32, no grad ckpt)"
    r = data["ratios"]["rspo_vs_trl"]
    assert r["numerator"] == thr["rspo K=2"]["samples/s"]
    assert r["denominator"] == thr[matched]["samples/s"]
    assert thr[matched]["samples/iter"] == thr["rspo K=2"]["samples/iter"]
    same = data["ratios"]["rspo_vs_trl_same_settings"]
    trl_same = thr[f"{matched[:-1]}, rspo's malloc + oneDNN linear)"]
    assert same["denominator"] == trl_same["samples/s"]
    for row in data["results"]["trl_stages"]:
        parts = [row[k] for k in ("generate", "judge (reward fn)", "policy fwd", "ref fwd", "rest")]
        assert row["generate"] > 0 and row["policy fwd"] > 0 and row["ref fwd"] > 0
        assert sum(parts) == pytest.approx(row["total"], rel=0.05)
    where = {r["work"]: r for r in data["results"]["where_time_goes"]}
    total = where.pop("total")
    assert sum(r["TRL"] for r in where.values()) == pytest.approx(total["TRL"], rel=0.05)
    run_dir = next(r for k, r in where.items() if k.startswith("rspo run dir"))
    assert 0 < run_dir["rspo K=2"] < total["rspo K=2"] and run_dir["TRL"] == 0  # no double count
    assert total["rspo K=2"] == pytest.approx(thr["rspo K=2"]["s/iter"])


def test_bench_memory(tmp_path):
    data = _run("bench_memory", tmp_path)
    rows = data["results"]["memory"]
    assert len(rows) == 2 and rows[0]["params"] == rows[1]["params"] > 0
    for r in rows:
        assert 0 < r["RSS after import"] <= r["peak RSS"]
        assert r["RSS after model+batch"] <= r["peak RSS"]
        assert r["peak - import"] == pytest.approx(r["peak RSS"] - r["RSS after import"], abs=1.0)
        assert r["s/step"] > 0
    sft, rspo = rows
    r = data["ratios"]["rspo_vs_sft_peak"]
    assert (r["numerator"], r["denominator"]) == (rspo["peak RSS"], sft["peak RSS"])
    assert 0.5 < r["value"] < 2.0


def test_bench_judge(tmp_path):
    data = _run("bench_judge", tmp_path)
    n_pairs = data["settings"]["pairs_per_iteration"]
    s = data["settings"]
    assert n_pairs == s["prompts"] * s["k"] * (s["k"] - 1) // 2
    rows = {
        (r["judge"], r["mode"].split(" (")[0].split(",")[0]): r for r in data["results"]["modes"]
    }
    for r in rows.values():
        assert r["pairs/s"] == pytest.approx(n_pairs / r["seconds"]) and r["pairs/s"] > 0
    orders = {"gym-proxy": 1, "reward_model": 1, "pairwise_lm": 2}  # each judge's default
    for judge, k in orders.items():
        unb = rows[(judge, "unbatched")]
        assert unb["judge calls"] == n_pairs and unb["judgements"] == k * n_pairs  # swap: 1 call
        assert rows[(judge, "batched")]["judge calls"] == 1  # quick: all pairs fit one call
        assert rows[(judge, "batched + sqlite cache")]["judge calls"] <= 1
    warm = [r for r in data["results"]["modes"] if "warm" in r["mode"]]
    assert len(warm) == 3 and all(r["judge calls"] == 0 == r["judgements"] for r in warm)
    # batch size 1: one forward per distinct response of a pair (reward model; identical
    # responses are scored once) or per ordered pair (pairwise LM)
    assert n_pairs < rows[("reward_model", "unbatched")]["model forwards"] <= 2 * n_pairs
    assert rows[("pairwise_lm", "unbatched")]["model forwards"] == 2 * n_pairs
    swap = {(r["judge"], r["orders"]): r for r in data["results"]["order_swap"]}
    for judge in orders:
        one, both = swap[(judge, "one order")], swap[(judge, "both orders")]
        assert both["judgements"] == 2 * one["judgements"] == 2 * n_pairs
        assert data["ratios"][f"{judge}_swap_judgements"]["value"] == 2
    # the reward model scores each distinct response once per call: the swap adds no forward
    assert swap[("reward_model", "both orders")]["model forwards"] == 1
    assert swap[("pairwise_lm", "both orders")]["model forwards"] == 2  # 2 * pairs > batch 32


def test_bench_scaling(tmp_path):
    data = _run("bench_scaling", tmp_path)
    rows = data["results"]["scaling"]
    sweeps = {r["sweep"] for r in rows}
    assert sweeps == {"prompts", "K (gym-proxy)", "K (pairwise_lm)", "model size"}
    for r in rows:
        assert r["samples"] == r["prompts"] * r["K"]
        assert r["judge pairs"] == r["prompts"] * r["K"] * (r["K"] - 1) // 2
        orders = 2 if r["judge"] == "pairwise_lm" else 1
        assert 1 <= r["judge evals"] <= orders * r["judge pairs"]
        parts = r["generate s"] + r["judge s"] + r["score s"] + r["train s"]
        assert parts == pytest.approx(r["total s"], rel=0.05) and r["total s"] > 0
        assert r["ms/sample"] == pytest.approx(1000 * r["total s"] / r["samples"])
        assert 0 < r["mean resp tokens"] <= 8
    sizes = [r for r in rows if r["sweep"] == "model size"]
    assert float(sizes[0]["params"][:-1]) < float(sizes[-1]["params"][:-1])


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_cli_help(name):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert all(f in out for f in ("--quick", "--repeats", "--json"))


def test_run_all_script_covers_every_benchmark():
    text = (BENCH / "run_all.sh").read_text()
    subprocess.run(["bash", "-n", str(BENCH / "run_all.sh")], check=True)
    for name in SCRIPTS:
        assert f"benchmarks/{name}.py" in text
