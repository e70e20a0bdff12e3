"""``gym-rm``: a learned proxy judge — a small reward model trained on a simulated annotator.

The annotator compares two demonstrations for one prompt like a hurried, length-biased
human: P(a ≻ b) = σ(β·(correct(a) − correct(b)) + γ·tanh((len(a) − len(b)) / scale)), and
each label is one Bernoulli draw from it (so labels are noisy). A reward model initialised
from the gym's SFT base (as RLHF reward models are) learns from a finite set of such labels
with the Bradley–Terry loss; its mistakes are learned ones, as PairRM's are. It is a plain
``LlamaForSequenceClassification`` in safetensors, read by the ordinary ``reward_model``
judge; ``gym-rm`` only fills in the shipped path. ``python -m rspo.gym.skills.rm`` rebuilds it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

from rspo.judges.base import register_judge
from rspo.judges.reward_model import RewardModelJudge

RM_DIR = Path(__file__).resolve().parents[1] / "assets" / "skills_rm"
META_FILE = "gym_rm.json"
#: the simulated annotator: correctness weight, length weight and length scale (characters)
ANNOTATOR = {"beta": 4.0, "gamma": 1.0, "scale": 40.0}
DEFAULT_PAIRS = 24_000
DEFAULT_STEPS = 2000
DEFAULT_BATCH = 16  # pairs per step
DEFAULT_LR = 3e-4


def rm_path() -> Path:
    """Directory of the shipped reward model (loads with ``from_pretrained``)."""
    if not (RM_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"gym-rm reward model missing at {RM_DIR}; rebuild it: python -m rspo.gym.skills.rm"
        )
    return RM_DIR


@register_judge("gym-rm")
class GymRMJudge(RewardModelJudge):
    """The ``reward_model`` judge on the shipped gym reward model (``model`` overrides it)."""

    def __init__(self, model: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(model or rm_path(), **kwargs)


def annotator_prob(correct_a: float, len_a: int, correct_b: float, len_b: int) -> float:
    """The simulated annotator's P(a ≻ b): correctness plus a bias toward longer answers."""
    x = ANNOTATOR["beta"] * (correct_a - correct_b) + ANNOTATOR["gamma"] * math.tanh(
        (len_a - len_b) / ANNOTATOR["scale"]
    )
    return 1.0 / (1.0 + math.exp(-x))


def make_label_set(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` labelled pairs: two demonstrator responses to one train prompt, the annotator's
    sampled choice (``chosen``/``rejected``) and whether it agrees with the gold judge."""
    from rspo.gym.skills.corpus import make_demo
    from rspo.gym.skills.judges import skill_features
    from rspo.gym.skills.tasks import SKILLS, draw

    rng = random.Random(f"rspo-gym-rm-labels:{seed}")
    out: list[dict[str, Any]] = []
    while len(out) < n:
        prompt = draw("train", rng, rng.choice(SKILLS))
        a, b = make_demo(prompt, rng).response, make_demo(prompt, rng).response
        if a == b:
            continue
        ca, la, _ = skill_features(prompt.text, a)
        cb, lb, _ = skill_features(prompt.text, b)
        a_wins = rng.random() < annotator_prob(ca, la, cb, lb)
        chosen, rejected = (a, b) if a_wins else (b, a)
        out.append({"prompt": prompt.text, "chosen": chosen, "rejected": rejected})
    return out


def _encode(tok, prompt: str, response: str) -> list[int]:
    """What the ``reward_model`` judge feeds the model (no chat template, no separator)."""
    return tok(prompt + response, add_special_tokens=True)["input_ids"]


def _rewards(model, rows: list[list[int]], pad_id: int):
    """Rewards of right-padded rows, pooled at the last real token (as the judge does)."""
    import torch

    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, x in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return model(input_ids=ids, attention_mask=mask).logits[:, 0]


def train_rm(
    base_dir: str | Path,
    pairs: list[dict[str, Any]],
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    log_every: int = 0,
):
    """Bradley–Terry training of a reward model initialised from the SFT base at ``base_dir``."""
    import torch
    import torch.nn.functional as F
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from rspo.gym.base import _train_step

    torch.set_num_threads(1)  # bit-for-bit rebuilds need a fixed thread count
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    # the reward is read at a closing EOS, which the tokenizer appends
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"$A {tok.eos_token}", special_tokens=[(tok.eos_token, tok.eos_token_id)]
    )
    model = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    rng = random.Random(f"rspo-gym-rm-train:{seed}")
    enc = [(_encode(tok, p["prompt"], p["chosen"]), _encode(tok, p["prompt"], p["rejected"]))
           for p in pairs]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(enc)), len(enc))
        idx, order = order[:batch_size], order[batch_size:]
        rows = [enc[i][0] for i in idx] + [enc[i][1] for i in idx]
        r = _rewards(model, rows, tok.pad_token_id)
        loss = -F.logsigmoid(r[:batch_size] - r[batch_size:]).mean()
        _train_step(model, opt, loss, lr, step, steps, losses, log_every, t0)
    model.eval()
    tail = losses[-max(1, steps // 10) :]
    info = {
        "seed": seed,
        "pairs": len(pairs),
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "annotator": ANNOTATOR,
        "final_loss": sum(tail) / len(tail),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    return model, tok, info


def build_rm(
    out_dir: str | Path = RM_DIR,
    base_dir: str | Path | None = None,
    seed: int = 0,
    pairs: int = DEFAULT_PAIRS,
    steps: int = DEFAULT_STEPS,
    log_every: int = 0,
) -> Path:
    """Label pairs, train the reward model, save it (safetensors) with its build record."""
    from rspo.gym.skills.base import skills_base_path

    base = Path(base_dir) if base_dir else skills_base_path()
    labels = make_label_set(pairs, seed)
    model, tok, info = train_rm(base, labels, seed=seed, steps=steps, log_every=log_every)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.init_kwargs.pop("local_files_only", None)  # set by HF_HUB_OFFLINE: not the model's
    tok.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rspo.gym.skills.rm [--out DIR] [--base DIR] [--seed S]``."""
    ap = argparse.ArgumentParser(description="Rebuild the gym-rm reward model (CPU, minutes).")
    ap.add_argument("--out", default=str(RM_DIR))
    ap.add_argument("--base", default=None, help="SFT base to start from (default: shipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = ap.parse_args(argv)
    out = build_rm(args.out, args.base, args.seed, args.pairs, args.steps, log_every=100)
    print((out / META_FILE).read_text())


if __name__ == "__main__":
    main()
