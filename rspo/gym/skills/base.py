"""The skills gym's base policy: a small Llama given a seeded SFT on the noisy demonstrator.

``skills_base_path()`` is the shipped model (``rspo/gym/assets/skills_base``);
``python -m rspo.gym.skills.base`` rebuilds it bit for bit (same torch, CPU, one thread) and
re-measures it (``gym_base.json``: sampled and greedy accuracy per skill, length, padding).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "skills_base"
META_FILE = "gym_base.json"
#: the shipped build (see docs/gym.md for how each was chosen)
BUILD: dict[str, Any] = {
    "seed": 0,
    "steps": 2000,
    "batch_size": 32,
    "lr": 3e-3,
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
}


def skills_base_path() -> Path:
    """Directory of the shipped skills base model + tokenizer."""
    if not (ASSET_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"gym-skills base model missing at {ASSET_DIR}; rebuild it: "
            "python -m rspo.gym.skills.base"
        )
    return ASSET_DIR


def measure(model, tok, prompts: Sequence[str], temperature: float, seed: int = 0) -> dict:
    """Accuracy (overall and per skill), mean length and padded share of one sample each."""
    from rspo.gym.skills.tasks import check_answer, lookup
    from rspo.gym.stats import sample_responses
    from rspo.gym.tasks import parse_response

    resp = sample_responses(model, tok, prompts, temperature=temperature, max_new_tokens=64,
                            seed=seed)
    by: dict[str, list[bool]] = {}
    for p, r in zip(prompts, resp):
        by.setdefault(lookup(p).skill, []).append(check_answer(p, r))
    n = max(len(resp), 1)
    return {
        "accuracy": round(sum(sum(v) for v in by.values()) / n, 4),
        "by_skill": {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())},
        "mean_length": round(sum(len(r.strip()) for r in resp) / n, 2),
        "padded_fraction": round(sum(parse_response(r).n_fillers > 0 for r in resp) / n, 4),
    }


def build_skills_base(out_dir: str | Path = ASSET_DIR, evaluate: bool = True,
                      log_every: int = 0, **overrides: Any) -> Path:
    """Train the base policy, save it (safetensors) + tokenizer + build record to ``out_dir``."""
    from rspo.distributed import quiet_deepspeed_on_cpu
    from rspo.gym.base import train_base
    from rspo.gym.skills.corpus import make_corpus
    from rspo.gym.skills.tasks import make_prompts

    settings = {**BUILD, **overrides}
    model, tok, info = train_base(corpus=make_corpus, log_every=log_every, **settings)
    if evaluate:
        prompts = [p.text for p in make_prompts("eval", 400, seed=0)]
        for temp in (1.0, 0.0):
            info[f"eval_t{temp:g}"] = measure(model, tok, prompts, temp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_deepspeed_on_cpu(next(model.parameters()).device)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rspo.gym.skills.base [--out DIR] [--steps N] [--no-eval]``."""
    ap = argparse.ArgumentParser(description="Rebuild the gym-skills base policy (CPU).")
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--steps", type=int, default=BUILD["steps"])
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)
    out = build_skills_base(args.out, not args.no_eval, 100, steps=args.steps)
    print((out / META_FILE).read_text())


if __name__ == "__main__":
    main()
