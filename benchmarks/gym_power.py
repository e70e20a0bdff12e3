"""Can the skills gym's demo reach its power targets? SPPO-only variants of the full demo.

Each variant is the full demo's SPPO run (``rspo.demo``) with a few overrides, run for two
iterations; the criterion is the *proxy* win rate (what a practitioner sees), never RSPO and
never which method wins. Gold is printed to show what the proxy hides. Writes
``benchmarks/results/gym_skills/power.json`` and prints a markdown table.
Completed runs under ``--output`` are read back, not rerun. The recorded results are from the
first skills base (commit ``3902887``; docs/gym.md#how-the-base-was-chosen).

    python benchmarks/gym_power.py [--output runs/gym_power] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

#: name -> (description, overrides on top of the full demo's SPPO config)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "base": ("the demo (η = 10, lr 3e-4, 2 epochs, K = 4, 512 prompts)", []),
    "k8": (
        "K = 8 on 256 prompts (same samples)",
        ["--generation.num_samples=8", "--data.num_prompts=256"],
    ),
    "bs32": ("batch 32 (twice the steps)", ["--training.batch_size=32"]),
    "fresh": (
        "fresh prompts each iteration (1536, 512 per iteration)",
        ["--data.num_prompts=1536", "--data.prompts_per_iteration=512"],
    ),
    "fresh_ep4": (
        "fresh prompts, 4 epochs",
        ["--data.num_prompts=1536", "--data.prompts_per_iteration=512", "--training.epochs=4"],
    ),
    "eta30": ("η = 30", ["--objective.eta=30"]),
    "eta30ep4": ("η = 30, 4 epochs", ["--objective.eta=30", "--training.epochs=4"]),
    "eta100": ("η = 100", ["--objective.eta=100"]),
}
KEYS = ("proxy_win_rate", "win_rate", "accuracy", "kl_ref", "avg_length")


def run_variant(name: str, output: Path, iterations: int) -> dict:
    """The variant's per-iteration metrics and its wall time (0 when read back)."""
    from rspo.demo import demo_config
    from rspo.selfplay.loop import run_selfplay

    overrides = [f"--run.iterations={iterations}", *VARIANTS[name][1]]
    cfg = demo_config("sppo", str(output / name), quick=False, overrides=overrides)
    t0 = time.perf_counter()
    metrics = run_selfplay(cfg, log=lambda _m: None)
    rows = [{"iteration": m["iteration"], **{k: m.get(k) for k in KEYS}} for m in metrics]
    return {"overrides": VARIANTS[name][1], "rows": rows, "seconds": time.perf_counter() - t0}


def table(results: dict[str, dict]) -> str:
    """Markdown table of the last iteration of each variant."""
    lines = [
        "| SPPO setting (demo otherwise) | proxy | gold | accuracy | KL (nats) | length |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        last = r["rows"][-1]
        lines.append(
            f"| {VARIANTS[name][0]} | {last['proxy_win_rate']:.3f} | {last['win_rate']:.3f} | "
            f"{last['accuracy']:.3f} | {last['kl_ref']:.2f} | {last['avg_length']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default="runs/gym_power")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), default=None)
    ap.add_argument("--json", default="benchmarks/results/gym_skills/power.json")
    args = ap.parse_args()
    results = {
        n: run_variant(n, Path(args.output), args.iterations) for n in args.only or VARIANTS
    }
    print(table(results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
