"""Time per self-play iteration, stage by stage, as prompts, K and model size grow (CPU).

Three sweeps through the real loop (:class:`rspo.selfplay.loop.SelfPlayRun`, one optimizer
step per iteration, the paper's regularizer): prompts per iteration; K samples per prompt
(N*K generations but N*K(K-1)/2 judge pairs), once with the rule-based gym-proxy judge
and once with a small local pairwise-LM judge (order-sensitive: both orders, so
N*K(K-1) judgements); and policy size (random-init Llamas built here; they rarely stop
early, so responses run to the token cap). Each setting: one warm-up iteration, then the
median of the measured ones.

    python benchmarks/bench_scaling.py [--quick] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, base_parser, med, repeats, setup_env  # noqa: E402
from _selfplay import (  # noqa: E402
    STAGES,
    build_judge_model_dir,
    build_policy_dir,
    param_count,
    rspo_iterations,
)


def grid(quick: bool, tmp: Path) -> list[dict[str, Any]]:
    """The settings of the three sweeps."""
    from rspo.gym import base_model_path

    gym = str(base_model_path())
    if quick:
        lm = build_judge_model_dir(tmp / "judge_lm", "pairwise", hidden=32, layers=1)
        sizes = [(32, 1, 2), (64, 2, 4)]
        prompts, ks, n, k, mnt = [2, 4], [2, 3], 2, 2, 8
    else:
        lm = build_judge_model_dir(tmp / "judge_lm", "pairwise", hidden=128, layers=4)
        sizes = [(128, 4, 4), (256, 6, 8), (512, 8, 8)]
        prompts, ks, n, k, mnt = [8, 16, 32], [2, 4, 8], 8, 4, 48
    lm_judge = {
        "judge": "pairwise_lm",
        "judge_kwargs": {"model": str(lm), "batch_size": 32, "device": "cpu"},
    }
    out = []
    for p in prompts:
        out.append({"sweep": "prompts", "model": gym, "prompts": p, "k": k, "max_new_tokens": mnt})
    for judge in ({"judge": "gym-proxy"}, lm_judge):
        for kk in ks:
            out.append(
                {
                    "sweep": f"K ({judge['judge']})",
                    "model": gym,
                    "prompts": n,
                    "k": kk,
                    "max_new_tokens": mnt,
                    **judge,
                }
            )
    for h, layers, heads in sizes:
        d = build_policy_dir(tmp / f"policy_{h}x{layers}", h, layers, heads)
        out.append(
            {"sweep": "model size", "model": str(d), "prompts": n, "k": k, "max_new_tokens": mnt}
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweeps and print/save the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = base_parser(__doc__.splitlines()[0], default_repeats=3)
    args = ap.parse_args(argv)
    setup_env(args.threads)
    R = repeats(args, 3)
    tmp = Path(tempfile.mkdtemp(prefix="rspo-bench-scaling-"))
    rep = Report("bench_scaling", argv, {"repeats": R, "warmup": 1, "threads": args.threads})
    rows, recs = [], []
    try:
        settings = grid(args.quick, tmp)
        rep.data["settings"]["grid"] = [
            {k: v for k, v in s.items() if k != "judge_kwargs"} for s in settings
        ]
        for i, s in enumerate(settings):
            s = {**s, "warmup": 1, "measured": R, "threads": args.threads}
            out = rspo_iterations(s, tmp / f"run_{i}")
            its = out["measured"]
            m = {key: med([it[key] for it in its]) for key in [*STAGES, "total", "tokens"]}
            it0 = its[0]
            params = param_count(s["model"])
            judge = s.get("judge", "gym-proxy")
            pairs = s["prompts"] * s["k"] * (s["k"] - 1) // 2
            rec = {
                "sweep": s["sweep"],
                "prompts": s["prompts"],
                "k": s["k"],
                "params": params,
                "judge": judge,
                "samples": it0["samples"],
                "pairs": pairs,
                "judgements": it0["judge_pairs"],
                "mean_tokens": m["tokens"] / it0["samples"],
                **{st: m[st] for st in STAGES},
                "total": m["total"],
            }
            recs.append(rec)
            rows.append(
                [
                    rec["sweep"],
                    rec["prompts"],
                    rec["k"],
                    f"{params / 1e6:.2f}M",
                    judge,
                    rec["samples"],
                    pairs,
                    rec["judgements"],
                    rec["mean_tokens"],
                    *[m[st] for st in STAGES],
                    m["total"],
                    1000 * m["total"] / rec["samples"],
                ]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep.table(
        "scaling",
        f"Seconds per iteration by stage (medians of {R} measured iterations after 1 warm-up)",
        [
            "sweep",
            "prompts",
            "K",
            "params",
            "judge",
            "samples",
            "judge pairs",
            "judge evals",
            "mean resp tokens",
            "generate s",
            "judge s",
            "score s",
            "train s",
            "total s",
            "ms/sample",
        ],
        rows,
    )
    for judge in ("gym-proxy", "pairwise_lm"):
        ks = [r for r in recs if r["sweep"] == f"K ({judge})"]
        lo, hi = ks[0], ks[-1]
        rep.ratio(
            f"k_sweep_{judge}_judge_growth",
            hi["judge"],
            lo["judge"],
            f"judge-stage time at K={hi['k']} / K={lo['k']} with {judge} "
            f"(judge pairs grow {hi['pairs'] / lo['pairs']:.0f}x)",
        )
        rep.ratio(
            f"k_sweep_{judge}_generate_growth",
            hi["generate"],
            lo["generate"],
            f"generate-stage time at K={hi['k']} / K={lo['k']} with {judge} "
            f"(generations grow {hi['samples'] / lo['samples']:.0f}x)",
        )
    sizes = [r for r in recs if r["sweep"] == "model size"]
    grow = sizes[-1]["params"] / sizes[0]["params"]
    rep.ratio(
        "model_size_total_growth",
        sizes[-1]["total"],
        sizes[0]["total"],
        f"iteration time of the {sizes[-1]['params'] / 1e6:.2g}M policy / the "
        f"{sizes[0]['params'] / 1e6:.2g}M one ({grow:.0f}x params)",
    )
    rep.note(
        "judge pairs = N*K(K-1)/2 unordered pairs; judge evals = ordered pairs that reached "
        "the judge: x2 for the order-sensitive pairwise_lm, minus repeats the judge cache "
        "absorbed (identical responses, or a triple already judged in an earlier iteration: "
        "the gym model's short answers often repeat)."
    )
    return rep.finish(args.json)


if __name__ == "__main__":
    main()
