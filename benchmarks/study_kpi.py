"""Summarise the KPI-controller and spot-check study (``rspo/configs/sweep_kpi.yaml``).

Reads every ``<sweep>/<setting>/seed<S>/metrics.jsonl`` and writes
``benchmarks/results/study_kpi/``: ``summary.json`` and ``table.md`` with, per setting, the
final and best gold win rate over seeds (mean, 95 % t-interval, s.d.), the λ trajectory and
the alarms; and how the spot check (the gold judge on a fixed 64 of the 256 eval prompts)
tracks the full evaluation and what it costs (docs/operations.md#on-the-gym).

    python benchmarks/study_kpi.py runs/sweep_kpi
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from study_skills import interval, load  # noqa: E402

FINAL = (
    "win_rate",
    "lc_win_rate",
    "proxy_win_rate",
    "spot_win_rate",
    "kl_ref",
    "avg_length",
    "accuracy",
    "self_bleu",
)


def eval_pairs_judged(run: Path, t: int) -> int | None:
    """Pairs of the full evaluation at iteration ``t`` that a judge must see (not identical)."""
    f = run / f"iter_{t:03d}" / "annotations.json"
    if not f.exists():
        return None
    return sum(a["output_1"] != a["output_2"] for a in json.loads(f.read_text()))


def summarise(sweep: Path) -> dict:
    """Per-setting results, spot-vs-full tracking and cost."""
    data = load(sweep)
    out: dict = {"settings": {}, "tracking": {}, "cost": {}}
    diffs, spot, full, covered, spot_calls, full_calls = [], [], [], [], [], []
    for name, cells in sorted(data.items()):
        last = {s: max(rows) for s, rows in cells.items()}
        final = {
            m: interval(
                [cells[s][last[s]].get(m) for s in cells if cells[s][last[s]].get(m) is not None]
            )
            for m in FINAL
        }
        best = interval([max(r["win_rate"] for r in rows.values()) for rows in cells.values()])
        coefs = {
            s: [rows[t].get("coef") for t in sorted(rows) if t > 0] for s, rows in cells.items()
        }
        alarms = {
            s: [
                (t, rows[t].get("overoptimization_reason"))
                for t in sorted(rows)
                if rows[t].get("overoptimization")
            ]
            for s, rows in cells.items()
        }
        out["settings"][name] = {
            "seeds": sorted(cells),
            "iterations": last,
            "final": final,
            "best_win_rate": best,
            "coef": coefs,
            "alarms": alarms,
        }
        for s, rows in cells.items():
            run = sweep / name / f"seed{s}"
            for t, r in rows.items():
                if t == 0 or r.get("spot_win_rate") is None:
                    continue
                spot.append(r["spot_win_rate"])
                full.append(r["win_rate"])
                diffs.append(r["spot_win_rate"] - r["win_rate"])
                lo, hi = r["spot_win_rate_ci"]
                covered.append(lo <= r["win_rate"] <= hi)
                spot_calls.append(r.get("spot_judge_calls") or 0)
                full_calls.append(eval_pairs_judged(run, t))
    if spot:
        d = np.asarray(diffs)
        out["tracking"] = {
            "n": len(d),
            "mean_diff": float(d.mean()),
            "mean_abs_diff": float(np.abs(d).mean()),
            "corr": float(np.corrcoef(spot, full)[0, 1]),
            "full_in_spot_ci": float(np.mean(covered)),
        }
        fc = [c for c in full_calls if c is not None]
        out["cost"] = {
            "spot_pairs_per_check": 256,
            "full_pairs_per_eval": 1024,
            "spot_judge_calls_mean": float(np.mean(spot_calls)),
            "full_eval_pairs_judged_mean": float(np.mean(fc)) if fc else None,
        }
    return out


def table(s: dict) -> str:
    """Markdown: one row per setting."""
    f = lambda i: "-" if i["half"] is None else f"{i['mean']:.3f} ± {i['half']:.3f}"  # noqa: E731
    lines = [
        "| setting | seeds | final gold | best gold (any iter) | final spot | proxy | KL | "
        "length | λ at iter 6 (per seed) | alarms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in s["settings"].items():
        fin = r["final"]
        lam = ", ".join(
            "-" if not c or c[-1] is None else f"{c[-1]:.2f}" for c in r["coef"].values()
        )
        n_alarm = sum(len(a) for a in r["alarms"].values())
        lines.append(
            f"| {name} | {len(r['seeds'])} | {f(fin['win_rate'])} | {f(r['best_win_rate'])} | "
            f"{f(fin['spot_win_rate'])} | {f(fin['proxy_win_rate'])} | {f(fin['kl_ref'])} | "
            f"{fin['avg_length']['mean']:.1f} | {lam} | {n_alarm} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep", nargs="?", default="runs/sweep_kpi")
    ap.add_argument("--out", default="benchmarks/results/study_kpi")
    args = ap.parse_args()
    s = summarise(Path(args.sweep))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    (out / "table.md").write_text(table(s) + "\n")
    print(table(s))
    print(json.dumps({"tracking": s["tracking"], "cost": s["cost"]}, indent=1))


if __name__ == "__main__":
    main()
