"""The skills gym's base policy: a small Llama given a seeded two-stage SFT, on the careful
demonstrator and then briefly on the sloppy one (:mod:`rspo.gym.skills.corpus`).

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
#: the shipped build (docs/gym.md says how each number was chosen): the model, then one SFT
#: stage per entry of ``stages``, each on its own corpus seed with a fresh optimizer and
#: schedule (warmup, cosine)
BUILD: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "batch_size": 32,
    "stages": [
        {"demonstrator": "careful", "seed": 0, "steps": 3000, "lr": 3e-3},
        {"demonstrator": "sloppy", "seed": 1, "steps": 500, "lr": 1e-3},
    ],
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


def train_skills_base(log_every: int = 0, **overrides: Any) -> tuple[Any, Any, dict]:
    """Run :data:`BUILD` (with ``overrides``): returns ``(model, tokenizer, build record)``."""
    from functools import partial

    from rspo.gym.base import train_base
    from rspo.gym.skills.corpus import CAREFUL_MIX, QUALITY_MIX, make_corpus

    settings = {**BUILD, **overrides}
    mixes = {"careful": CAREFUL_MIX, "sloppy": QUALITY_MIX}
    model = tok = None
    record: dict[str, Any] = {k: v for k, v in settings.items() if k != "stages"}
    record["stages"] = []
    for stage in settings["stages"]:  # a stage may name its own "mix" and "noise"
        mix = stage.get("mix") or mixes[stage["demonstrator"]]
        corpus = partial(make_corpus, mix=mix, noise=stage.get("noise"))
        model, tok, info = train_base(
            seed=stage["seed"], steps=stage["steps"], lr=stage["lr"],
            batch_size=settings["batch_size"], hidden_size=settings["hidden_size"],
            num_layers=settings["num_layers"], num_heads=settings["num_heads"],
            corpus=corpus, log_every=log_every, init=model,
        )  # fmt: skip
        record["stages"].append({**stage, "final_loss": info["final_loss"],
                                 "train_seconds": info["train_seconds"]})
        record.update(params=info["params"], intermediate_size=info["intermediate_size"],
                      torch=info["torch"])
    record["train_seconds"] = round(sum(s["train_seconds"] for s in record["stages"]), 1)
    return model, tok, record


def build_skills_base(out_dir: str | Path = ASSET_DIR, evaluate: bool = True,
                      log_every: int = 0, **overrides: Any) -> Path:
    """Train the base policy, save it (safetensors) + tokenizer + build record to ``out_dir``."""
    from rspo.distributed import quiet_deepspeed_on_cpu
    from rspo.gym.skills.tasks import make_prompts

    model, tok, info = train_skills_base(log_every, **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quiet_deepspeed_on_cpu(next(model.parameters()).device)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)  # before sampling, which sets the tokenizer's padding
    if evaluate:
        prompts = [p.text for p in make_prompts("eval", 400, seed=0)]
        for temp in (1.0, 0.0):
            info[f"eval_t{temp:g}"] = measure(model, tok, prompts, temp)
    (out / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rspo.gym.skills.base [--out DIR] [--no-eval]``."""
    ap = argparse.ArgumentParser(description="Rebuild the gym-skills base policy (CPU).")
    ap.add_argument("--out", default=str(ASSET_DIR))
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)
    out = build_skills_base(args.out, not args.no_eval, 250)
    print((out / META_FILE).read_text())


if __name__ == "__main__":
    main()
