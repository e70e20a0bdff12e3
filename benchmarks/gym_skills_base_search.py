"""How the skills gym's base policy was chosen: candidate SFT recipes, measured on the base alone.

Each candidate is a seeded SFT of the gym's tiny Llama (``rspo.gym.base.train_base``, one
torch thread, bit-for-bit repeatable) on the skills gym's demonstrators, in one stage or two
(careful, then sloppy). Each is measured as the shipped base is (400 eval prompts, one sample
at T = 1 and one greedy answer): sampled and greedy accuracy, per skill. No method is run.
The choice rule, fixed before any method was compared: sampled accuracy in [0.30, 0.60] (room
to sharpen) and greedy accuracy >= 0.85 (the skill is there to sharpen), then the higher gold
win rate of best-of-4 by the training judge (``gym_skills_calibration.py``). Writes
``benchmarks/results/gym_skills/base_search.json`` (docs/gym.md#how-the-base-was-chosen).

    python benchmarks/gym_skills_base_search.py [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

OLD = ("sort", "max", "count", "last")
MIXED = {"sort": "slip", "max": "random", "min": "random", "last": "random"}
#: the first skills gym's demonstrator: 70 % right, wrong answers are slips
V2_MIX = {(True, False): 0.45, (True, True): 0.25, (False, False): 0.18, (False, True): 0.12}


def stage(correct: float | None, noise: Any, steps: int, lr: float, seed: int) -> dict:
    """One SFT stage: demonstrator right with probability ``correct`` (None: the v2 mix)."""
    return {"correct": correct, "noise": noise, "steps": steps, "lr": lr, "seed": seed}


#: name -> (skills, stages); every stage's batch is 32 demos, the model the shipped size
CANDIDATES: dict[str, tuple[tuple[str, ...], list[dict]]] = {
    "v2: 70% right, slips, 2000 steps": (OLD, [stage(None, "slip", 2000, 3e-3, 0)]),
    "50% right, slips, 4000 steps": (OLD, [stage(0.5, "slip", 4000, 3e-3, 0)]),
    "40% right, slips, 4000 steps": (OLD, [stage(0.4, "slip", 4000, 3e-3, 0)]),
    "45% right, random, 4000 steps": (OLD, [stage(0.45, "random", 4000, 3e-3, 0)]),
    "45% right, random, 4000 steps (min, first)": (
        ("sort", "max", "min", "first"), [stage(0.45, "random", 4000, 3e-3, 0)]),
    "careful, 3000 steps": (OLD, [stage(1.0, "slip", 3000, 3e-3, 0)]),
    "careful, 3000 steps (min, first)": (
        ("sort", "max", "min", "first"), [stage(1.0, "slip", 3000, 3e-3, 0)]),
    "careful 3000, then 50% slips 500": (
        OLD, [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.5, "slip", 500, 1e-3, 1)]),
    "careful 3000, then 40% slips 500": (
        OLD, [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.4, "slip", 500, 1e-3, 1)]),
    "careful 3000, then 50% slips 150": (
        OLD, [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.5, "slip", 150, 1e-3, 1)]),
    "careful 3000, then 50% random 500": (
        OLD, [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.5, "random", 500, 1e-3, 1)]),
    "careful, 3000 steps (min)": (
        ("sort", "max", "min", "last"), [stage(1.0, "slip", 3000, 3e-3, 0)]),
    "careful 3000, then 50% mixed 500 (min): shipped": (
        ("sort", "max", "min", "last"),
        [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.5, MIXED, 500, 1e-3, 1)]),
    "careful 3000, then 40% mixed 500 (min)": (
        ("sort", "max", "min", "last"),
        [stage(1.0, "slip", 3000, 3e-3, 0), stage(0.4, MIXED, 500, 1e-3, 1)]),
}


def build(skills: tuple[str, ...], stages: list[dict]) -> dict:
    """Train one candidate with the gym's skills set to ``skills``; its measurements."""
    import rspo.gym.skills.corpus as corpus
    import rspo.gym.skills.tasks as tasks
    from rspo.gym.skills.base import measure, train_skills_base

    saved = tasks.SKILLS, corpus.SKILLS
    tasks.SKILLS = corpus.SKILLS = skills  # prompts are drawn round robin over these
    try:
        t0 = time.perf_counter()
        model, tok, record = train_skills_base(stages=[
            {"demonstrator": "candidate", "seed": s["seed"], "steps": s["steps"], "lr": s["lr"],
             "mix": V2_MIX if s["correct"] is None else corpus.quality_mix(s["correct"]),
             "noise": s["noise"]}
            for s in stages
        ])  # fmt: skip
        prompts = [p.text for p in tasks.make_prompts("eval", 400, seed=0)]
        return {
            "skills": list(skills),
            "stages": stages,
            "final_losses": [round(s["final_loss"], 4) for s in record["stages"]],
            "train_seconds": round(time.perf_counter() - t0, 1),
            "sampled": measure(model, tok, prompts, 1.0),
            "greedy": measure(model, tok, prompts, 0.0),
        }
    finally:
        tasks.SKILLS, corpus.SKILLS = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    ap.add_argument("--out", default="benchmarks/results/gym_skills/base_search.json")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name, (skills, stages) in CANDIDATES.items():
        if args.only is not None and name not in args.only:
            continue
        results[name] = build(skills, stages)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        acc = [results[name][k]["accuracy"] for k in ("sampled", "greedy")]
        print(f"{name}: sampled {acc[0]:.3f}, greedy {acc[1]:.3f}")


if __name__ == "__main__":
    main()
