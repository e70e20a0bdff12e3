"""The gym's base policy: a tiny Llama given a short, seeded SFT on the mixed corpus.

``base_model_path()`` is the shipped, committed model (``rspo/gym/assets/base``);
``python -m rspo.gym.base --out DIR`` rebuilds it. On CPU with the same torch version and
thread count the rebuild is bit-for-bit identical; other builds may differ in low bits.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from rspo.gym.corpus import Demo, make_corpus
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer

ASSET_DIR = Path(__file__).parent / "assets" / "base"
META_FILE = "gym_base.json"
#: defaults of the shipped base model (``--steps`` etc. override)
DEFAULT_STEPS = 1500
DEFAULT_BATCH = 32
DEFAULT_LR = 3e-3
_TOKENS_PER_DEMO = 30  # loss scale: roughly the mean response length in tokens


def base_model_path() -> Path:
    """Directory of the shipped base model + tokenizer (loads with ``from_pretrained``)."""
    if not (ASSET_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"gym base model missing at {ASSET_DIR}; rebuild it: python -m rspo.gym.base "
            f"--out {ASSET_DIR}"
        )
    return ASSET_DIR


def _encode(demo: Demo, bos_id: int, eos_id: int, with_bos: bool) -> tuple[list[int], int]:
    """Token ids of [BOS] prompt response EOS (byte tokenizer: ids are bytes) and the
    index of the first response token."""
    p = list(demo.prompt.encode("utf-8"))
    r = list(demo.response.encode("utf-8"))
    head = ([bos_id] if with_bos else []) + p
    return head + r + [eos_id], len(head)


def _batch(rows: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask, positions and labels (-100 except response + EOS)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, start) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start : len(seq)] = torch.tensor(seq[start:])
        mask[i, : len(seq)] = 1
    pos = torch.arange(width).unsqueeze(0).expand(len(rows), -1)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "labels": labels}


def _bucketed(
    rows: list[tuple[list[int], int]], batch_size: int, rng: random.Random, window: int = 16
) -> list[list[tuple[list[int], int]]]:
    """Batches of similar length (sorted within windows of ``window`` batches), shuffled:
    about half the padding of random batches, so SFT runs ~2x faster."""
    batches = []
    span = batch_size * window
    for i in range(0, len(rows), span):
        chunk = sorted(rows[i : i + span], key=lambda r: len(r[0]))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _train_step(  # fmt: skip
    model: Any, opt: Any, loss: Any, lr: float, step: int, steps: int,
    losses: list[float], log_every: int, t0: float,
) -> None:
    """One AdamW step at the schedule's learning rate (:func:`_lr_at`, 5 % warmup) with the
    gradient clipped to norm 1; the loss is kept in ``losses`` and its recent mean printed
    every ``log_every`` steps."""
    for g in opt.param_groups:
        g["lr"] = _lr_at(step, steps, lr, warmup=max(1, steps // 20))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if log_every and (step + 1) % log_every == 0:
        recent = sum(losses[-log_every:]) / log_every
        print(f"step {step + 1}/{steps} loss {recent:.4f} ({time.perf_counter() - t0:.0f}s)")


def train_base(
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    log_every: int = 0,
    corpus: Callable[[int, int], list[Demo]] = make_corpus,
    intermediate_size: int | None = None,
    init: LlamaForCausalLM | None = None,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict[str, Any]]:
    """Run the seeded SFT on ``corpus(n, seed)`` and return ``(model, tokenizer, info)``;
    from ``init`` (a model this function returned: a second SFT stage) if given."""
    torch.set_num_threads(1)  # bit-for-bit rebuilds need a fixed thread count
    tok = build_byte_tokenizer()
    model = init if init is not None else build_tiny_llama(
        tok, hidden_size, num_layers, num_heads, intermediate_size=intermediate_size, seed=seed
    )
    demos = corpus(steps * batch_size, seed)
    rng = random.Random(f"rspo-gym-sft:{seed}")
    encoded = [_encode(d, tok.bos_token_id, tok.eos_token_id, rng.random() < 0.5) for d in demos]
    batches = _bucketed(encoded, batch_size, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    t0 = time.perf_counter()
    losses: list[float] = []
    for step, rows in enumerate(batches):
        b = _batch(rows, tok.pad_token_id)
        logits = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            position_ids=b["position_ids"],
        ).logits
        # per-sequence sums (not a per-batch token mean): length-bucketed batches must not
        # reweight short vs long demos, or the base would under-sample padded answers
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            b["labels"][:, 1:].reshape(-1),
            ignore_index=-100,
            reduction="sum",
        ) / (len(rows) * _TOKENS_PER_DEMO)
        _train_step(model, opt, loss, lr, step, steps, losses, log_every, t0)
    model.eval()
    tail = losses[-max(1, steps // 10) :]
    info = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": model.config.intermediate_size,
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": sum(tail) / len(tail),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
    }
    return model, tok, info


def build_base_model(
    out_dir: str | Path,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    evaluate: bool = True,
    log_every: int = 0,
) -> Path:
    """Train the base policy, save model (safetensors) + tokenizer + metadata to ``out_dir``."""
    model, tok, info = train_base(seed, steps, batch_size, lr, log_every=log_every)
    if evaluate:
        from rspo.gym.stats import response_stats, sample_responses
        from rspo.gym.tasks import make_prompts

        for split, n in (("eval", 277), ("train", 300)):
            prompts = [p.text for p in make_prompts(split, n, seed=seed)]
            for temp in (1.0, 0.0):
                resp = sample_responses(model, tok, prompts, temperature=temp, seed=seed)
                stats = response_stats(prompts, resp)
                info[f"{split}_t{temp:g}"] = {k: round(v, 4) for k, v in stats.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from rspo.distributed import quiet_deepspeed_on_cpu

    quiet_deepspeed_on_cpu(next(model.parameters()).device)  # save_pretrained may import it
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rspo.gym.base --out DIR [--seed S] [--steps N]``."""
    ap = argparse.ArgumentParser(description="Rebuild the rspo gym base policy (CPU, ~2 min).")
    ap.add_argument("--out", default=str(ASSET_DIR), help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--no-eval", action="store_true", help="skip the accuracy/length probe")
    args = ap.parse_args(argv)
    out = build_base_model(
        args.out, args.seed, args.steps, args.batch_size, args.lr, not args.no_eval, 100
    )
    print(json.dumps(json.loads((out / META_FILE).read_text()), indent=2))


if __name__ == "__main__":
    main()
