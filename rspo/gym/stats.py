"""Sample a policy on gym prompts and summarise accuracy, length and style.

Used to measure the base model (docs, asset metadata, tests); self-play evaluation lives
in ``rspo.evaluation``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rspo.gym.tasks import check_answer, parse_response


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    batch_size: int = 64,
    seed: int = 0,
) -> list[str]:
    """Generate one response per prompt (temperature 0: greedy; else pure sampling)."""
    model.eval()
    out: list[str] = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        kwargs: dict = {"do_sample": False}
        if temperature > 0:
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            seqs = model.generate(**enc, max_new_tokens=max_new_tokens, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


def response_stats(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, float]:
    """Accuracy, mean length (characters), padded and malformed fractions, style shares."""
    n = max(len(responses), 1)
    parsed = [parse_response(r) for r in responses]
    styles = Counter(p.style for p in parsed)
    stats = {
        "accuracy": sum(check_answer(p, r) for p, r in zip(prompts, responses)) / n,
        "mean_length": sum(len(r.strip()) for r in responses) / n,
        "padded_fraction": sum(p.n_fillers > 0 for p in parsed) / n,
        "malformed_fraction": styles[None] / n,
    }
    for s in ("bare", "colon", "sentence"):
        stats[f"style_{s}"] = styles[s] / n
    return stats
