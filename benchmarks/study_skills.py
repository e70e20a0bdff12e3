"""Summarise the skills-gym regularizer study (``rspo/configs/sweep_skills.yaml``).

Reads every cell ``<sweep>/<setting>/seed<S>/metrics.jsonl`` that exists (finished or not),
and writes ``benchmarks/results/study_skills/``: ``summary.json`` (per setting and iteration:
seed means with 95 % t-intervals; paired-by-seed differences against SPPO for the paper's
claims and the early-stopping question; ``frontier_gap``: gold win rate minus SPPO's at
the same KL, per iteration, and ``at_sppo_kl/<metric>`` the same for LC win rate, length,
Self-BLEU and accuracy), ``table.md`` and ``frontier.png`` (seed means).

    python benchmarks/study_skills.py runs/sweep_skills
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

METRICS = ("win_rate", "lc_win_rate", "proxy_win_rate", "kl_ref", "avg_length", "accuracy",
           "self_bleu")


def interval(values: list[float]) -> dict:
    """Mean, 95 % t-interval half-width, standard deviation and n of ``values``."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if len(a) < 2:
        return {"mean": float(a.mean()), "half": None, "sd": None, "n": len(a)}
    sd = float(a.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(a) - 1) * sd / math.sqrt(len(a)))
    return {"mean": float(a.mean()), "half": half, "sd": sd, "n": len(a)}


def load(sweep: Path) -> dict[str, dict[int, dict[int, dict]]]:
    """setting -> seed -> iteration -> metrics row."""
    out: dict[str, dict[int, dict[int, dict]]] = {}
    for f in sorted(sweep.glob("*/seed*/metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        seed = int(f.parent.name.removeprefix("seed"))
        out.setdefault(f.parent.parent.name, {})[seed] = {r["iteration"]: r for r in rows}
    return out


def per_iteration(cells: dict[int, dict[int, dict]]) -> dict[int, dict]:
    """Iteration -> metric -> interval over the seeds that reached it."""
    iters = sorted({t for rows in cells.values() for t in rows})
    return {
        t: {m: interval([rows[t][m] for rows in cells.values() if t in rows]) for m in METRICS}
        for t in iters
    }


def paired(a: dict[int, dict[int, dict]], b: dict[int, dict[int, dict]], t_a, t_b, m: str):
    """Interval of a − b over seeds both have; ``t_a``/``t_b`` pick an iteration per seed."""
    diffs = []
    for s in sorted(set(a) & set(b)):
        ta, tb = t_a(a[s]), t_b(b[s])
        if ta in a[s] and tb in b[s]:
            diffs.append(a[s][ta][m] - b[s][tb][m])
    return interval(diffs) if diffs else None


def frontier_gap(
    cells: dict[int, dict[int, dict]], sppo: dict[int, dict[int, dict]], m: str = "win_rate"
) -> dict:
    """Per iteration: interval over seeds of metric ``m`` minus SPPO's ``m`` at the same
    KL(π‖π_ref), SPPO's curve (iterations 0..T of the same seed) linearly interpolated.
    Points beyond SPPO's largest KL of that seed are left out (no extrapolation)."""
    out = {}
    iters = sorted({t for rows in cells.values() for t in rows if t > 0})
    for t in iters:
        diffs = []
        for s in sorted(set(cells) & set(sppo)):
            if t not in cells[s]:
                continue
            pts = sorted((r["kl_ref"], r[m]) for r in sppo[s].values())
            kl = cells[s][t]["kl_ref"]
            if kl <= pts[-1][0]:
                ref = float(np.interp(kl, [p[0] for p in pts], [p[1] for p in pts]))
                diffs.append(cells[s][t][m] - ref)
        out[str(t)] = interval(diffs) if len(diffs) >= 2 else None
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sweep", nargs="?", default="runs/sweep_skills")
    ap.add_argument("--out", default="benchmarks/results/study_skills")
    args = ap.parse_args(argv)
    data = load(Path(args.sweep))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"settings": {}, "vs_sppo": {}}
    for name, cells in data.items():
        summary["settings"][name] = {
            "seeds": sorted(cells),
            "iterations": {str(t): v for t, v in per_iteration(cells).items()},
        }
    sppo = data.get("sppo", {})
    if sppo:
        sppo_it = per_iteration(sppo)
        full = [t for t in sppo_it if sppo_it[t]["win_rate"]["n"] == len(sppo)]
        best = max(full, key=lambda t: sppo_it[t]["win_rate"]["mean"])  # oracle early stop
        summary["sppo_best_iteration"] = best
        final = max(t for cells in data.values() for rows in cells.values() for t in rows)
        summary["final_iteration"] = final
        last = lambda rows: final  # noqa: E731  (cells that have not reached it are left out)
        for name, cells in data.items():
            if name == "sppo":
                continue
            summary["vs_sppo"][name] = {
                f"final_minus_sppo_final/{m}": paired(cells, sppo, last, last, m)
                for m in METRICS
            } | {
                f"final_minus_sppo_best/{m}": paired(cells, sppo, last, lambda r: best, m)
                for m in ("win_rate", "lc_win_rate", "kl_ref")
            } | {"frontier_gap": frontier_gap(cells, sppo)} | {
                f"at_sppo_kl/{m}": frontier_gap(cells, sppo, m)
                for m in ("lc_win_rate", "avg_length", "self_bleu", "accuracy")
            }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| setting | seeds | iter | gold win rate | LC | proxy | KL (nats) | length | "
             "accuracy | Self-BLEU |", "|---" * 10 + "|"]
    fmt = lambda v: (  # noqa: E731
        f"{v['mean']:.3f}" + (f" ± {v['half']:.3f}" if v["half"] is not None else "")
    )
    for name, s in summary["settings"].items():
        for t, v in s["iterations"].items():
            lines.append(
                f"| {name} | {v['win_rate']['n']} | {t} | "
                + " | ".join(fmt(v[m]) for m in METRICS)
                + " |"
            )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    from rspo.evaluation.plots import plot_frontier

    means = {
        name: [
            {"iteration": int(t), **{m: v[m]["mean"] for m in METRICS},
             "win_rate_ci": [v["win_rate"]["mean"] - (v["win_rate"]["half"] or 0),
                             v["win_rate"]["mean"] + (v["win_rate"]["half"] or 0)],
             "kl_ref_ci": [v["kl_ref"]["mean"] - (v["kl_ref"]["half"] or 0),
                           v["kl_ref"]["mean"] + (v["kl_ref"]["half"] or 0)]}
            for t, v in s["iterations"].items()
        ]
        for name, s in summary["settings"].items()
    }
    plot_frontier(means, out / "frontier.png",
                  title="skills gym: gold (solid) and proxy (dashed) win rate vs KL, seed means")
    print((out / "table.md").read_text())
    print(json.dumps({k: v for k, v in summary.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main()
