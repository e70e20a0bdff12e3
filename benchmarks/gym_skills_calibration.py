"""Calibrate the skills gym before any method is compared: base policy and best-of-K.

For eval prompts, K samples of the base policy at T = 1 are scored by each judge the way
SPPO scores them (the mean of the K×K preference matrix row, self-match included); the
best-scored sample is compared with a fresh base sample by the gold judge and the proxies.
This measures what preference learning can gain (best-of-K by the training judge) and how
far each proxy's choice is from the gold judge's — the numbers the gym's parameters were
chosen from (docs/gym.md). Writes ``benchmarks/results/gym_skills/calibration.json``.

    python benchmarks/gym_skills_calibration.py [--prompts 256] [--k 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rspo.gym.skills.base import skills_base_path
    from rspo.gym.skills.tasks import check_answer, make_prompts
    from rspo.gym.stats import sample_responses
    from rspo.gym.tasks import parse_response
    from rspo.judges import build_judge

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--base", default=None)
    ap.add_argument("--rm", default=None)
    ap.add_argument("--out", default="benchmarks/results/gym_skills/calibration.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    base = args.base or str(skills_base_path())
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    prompts = [p.text for p in make_prompts("eval", args.prompts, seed=0)]
    k = args.k
    samples = [
        sample_responses(model, tok, prompts, temperature=1.0, max_new_tokens=64, seed=s)
        for s in range(k + 1)
    ]  # the last one is the fresh comparison sample
    fresh = samples[k]
    judges = {"gold": build_judge("gym-skills-gold"), "proxy": build_judge("gym-skills-proxy")}
    try:
        judges["rm"] = build_judge("gym-rm", **({"model": args.rm} if args.rm else {}))
    except FileNotFoundError:
        pass

    def pick(judge) -> list[str]:
        """Per prompt, the sample with the highest mean preference over the K samples."""
        out = []
        for i, p in enumerate(prompts):
            ys = [samples[j][i] for j in range(k)]
            a = [ys[x] for x in range(k) for _ in range(k)]
            b = [ys[y] for _ in range(k) for y in range(k)]
            m = np.array(judge.prefer([p] * (k * k), a, b)).reshape(k, k)
            out.append(ys[int(np.argmax(m.mean(axis=1)))])
        return out

    def describe(resp: list[str]) -> dict:
        row = {
            "accuracy": float(np.mean([check_answer(p, r) for p, r in zip(prompts, resp)])),
            "mean_length": float(np.mean([len(r.strip()) for r in resp])),
            "padded": float(np.mean([parse_response(r).n_fillers > 0 for r in resp])),
        }
        for name, j in judges.items():
            row[f"{name}_win_rate"] = float(np.mean(j.prefer(prompts, resp, fresh)))
        return row

    rows = {"one base sample": describe(samples[0])}
    for name, j in judges.items():
        rows[f"best of {k} by {name}"] = describe(pick(j))
    if "rm" in judges:  # how often the learned proxy agrees with gold on base-sample pairs
        a, b = samples[0], samples[1]
        g = np.array(judges["gold"].prefer(prompts, a, b))
        r = np.array(judges["rm"].prefer(prompts, a, b))
        decided = np.abs(g - 0.5) > 0.05
        rows["rm_gold_agreement"] = float(np.mean((g[decided] > 0.5) == (r[decided] > 0.5)))
    result = {"prompts": len(prompts), "k": k, "base": base, "rows": rows,
              "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
